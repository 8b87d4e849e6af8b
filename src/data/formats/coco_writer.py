"""ImageRecords -> a COCO-format dataset root that the `data:` defaults read:

    OUT/annotations/instances_train.json   OUT/train/<images>
    OUT/annotations/instances_val.json     OUT/val/<images>

Images are hard-linked into train/ and val/ (copied when linking is not possible, e.g. across
file systems). The split is a seeded permutation: the same records, fraction and seed give the
same split. Category ids are 1..C in the order of `classes` (default: names sorted), which is
the label order of the reader and of the class names stored with a trained model.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence

import numpy as np

from src.data.formats.records import DatasetFormatError, ImageRecord
from src.utils.io import write_json_atomic


def class_list(records: Sequence[ImageRecord], classes: Optional[Sequence[str]] = None) -> list[str]:
    """`classes` (checked: every box's name must be one of them), or the names found, sorted."""
    found = sorted({b.name for r in records for b in r.boxes})
    if classes is None:
        if not found:
            raise DatasetFormatError("no boxes in the dataset: cannot tell the classes (pass --classes)")
        return found
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise DatasetFormatError(f"--classes names a class twice: {classes}")
    for record in records:
        for box in record.boxes:
            if box.name not in classes:
                raise DatasetFormatError(f"{record.source}: class '{box.name}' is not in --classes {classes}")
    return classes


def split_records(records: Sequence[ImageRecord], val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): round(n * val_fraction) images to val, chosen by a permutation seeded with `seed`."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetFormatError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(records))
    num_val = int(round(len(records) * val_fraction))
    val = sorted(order[:num_val].tolist())
    train = sorted(order[num_val:].tolist())
    return [records[i] for i in train], [records[i] for i in val]


def _place_image(src: str, directory: str, used: set) -> str:
    stem, ext = os.path.splitext(os.path.basename(src))
    name, k = stem + ext, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}{ext}"
    used.add(name)
    dst = os.path.join(directory, name)
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return name


def write_split(records: Sequence[ImageRecord], classes: Sequence[str], out_dir: str, split: str,
                description: str = "") -> str:
    """Write OUT/annotations/instances_<split>.json and OUT/<split>/ images; returns the JSON path."""
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations, used = [], [], set()
    for image_id, record in enumerate(records, start=1):
        file_name = _place_image(record.path, image_dir, used)
        images.append({"id": image_id, "file_name": file_name, "width": int(record.width),
                       "height": int(record.height)})
        for box in record.boxes:
            w, h = box.x2 - box.x1, box.y2 - box.y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[box.name],
                                "bbox": [round(box.x1, 3), round(box.y1, 3), round(w, 3), round(h, 3)],
                                "area": round(w * h, 3), "iscrowd": int(box.iscrowd)})
    path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    write_json_atomic(path, {"info": {"description": description or f"converted, split {split}"},
                             "images": images, "annotations": annotations,
                             "categories": [{"id": cat_ids[n], "name": n} for n in classes]})
    return path


def write_coco_dataset(records: Sequence[ImageRecord], out_dir: str, val_fraction: float = 0.2, seed: int = 0,
                       classes: Optional[Sequence[str]] = None, description: str = "") -> dict:
    """Split and write; returns {"train": json, "val": json or None, "classes": [...], counts}."""
    names = class_list(records, classes)
    train, val = split_records(records, val_fraction, seed)
    out = {"root": out_dir, "classes": names, "num_train": len(train), "num_val": len(val),
           "train": write_split(train, names, out_dir, "train", description), "val": None}
    if val:
        out["val"] = write_split(val, names, out_dir, "val", description)
    return out
