"""Pascal VOC XML annotations (one file per image) -> ImageRecords.

    <annotation>
      <filename>31.jpg</filename>
      <size><width>499</width><height>666</height></size>
      <object><name>can</name><difficult>0</difficult>
              <bndbox><xmin>103</xmin><ymin>254</ymin><xmax>211</xmax><ymax>416</ymax></bndbox></object>
    </annotation>

Coordinates are VOC's 1-based inclusive pixel indices: the box covers pixels xmin..xmax, i.e.
[xmin - 1, xmax] in 0-based corner coordinates. `difficult` objects become COCO crowd boxes
(ignored by training and evaluation, as VOC's own evaluation ignores them). The image is
`images_dir/<filename>`, else the file with the XML's name and an image extension. A missing
<size> (or 0) is read from the image.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import cv2

from src.data.formats.records import BoxRecord, DatasetFormatError, ImageRecord, check_box, require_inputs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _text(element, tag: str, where: str, required: bool = True):
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DatasetFormatError(f"{where}: missing <{tag}>")
        return None
    return child.text.strip()


def _number(element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        return float(text)
    except ValueError as exc:
        raise DatasetFormatError(f"{where}: <{tag}> is not a number: {text!r}") from exc


def image_size(path: str) -> tuple[int, int]:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetFormatError(f"{path}: cannot read the image to find its size")
    return int(image.shape[1]), int(image.shape[0])


def _find_image(xml_path: str, filename, images_dir: str) -> str:
    candidates = []
    if filename:
        candidates.append(os.path.join(images_dir, os.path.basename(filename)))
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    candidates += [os.path.join(images_dir, stem + ext) for ext in IMAGE_EXTENSIONS + tuple(
        e.upper() for e in IMAGE_EXTENSIONS)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DatasetFormatError(f"{xml_path}: image not found (looked for {candidates[0]})")


def read_voc_file(xml_path: str, images_dir: str) -> ImageRecord:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetFormatError(f"{xml_path}: not valid XML: {exc}") from exc
    if root.tag != "annotation":
        raise DatasetFormatError(f"{xml_path}: the root element is <{root.tag}>, expected <annotation>")
    image_path = _find_image(xml_path, _text(root, "filename", xml_path, required=False), images_dir)
    size = root.find("size")
    width = height = 0
    if size is not None:
        width = int(_number(size, "width", f"{xml_path}: <size>"))
        height = int(_number(size, "height", f"{xml_path}: <size>"))
    if width <= 0 or height <= 0:
        width, height = image_size(image_path)
    record = ImageRecord(image_path, width, height, source=xml_path)
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_path}: <object> {k + 1}"
        name = _text(obj, "name", where)
        box = obj.find("bndbox")
        if box is None:
            raise DatasetFormatError(f"{where} ('{name}'): missing <bndbox>")
        corners = [_number(box, tag, f"{where} <bndbox>") for tag in ("xmin", "ymin", "xmax", "ymax")]
        difficult = _text(obj, "difficult", where, required=False)
        record.boxes.append(check_box(BoxRecord(name, corners[0] - 1, corners[1] - 1, corners[2], corners[3],
                                                int(difficult == "1")), record, where))
    return record


def read_voc(annotations_dir: str, images_dir: str) -> list[ImageRecord]:
    """Every *.xml in `annotations_dir` (sorted), its image in `images_dir`."""
    require_inputs(annotations_dir, images_dir, "annotation folder", folder=True)
    files = sorted(f for f in os.listdir(annotations_dir) if f.lower().endswith(".xml"))
    if not files:
        raise DatasetFormatError(f"{annotations_dir}: no .xml annotation files")
    return [read_voc_file(os.path.join(annotations_dir, f), images_dir) for f in files]
