"""What a format reader returns: images with their boxes, in pixels, classes by name."""
from __future__ import annotations

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
