"""What a format reader returns: images with their boxes, in pixels, classes by name."""
from __future__ import annotations

import os

from dataclasses import dataclass, field


class DatasetFormatError(ValueError):
    """An annotation file that cannot be converted; the message names the file, line or field."""


@dataclass
class BoxRecord:
    name: str                 # class name
    x1: float                 # corners in pixels, x1 < x2, y1 < y2, inside the image
    y1: float
    x2: float
    y2: float
    iscrowd: int = 0          # 1: ignored by training and evaluation (VOC "difficult", JSONL isCrowd)


@dataclass
class ImageRecord:
    path: str                 # image file on disk
    width: int
    height: int
    boxes: list = field(default_factory=list)
    source: str = ""          # where it was described (file, or file:line), for messages


def require_inputs(annotations: str, images_dir: str, what: str, folder: bool) -> None:
    """Refuse a missing annotation file (or folder) and a missing image folder before reading;
    `what` names the annotations in the message."""
    if not (os.path.isdir(annotations) if folder else os.path.isfile(annotations)):
        raise DatasetFormatError(f"{what} not found: {annotations}")
    if not os.path.isdir(images_dir):
        raise DatasetFormatError(f"image folder not found: {images_dir}")


def check_box(box: BoxRecord, record: ImageRecord, where: str) -> BoxRecord:
    """Clip to the image; a box that is empty or inverted is an error naming `where`."""
    if not (box.x2 > box.x1 and box.y2 > box.y1):
        raise DatasetFormatError(f"{where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) of '{box.name}' "
                                 f"is empty or inverted (need x1 < x2 and y1 < y2)")
    box.x1, box.x2 = max(0.0, box.x1), min(float(record.width), box.x2)
    box.y1, box.y2 = max(0.0, box.y1), min(float(record.height), box.y2)
    if not (box.x2 > box.x1 and box.y2 > box.y1):
        raise DatasetFormatError(f"{where}: box of '{box.name}' lies outside the {record.width}x{record.height} "
                                 f"image")
    return box
