"""Class names for inference output.

Checkpoints carry no class names, so they come from, in this order:
1. `names_file`: a text file with one name per line (blank lines ignored), a JSON list of names,
   or a COCO annotation file;
2. `ann_file`: a COCO annotation file; names of its categories sorted by category id, which is
   how the training reader numbers the labels (src/data/coco.py);
3. otherwise "class_N", N the 0-based class label.
Either file must name exactly the config's object classes (model.num_classes).
"""
from __future__ import annotations

import json
import os
from typing import Optional


class NamesError(ValueError):
    """A names file that cannot be read or does not match the number of classes."""


def _coco_names(data: dict, path: str) -> list[str]:
    try:
        return [str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]
    except (KeyError, TypeError) as exc:
        raise NamesError(f"{path}: 'categories' must be a list of {{'id', 'name'}} entries") from exc


def _read(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise NamesError(f"class names file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NamesError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            return _coco_names(data, path)
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return list(data)
        raise NamesError(f"{path}: expected a list of names or a COCO annotation file")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_class_names(num_classes: int, names_file: Optional[str] = None,
                     ann_file: Optional[str] = None) -> list[str]:
    """Names of the object classes, indexed by dataset label (0 .. num_classes - 1)."""
    count = num_classes
    path = names_file or ann_file
    if not path:
        return [f"class_{i}" for i in range(count)]
    names = _read(path)
    if len(names) != count:
        raise NamesError(f"{path} names {len(names)} classes but the config has model.num_classes={count} "
                         f"(object classes, background not counted)")
    return names
