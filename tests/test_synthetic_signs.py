"""The second synthetic dataset (`kind="signs"`): other classes and backgrounds; the default
dataset stays byte-identical to the generator before the option existed."""
import hashlib
import json

import cv2
import numpy as np

from src.data.synthetic import SIGN_CATEGORIES, SyntheticConfig, make_synthetic_coco, render_synthetic_image

# sha256 of the default dataset (seed 0, 2 train / 1 val) written by the generator before `kind`
# was added (with requirements.txt's opencv-python-headless)
DEFAULT_SHA256 = {
    "train/000001.jpg": "9213a4b2aea1c58a83c170d5b3c788e34b579d3f9689c57203acee6c57355329",
    "val/000001.jpg": "da0ad125c82c1c5d8575ffd50ade35ea3eab0a0ea439d44ce53a467d8e469387",
    "annotations/instances_train.json": "2269a044f473f8b61044312d6104e774c5138185365163b5ce0aff616460cff3",
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_default_dataset_is_unchanged(tmp_path):
    make_synthetic_coco(str(tmp_path), num_train=2, num_val=1, seed=0)
    for name, digest in DEFAULT_SHA256.items():
        assert sha256(tmp_path / name) == digest, name


def test_signs_dataset_has_other_classes_and_looks(tmp_path):
    make_synthetic_coco(str(tmp_path), num_train=6, num_val=2, seed=0, spec=SyntheticConfig(kind="signs"))
    with open(tmp_path / "annotations" / "instances_train.json") as f:
        data = json.load(f)
    assert [(c["id"], c["name"]) for c in data["categories"]] == SIGN_CATEGORIES
    assert {a["category_id"] for a in data["annotations"]} <= {1, 2, 3} and data["annotations"]
    for ann in data["annotations"]:
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= img["width"] and y + h <= img["height"]
    signs = cv2.imread(str(tmp_path / "train" / "000001.jpg"))
    shapes, _ = render_synthetic_image(np.random.default_rng([0, 0, 0]))
    assert signs.shape != shapes.shape or np.abs(signs.astype(int) - shapes).mean() > 10


def test_signs_boxes_are_tight_on_a_flat_background():
    cfg = SyntheticConfig(kind="signs", flat_background=True, outline_prob=0.0, max_objects=1, empty_prob=0.0)
    for k in range(5):
        image, objects = render_synthetic_image(np.random.default_rng([9, k]), cfg)
        background = image[0, 0].astype(int)
        for obj in objects:
            x, y, w, h = (int(v) for v in obj["bbox"])
            painted = np.abs(image.astype(int) - background).max(axis=2) > 0
            ys, xs = np.nonzero(painted)
            assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
