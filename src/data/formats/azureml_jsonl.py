"""Azure-ML JSONL object detection (one JSON object per line) -> ImageRecords.

    {"image_url": "AmlDatastore://store/odFridgeObjects/images/31.jpg",
     "image_details": {"format": "jpg", "width": "499px", "height": "666px"},
     "label": [{"label": "can", "topX": 0.206, "topY": 0.381, "bottomX": 0.423, "bottomY": 0.625,
                "isCrowd": 0}]}

Coordinates are fractions of the image width and height. The image is found under `images_dir`
by the longest tail of the URL's path that exists there (`odFridgeObjects/images/31.jpg`, then
`images/31.jpg`, then `31.jpg`). `image_details` is optional (the size is then read from the
image). Blank lines are skipped; every error names the file, the line and the field.
"""
from __future__ import annotations

import json
import os
import re

from src.data.formats.records import BoxRecord, DatasetFormatError, ImageRecord, check_box, require_inputs
from src.data.formats.voc import image_size

CORNERS = ("topX", "topY", "bottomX", "bottomY")
_SCHEME = re.compile(r"^[A-Za-z][\w+.-]*://")
_TOLERANCE = 1e-6


def _find_image(url: str, images_dir: str, where: str) -> str:
    parts = [p for p in _SCHEME.sub("", url).replace("\\", "/").split("/") if p]
    for i in range(len(parts)):
        path = os.path.join(images_dir, *parts[i:])
        if os.path.isfile(path):
            return path
    raise DatasetFormatError(f"{where}: image for 'image_url' {url!r} not found under {images_dir}")


def _size(details, key: str, where: str):
    value = details.get(key)
    if value is None:
        return None
    text = str(value).strip().lower().removesuffix("px")
    try:
        return int(float(text))
    except ValueError as exc:
        raise DatasetFormatError(f"{where}: field 'image_details.{key}' is not a size: {value!r}") from exc


def _parse_line(data, images_dir: str, where: str) -> ImageRecord:
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    url = data.get("image_url")
    if not isinstance(url, str) or not url:
        raise DatasetFormatError(f"{where}: missing field 'image_url'")
    labels = data.get("label")
    if not isinstance(labels, list):
        raise DatasetFormatError(f"{where}: field 'label' must be a list of boxes")
    path = _find_image(url, images_dir, where)
    details = data.get("image_details") or {}
    if not isinstance(details, dict):
        raise DatasetFormatError(f"{where}: field 'image_details' must be an object")
    width, height = _size(details, "width", where), _size(details, "height", where)
    if not width or not height:
        width, height = image_size(path)
    record = ImageRecord(path, width, height, source=where)
    for k, item in enumerate(labels):
        at = f"{where}: label[{k}]"
        if not isinstance(item, dict):
            raise DatasetFormatError(f"{at}: expected an object")
        name = item.get("label")
        if not isinstance(name, str) or not name:
            raise DatasetFormatError(f"{at}: missing field 'label' (the class name)")
        corners = []
        for key in CORNERS:
            value = item.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DatasetFormatError(f"{at}: field '{key}' must be a number in [0, 1], got {value!r}")
            if not -_TOLERANCE <= value <= 1 + _TOLERANCE:
                raise DatasetFormatError(f"{at}: field '{key}' = {value} is outside [0, 1] (coordinates are "
                                         f"fractions of the image size)")
            corners.append(float(value))
        crowd = item.get("isCrowd", 0)
        if crowd not in (0, 1, True, False):
            raise DatasetFormatError(f"{at}: field 'isCrowd' must be 0 or 1, got {crowd!r}")
        box = BoxRecord(name, corners[0] * width, corners[1] * height, corners[2] * width, corners[3] * height,
                        int(crowd))
        record.boxes.append(check_box(box, record, at))
    return record


def read_jsonl(path: str, images_dir: str) -> list[ImageRecord]:
    """Every non-blank line of `path`, its image under `images_dir`."""
    require_inputs(path, images_dir, "JSONL file", folder=False)
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"{where}: not valid JSON: {exc}") from exc
            records.append(_parse_line(data, images_dir, where))
    if not records:
        raise DatasetFormatError(f"{path}: no images (empty file)")
    return records
