"""COCO result conversion and evaluation against pycocotools on a tiny hand-made dataset."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.evaluation.coco_eval import (
    STAT_KEYS,
    detections_to_coco,
    evaluate_coco,
    format_per_class_table,
)
from src.utils.io import atomic_write, write_json_atomic

# Non-contiguous category ids; dataset label = index in this list.
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
LABEL_TO_CAT = [1, 3, 7]
# image id -> [(category id, [x, y, w, h], iscrowd)]
OBJECTS = {
    10: [(1, [10, 10, 50, 40], 0), (3, [100, 100, 60, 80], 0)],
    20: [(7, [5, 5, 30, 30], 0), (1, [0, 0, 200, 200], 1), (1, [150, 20, 40, 40], 0)],
    30: [],  # an image without objects
    40: [(3, [20, 30, 100, 50], 0), (7, [200, 200, 10, 10], 0)],
}


@pytest.fixture
def gt_json(tmp_path):
    anns = []
    for image_id, objs in OBJECTS.items():
        for cat, box, crowd in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": box, "area": box[2] * box[3], "iscrowd": crowd,
                         "segmentation": [] if not crowd else {"counts": [], "size": [300, 300]}})
    data = {"images": [{"id": i, "width": 300, "height": 300, "file_name": f"{i}.jpg"}
                       for i in OBJECTS],
            "categories": CATEGORIES, "annotations": anns}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return str(path)


def load_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def gt_as_detections(shift=(0.0, 0.0), score=1.0):
    """detect()-style outputs (corners, class labels) of every non-crowd object."""
    results = []
    for k, (image_id, objs) in enumerate(OBJECTS.items()):
        objs = [o for o in objs if not o[2]]
        boxes = np.array([[x + shift[0], y + shift[1], x + w + shift[0], y + h + shift[1]]
                          for _, (x, y, w, h), _ in objs], dtype=np.float32).reshape(-1, 4)
        scores = np.full(len(objs), score) - 0.01 * np.arange(len(objs)) - 0.001 * k
        labels = np.array([LABEL_TO_CAT.index(cat) for cat, _, _ in objs])
        results += detections_to_coco(image_id, boxes, scores, labels, LABEL_TO_CAT)
    return results


def pycocotools_stats(gt_path, results_path):
    gt = load_coco(gt_path)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results_path)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_ground_truth_as_detections_scores_one(gt_json):
    metrics = evaluate_coco(gt_json, gt_as_detections())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100", "ARs", "ARm"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["APl"] == -1.0 and metrics["ARl"] == -1.0  # no large object
    assert metrics["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0})


def test_shifted_boxes_match_pycocotools_directly(gt_json, tmp_path):
    results = gt_as_detections(shift=(4.0, -3.0), score=0.9)
    results.append({"image_id": 30, "category_id": 3, "bbox": [1.0, 1.0, 20.0, 20.0],
                    "score": 0.95})  # a false positive on the empty image
    snapshot = json.loads(json.dumps(results))
    out = tmp_path / "eval"
    metrics = evaluate_coco(load_coco(gt_json), results, out_dir=out)
    assert results == snapshot  # loadRes' additions did not leak into the caller's dicts

    with open(out / "bbox_results.json") as f:
        assert json.load(f) == snapshot
    want = pycocotools_stats(gt_json, str(out / "bbox_results.json"))
    assert [metrics[k] for k in STAT_KEYS] == [float(v) for v in want]
    assert 0.0 < metrics["AP"] < 1.0

    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved["results_json"] == os.path.join(str(out), "bbox_results.json")
    assert all(saved[k] == metrics[k] for k in STAT_KEYS)
    assert set(saved["per_class_AP"]) == {"cat", "dog", "bird"}
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_empty_results_do_not_crash(gt_json, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        metrics = evaluate_coco(gt_json, [], out_dir=tmp_path)
    assert "no detections" in caplog.text
    for key in STAT_KEYS:
        assert metrics[key] == (-1.0 if key in ("APl", "ARl") else 0.0), key
    assert metrics["per_class_AP"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0}
    with open(tmp_path / "bbox_results.json") as f:
        assert json.load(f) == []


def test_img_ids_restricts_the_evaluation(gt_json):
    only_10 = [r for r in gt_as_detections() if r["image_id"] == 10]
    assert evaluate_coco(gt_json, only_10)["AP"] < 1.0  # the other images' objects are missed
    metrics = evaluate_coco(gt_json, only_10, img_ids=[10], per_class=False)
    assert metrics["AP"] == pytest.approx(1.0)
    assert "per_class_AP" not in metrics


def test_unknown_image_id_is_rejected(gt_json):
    bad = [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco(gt_json, bad)


def test_detections_to_coco_conversion():
    boxes = np.array([[10.123, 20.0, 30.0, 60.5], [0, 0, 9, 9]], np.float32)
    res = detections_to_coco(5, boxes, np.array([0.876543, 0.001]), np.array([2, 0]), LABEL_TO_CAT)
    assert res[0] == {"image_id": 5, "category_id": 7, "bbox": [10.12, 20.0, 19.88, 40.5],
                      "score": 0.87654}
    assert res[1]["category_id"] == 1 and res[1]["bbox"] == [0.0, 0.0, 9.0, 9.0]
    assert res[1]["score"] == 0.001
    assert all(type(v) is float for r in res for v in r["bbox"] + [r["score"]])
    # "+1 pixel" widths and a dict mapping
    res = detections_to_coco(5, boxes[1:], [0.5], [2], {2: 42}, pixel_offset=True)
    assert res[0]["category_id"] == 42 and res[0]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    assert detections_to_coco(5, np.zeros((0, 4)), [], [], LABEL_TO_CAT) == []


def test_detections_to_coco_rejects_unmapped_labels():
    box = np.array([[0, 0, 1, 1]], np.float32)
    with pytest.raises(ValueError, match="no category id"):
        detections_to_coco(1, box, [0.5], [-1], LABEL_TO_CAT)  # background is not a class
    with pytest.raises(ValueError, match="no category id"):
        detections_to_coco(1, box, [0.5], [len(LABEL_TO_CAT)], LABEL_TO_CAT)
    with pytest.raises(ValueError, match="boxes"):
        detections_to_coco(1, box, [0.5, 0.4], [1], LABEL_TO_CAT)


def test_per_class_table():
    text = format_per_class_table({"cat": 0.5, "dog": 1.0, "bird": -1.0, "zebra": 0.1234},
                                  columns=2)
    lines = text.splitlines()
    assert lines[0].count("category") == 2
    assert "50.0" in lines[2] and "100.0" in lines[2]
    assert "-" in lines[3] and "12.3" in lines[3]
    assert format_per_class_table({}) == ""


def test_atomic_write(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"x": np.float32(0.5), "y": np.arange(3)})
    assert json.loads(path.read_text()) == {"x": 0.5, "y": [0, 1, 2]}
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("partial")
            raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"x": 0.5, "y": [0, 1, 2]}  # old content kept
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left
    with pytest.raises(ValueError):
        write_json_atomic(path, {"x": float("nan")})
    with atomic_write(tmp_path / "b.bin") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
