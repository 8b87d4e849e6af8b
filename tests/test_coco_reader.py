"""COCO reader: label mapping, annotation clean-up and every bad-input case."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from src.builder import reader_settings
from src.config import CONFIG_DIR, load_config
from src.data.coco import CocoDetection, CocoFormatError, read_image
from src.data.pipeline import build_reader
from src.data.synthetic import make_synthetic_coco


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    make_synthetic_coco(root, num_train=8, num_val=2, seed=5)
    return root


def write_coco(tmp_path, images, annotations, categories=None, image_shape=(40, 60)):
    """A tiny dataset: flat grey JPEGs named in `images` and the given annotations."""
    image_dir = tmp_path / "img"
    image_dir.mkdir(exist_ok=True)
    for im in images:
        cv2.imwrite(str(image_dir / im["file_name"]), np.full(image_shape + (3,), 90, np.uint8))
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(ann), str(image_dir)


def img(i, w=60, h=40):
    return {"id": i, "file_name": f"{i}.jpg", "width": w, "height": h}


def ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


def test_reads_synthetic_with_label_mapping(synthetic):
    reader = CocoDetection(os.path.join(synthetic, "annotations/instances_train.json"),
                           os.path.join(synthetic, "train"))
    assert len(reader) == 8
    assert reader.label_to_cat_id == [1, 2, 4, 5, 7]
    assert reader.cat_names == ["circle", "rectangle", "triangle", "star", "cross"]
    with open(os.path.join(synthetic, "annotations/instances_train.json")) as f:
        data = json.load(f)
    for k in range(len(reader)):
        rec = reader[k]
        assert rec.image.dtype == np.uint8 and rec.image.shape[2] == 3
        assert rec.orig_size == rec.image.shape[:2]
        anns = [a for a in data["annotations"] if a["image_id"] == rec.image_id]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        np.testing.assert_allclose(rec.boxes, expected)
        np.testing.assert_array_equal([reader.label_to_cat_id[l] for l in rec.labels],
                                      [a["category_id"] for a in anns])
        assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int32


def test_layout_from_config(synthetic, tmp_path):
    custom = tmp_path / "custom"
    (custom / "labels").mkdir(parents=True)
    shutil.copytree(os.path.join(synthetic, "val"), custom / "pictures")
    shutil.copy(os.path.join(synthetic, "annotations/instances_val.json"), custom / "labels/v.json")
    cfg = load_config(os.path.join(os.path.dirname(CONFIG_DIR), "tests", "configs", "lite256.yaml"),
                      [f"data.root={custom}", "data.val_ann=labels/v.json", "data.val_images=pictures"])
    reader = build_reader(reader_settings(cfg, "val"))
    assert len(reader) == 2 and reader[0] is not None


def test_crowd_clip_drop_and_negatives(tmp_path):
    images = [img(1), img(2), img(5)]
    annotations = [
        ann(1, 1, 9, [10, 5, 20, 10]),
        ann(2, 1, 3, [50, 30, 20, 20]),           # crosses the right/bottom edge: clipped
        ann(3, 1, 3, [5, 5, 0, 10]),              # zero width: dropped
        ann(4, 2, 9, [100, 100, 5, 5]),           # outside the image: dropped
        ann(5, 2, 3, [1, 1, 10, 10], crowd=1),    # crowd: ignored
        ann(6, 2, 9, [-4, 2, 10, -3]),            # negative height: dropped
    ]
    reader = CocoDetection(*write_coco(tmp_path, images, annotations))
    assert reader.stats == {"crowd_ignored": 1, "boxes_clipped": 1, "boxes_dropped": 3}
    assert reader.label_to_cat_id == [3, 9]
    boxes, labels = reader.annotations(0)
    np.testing.assert_array_equal(boxes, [[10, 5, 30, 15], [50, 30, 60, 40]])
    np.testing.assert_array_equal(labels, [1, 0])
    for k in (1, 2):                              # images without (usable) boxes are kept
        rec = reader[k]
        assert rec.boxes.shape == (0, 4) and rec.labels.shape == (0,)


def test_missing_paths_are_named(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [img(1)], [])
    with pytest.raises(FileNotFoundError, match="annotation file.*nope.json"):
        CocoDetection(str(tmp_path / "nope.json"), image_dir)
    with pytest.raises(FileNotFoundError, match="image folder.*nodir"):
        CocoDetection(ann_file, str(tmp_path / "nodir"))


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("annotations"), "'annotations'"),
    (lambda d: d.pop("categories"), "'categories'"),
    (lambda d: d["images"][0].pop("file_name"), "images\\[0\\] has no field 'file_name'"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotations\\[0\\] has no field 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' must be"),
    (lambda d: d["annotations"][0].update(category_id=4), "'category_id' 4 is not in 'categories'"),
    (lambda d: d["annotations"][0].update(image_id=8), "'image_id' 8 is not in 'images'"),
])
def test_not_coco_shaped(tmp_path, mutate, field):
    ann_file, image_dir = write_coco(tmp_path, [img(1)], [ann(1, 1, 3, [1, 1, 5, 5])])
    with open(ann_file) as f:
        data = json.load(f)
    mutate(data)
    with open(ann_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(CocoFormatError, match=field):
        CocoDetection(ann_file, image_dir)


def test_not_json_or_not_an_object(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [img(1)], [])
    with open(ann_file, "w") as f:
        f.write("{broken")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        CocoDetection(ann_file, image_dir)
    with open(ann_file, "w") as f:
        json.dump([1, 2], f)
    with pytest.raises(CocoFormatError, match="top level"):
        CocoDetection(ann_file, image_dir)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    images = [img(1), img(2), img(3), img(4)]
    ann_file, image_dir = write_coco(tmp_path, images, [ann(1, 1, 3, [1, 1, 5, 5])],
                                     image_shape=(40, 60))
    good = open(os.path.join(image_dir, "1.jpg"), "rb").read()
    with open(os.path.join(image_dir, "2.jpg"), "wb") as f:
        f.write(good[: len(good) // 2])                    # truncated JPEG
    with open(os.path.join(image_dir, "3.jpg"), "wb") as f:
        f.write(b"not an image at all")
    os.remove(os.path.join(image_dir, "4.jpg"))            # missing
    reader = CocoDetection(ann_file, image_dir)
    assert reader[0] is not None
    assert reader[1] is None and reader[2] is None and reader[3] is None
    assert reader.skipped.count() == 3
    assert "3 unreadable image(s)" in reader.skip_summary() and "2.jpg" in reader.skip_summary()


def test_truncated_png(tmp_path):
    path = str(tmp_path / "t.png")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    assert read_image(path) is None


def test_gray_rgba_and_16bit_become_bgr8(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image(str(tmp_path / "g.png"))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 1], gray)

    bgra = np.zeros((8, 9, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = read_image(str(tmp_path / "a.png"))
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])

    deep = np.full((5, 6, 3), 65535, np.uint16)
    deep[..., 1] = 256 * 100
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = read_image(str(tmp_path / "d.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 100, 255])

    deep_gray = np.full((5, 6), 512, np.uint16)
    cv2.imwrite(str(tmp_path / "dg.png"), deep_gray)
    np.testing.assert_array_equal(read_image(str(tmp_path / "dg.png"))[0, 0], [2, 2, 2])
