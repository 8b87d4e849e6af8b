"""Built-in synthetic COCO dataset: format, determinism and box accuracy."""
import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest

from src.data.synthetic import (CATEGORIES, SPLIT_CODES, SyntheticConfig, make_synthetic_coco,
                                render_synthetic_image)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_coco(root, num_train=12, num_val=4, seed=3)
    return root


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_layout_and_pycocotools(dataset):
    from pycocotools.coco import COCO

    for split, n in (("train", 12), ("val", 4)):
        ann = os.path.join(dataset, "annotations", f"instances_{split}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(ann)
        assert len(coco.imgs) == n
        assert sorted(coco.cats) == [1, 2, 4, 5, 7]              # non-contiguous on purpose
        assert {c["name"] for c in coco.cats.values()} == {name for _, name in CATEGORIES}
        for img in coco.imgs.values():
            image = cv2.imread(os.path.join(dataset, split, img["file_name"]))
            assert image is not None and image.shape == (img["height"], img["width"], 3)
            assert 240 <= img["width"] <= 480 and 240 <= img["height"] <= 480
        for ann_ in coco.anns.values():
            x, y, w, h = ann_["bbox"]
            img = coco.imgs[ann_["image_id"]]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann_["iscrowd"] == 0 and ann_["area"] > 0
        counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.imgs]
        assert max(counts) <= 8


def test_deterministic_for_a_seed(dataset, tmp_path):
    again = str(tmp_path / "again")
    make_synthetic_coco(again, num_train=12, num_val=4, seed=3)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json",
                "train/000001.jpg", "train/000012.jpg", "val/000004.jpg"):
        assert read_bytes(os.path.join(dataset, rel)) == read_bytes(os.path.join(again, rel))
    other = str(tmp_path / "other")
    make_synthetic_coco(other, num_train=2, num_val=0, seed=4)
    first = "train/000001.jpg"
    assert read_bytes(os.path.join(dataset, first)) != read_bytes(os.path.join(other, first))


def test_boxes_are_tight_around_drawn_shapes():
    """On a flat background (no noise, no JPEG) every painted pixel lies in some box and
    every box edge touches painted pixels: the boxes are exactly the drawn extents."""
    cfg = SyntheticConfig(flat_background=True, empty_prob=0.0)
    seen = 0
    for seed in range(8):
        image, objects = render_synthetic_image(np.random.default_rng(seed), cfg)
        painted = np.any(image != image[0, 0], axis=2)    # objects never touch the corner
        covered = np.zeros_like(painted)
        for obj in objects:
            x, y, w, h = (int(v) for v in obj["bbox"])
            covered[y:y + h, x:x + w] = True
            box = painted[y:y + h, x:x + w]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            seen += 1
        assert not np.any(painted & ~covered)
    assert seen > 10


def test_files_match_the_render(dataset):
    """Each JPEG and its annotations are the in-memory render of (seed, split, index): the
    pixel-level box checks above therefore apply to the written files."""
    with open(os.path.join(dataset, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    for k in (0, 5):
        image, objects = render_synthetic_image(np.random.default_rng([3, SPLIT_CODES["train"], k]))
        img = data["images"][k]
        decoded = cv2.imread(os.path.join(dataset, "train", img["file_name"])).astype(np.float32)
        assert np.abs(decoded - image).mean() < 4                  # only JPEG loss
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert [a["bbox"] for a in anns] == [o["bbox"] for o in objects]
        assert [a["category_id"] for a in anns] == [o["category_id"] for o in objects]


def test_empty_images_and_classes():
    image, objects = render_synthetic_image(np.random.default_rng(0), SyntheticConfig(empty_prob=1.0))
    assert objects == [] and image.dtype == np.uint8
    names = set()
    for seed in range(10):
        _, objects = render_synthetic_image(np.random.default_rng(seed))
        names |= {o["category_id"] for o in objects}
    assert names == {c for c, _ in CATEGORIES}


def test_workers_write_the_same_files_as_a_serial_run(dataset, tmp_path):
    # the quickstart renders with 2 processes; its data must be the serial generator's, byte for byte
    parallel = str(tmp_path / "parallel")
    make_synthetic_coco(parallel, num_train=12, num_val=4, seed=3, workers=2)
    for split, n in (("train", 12), ("val", 4)):
        rel = f"annotations/instances_{split}.json"
        assert read_bytes(os.path.join(parallel, rel)) == read_bytes(os.path.join(dataset, rel))
        names = sorted(os.listdir(os.path.join(dataset, split)))
        assert len(names) == n and sorted(os.listdir(os.path.join(parallel, split))) == names
        for name in names:
            assert read_bytes(os.path.join(parallel, split, name)) == read_bytes(os.path.join(dataset, split, name))
    with pytest.raises(ValueError, match="workers must be >= 1"):
        make_synthetic_coco(str(tmp_path / "none"), num_train=1, num_val=0, workers=0)


def test_an_interrupted_run_leaves_the_previous_annotations_whole(tmp_path, monkeypatch):
    # the annotation file says which images exist: a run that fails while writing it must not
    # leave a truncated one behind (the old file stays until the new one is complete)
    out = str(tmp_path / "data")
    make_synthetic_coco(out, num_train=2, num_val=0, seed=0)
    ann = os.path.join(out, "annotations", "instances_train.json")
    before = read_bytes(ann)

    def fail_midway(obj, f, **kwargs):
        f.write('{"images": [')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_coco(out, num_train=3, num_val=0, seed=0)
    assert read_bytes(ann) == before
    assert [n for n in os.listdir(os.path.dirname(ann)) if n.endswith(".tmp")] == []
