"""One switch for the box convention, `data.pixel_offset` (issue 14, items 2 and 3).

The M2Det release reads COCO [x, y, w, h] as x2 = x + w - 1, y2 = y + h - 1 (clipped to the last
pixel, W - 1 / H - 1), computes NMS IoU with w = x2 - x1 + 1, and writes results as
w = x2 - x1 + 1; its test.py keeps up to 50 per class with no per-image cap. mmdetection reads
x2 = x + w, IoU with w = x2 - x1, writes w = x2 - x1, and keeps 100 per image.
"""
import json

import numpy as np
import pytest

from src.builder import detection_settings, reader_settings
from src.config import CONFIG_DIR, load_config
from src.data.coco import CocoDetection
from src.data.pipeline import build_reader
from src.evaluation.coco_eval import detections_to_coco
from src.postprocess import detect

M2DET_REFERENCE = ["m2det320_vgg", "m2det512_vgg", "m2det800_vgg", "m2det320_resnet101", "m2det512_resnet101"]
MMDET_STYLE = ["retinanet_r50_fpn_1x", "atss_r50_fpn_1x", "gfl_r50_fpn_1x", "vfnet_r50_fpn_1x", "umop_r50_fpn_1.5x",
               "vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x", "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x",
               "m2det512_vgg_gfl", "m2det512_vgg_vfnet", "m2det_lite_retina", "m2det_lite_atss",
               "m2det_lite_umop", "m2det_lite_gfl", "m2det_lite_vfnet"]


def cfg_of(name, *overrides):
    return load_config(f"{CONFIG_DIR}/{name}.yaml", overrides)


@pytest.mark.parametrize("name", M2DET_REFERENCE)
def test_m2det_reference_configs_keep_what_the_release_keeps(name):
    cfg = cfg_of(name)
    assert cfg.data.pixel_offset is True
    kwargs = detection_settings(cfg).as_kwargs()
    assert kwargs["pixel_offset"] is True
    assert kwargs["keep_per_class"] == 50 and kwargs["max_per_image"] == 0   # the release's topk=0
    assert (kwargs["score_threshold"], kwargs["nms_method"], kwargs["nms_threshold"]) == (0.1, "linear", 0.3)


@pytest.mark.parametrize("name", MMDET_STYLE)
def test_mmdetection_style_configs_keep_mmdetection_settings(name):
    kwargs = detection_settings(cfg_of(name)).as_kwargs()
    assert kwargs["pixel_offset"] is False
    assert kwargs["max_per_image"] == 100 and kwargs["keep_per_class"] == 0


def test_m2det_lite_is_continuous_and_capped():
    kwargs = detection_settings(cfg_of("m2det_lite")).as_kwargs()
    assert kwargs["pixel_offset"] is False and kwargs["max_per_image"] == 100


def test_no_cap_keeps_fifty_per_class_beyond_a_hundred():
    """3 classes x 50 disjoint boxes: max_per_image 0 keeps all 150 (the release writes them all)."""
    xy = np.arange(60, dtype=np.float32)[:, None] * 20
    boxes = np.concatenate([xy, xy, xy + 10, xy + 10], axis=1)
    scores = np.zeros((60, 4), np.float32)
    scores[:, 1:] = np.linspace(0.9, 0.2, 60, dtype=np.float32)[:, None]
    kwargs = detection_settings(cfg_of("m2det512_vgg")).as_kwargs()
    out = detect(boxes, scores, **kwargs)
    assert len(out.scores) == 150 and np.bincount(out.labels).tolist() == [50, 50, 50]
    assert len(detect(boxes, scores, **dict(kwargs, max_per_image=100)).scores) == 100


def write_dataset(tmp_path, width=100, height=80):
    import cv2

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "1.png"), np.zeros((height, width, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "1.png", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 0, 10, 80]},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [95, 70, 20, 20]},
                            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [50, 50, 1, 1]},
                            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [120, 10, 5, 5]}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "ann.json"), str(tmp_path / "images")


def test_reader_follows_the_convention(tmp_path):
    ann, images = write_dataset(tmp_path)
    release = CocoDetection(ann, images, pixel_offset=True).annotations(0)[0]
    # x2 = x + w - 1; the box reaching the image's edge ends on its last pixel (99, 79) unclipped;
    # the one past it is clipped to the last pixel
    # the last, one pixel, has x2 = x1 and is kept (it covers one pixel)
    np.testing.assert_array_equal(release, [[10, 20, 39, 59], [90, 0, 99, 79], [95, 70, 99, 79], [50, 50, 50, 50]])
    continuous = CocoDetection(ann, images, pixel_offset=False).annotations(0)[0]
    np.testing.assert_array_equal(continuous, [[10, 20, 40, 60], [90, 0, 100, 80], [95, 70, 100, 80],
                                               [50, 50, 51, 51]])
    # the box wholly right of the image is dropped in both (not kept as a 1-px edge box)
    for on in (True, False):
        stats = CocoDetection(ann, images, pixel_offset=on).stats
        assert stats["boxes_dropped"] == 1 and stats["boxes_clipped"] == 1


def test_switch_reaches_reader_nms_and_results(tmp_path):
    ann, images = write_dataset(tmp_path)
    for name, on in (("m2det512_vgg", True), ("atss_r50_fpn_1x", False)):
        cfg = cfg_of(name, f"data.root={tmp_path}", "data.train_ann=ann.json", "data.train_images=images",
                     "model.num_classes=1")
        reader = build_reader(reader_settings(cfg, "train"))
        assert reader.pixel_offset is on and detection_settings(cfg).as_kwargs()["pixel_offset"] is on
        # reading then writing a GT box gives back its COCO bbox in either convention
        boxes = reader.annotations(0)[0][:2]
        res = detections_to_coco(1, boxes, [0.9, 0.8], [0, 0], [1], pixel_offset=on)
        assert [r["bbox"] for r in res] == [[10, 20, 30, 40], [90, 0, 10, 80]]


def test_nms_iou_follows_the_convention():
    """Boxes on pixels 0..9 and 5..14: +1 pixel IoU 50 / (100 + 100 - 50) = 0.333 > 0.3, so hard
    NMS at 0.3 suppresses the second; continuous IoU 36 / (81 + 81 - 36) = 0.286 keeps both."""
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    scores = np.array([[0, 0.9], [0, 0.8]], np.float32)
    common = dict(nms_method="nms", nms_threshold=0.3, keep_per_class=0, max_per_image=0)
    assert len(detect(boxes, scores, pixel_offset=True, **common).scores) == 1
    assert len(detect(boxes, scores, pixel_offset=False, **common).scores) == 2
