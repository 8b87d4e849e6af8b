"""COCO-format detection reader (any COCO-style json + image folder).

    reader = CocoDetection("data/coco/annotations/instances_val2017.json", "data/coco/val2017")
    rec = reader[0]           # DetectionRecord or None if the image cannot be read
    rec.image                 # (H, W, 3) uint8 BGR
    rec.boxes, rec.labels     # (G, 4) float32 pixel corners, (G,) int32 in 0..K-1
    reader.label_to_cat_id    # label -> COCO category id (for writing results)

Labels are contiguous and 0-based in the order of sorted category ids, so COCO's 80 ids
in 1..90 become 0..79 and the synthetic set's 1, 2, 4, 5, 7 become 0..4.

Annotation handling, decided once at construction (vectorised over all annotations):
- `iscrowd` boxes are not training targets (COCO evaluation ignores them too);
- COCO `[x, y, w, h]` becomes corners (x, y, x + w, y + h), or with `pixel_offset` the M2Det
  release's "+1 pixel" corners (x, y, x + w - 1, y + h - 1): pixel indices, a box covering
  x2 - x1 + 1 pixels (config `data.pixel_offset`, which NMS and results writing follow too);
- boxes are clipped to the image (json width/height; the last pixel index W - 1, H - 1 with
  `pixel_offset`); a box that is left with a side < `min_box_size` pixels (zero/negative
  size, or outside the image) is dropped; both are counted (`stats`).
Images without annotations are kept: they are negatives. An annotation file without images,
or with two images (annotations, categories) sharing one id, is refused (CocoFormatError).

Image handling, at load time: a JPEG is turned upright by its EXIF orientation, unless the
json's width/height fit the stored pixels and not the upright ones (annotated in the stored
frame): then the annotation is followed, the stored pixels are used and the image is reported
(`orientation_ignored`, a warning naming it). Files that are missing, zero-byte, undecodable or
truncated (a JPEG whose last scan has no end-of-image marker; a truncated PNG fails to decode)
give None and are recorded with their reason in `skipped`, a per-image flag array shared with
data-loader worker processes, so training and evaluation can report them. Grayscale, BGRA and
16-bit images are converted to 8-bit BGR.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import os
from typing import NamedTuple, Optional

import cv2
import numpy as np

from src.data.exif import SWAPS_SIDES, apply_orientation, jpeg_orientation

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


class CocoFormatError(ValueError):
    """The annotation file is not COCO-shaped; the message names the file and field."""


class DetectionRecord(NamedTuple):
    image: np.ndarray        # (H, W, 3) uint8 BGR
    boxes: np.ndarray        # (G, 4) float32 pixel corners (x1, y1, x2, y2)
    labels: np.ndarray       # (G,) int32 contiguous 0-based labels
    image_id: int            # COCO image id
    orig_size: tuple         # (height, width) of the decoded image


# ---------------------------------------------------------------------- validation

def check_paths(ann_file: str, image_dir: str) -> None:
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")


def load_annotation_json(ann_file: str) -> dict:
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(f"{ann_file}: not valid JSON: {exc}") from exc
    validate_coco(data, ann_file)
    return data


def validate_coco(data, source: str) -> None:
    """Raise CocoFormatError naming the first missing/ill-typed field."""
    if not isinstance(data, dict):
        raise CocoFormatError(f"{source}: top level must be a JSON object with "
                              f"'images', 'annotations' and 'categories', got {type(data).__name__}")
    for section, fields in REQUIRED_FIELDS.items():
        if section not in data:
            raise CocoFormatError(f"{source}: missing field '{section}'")
        items = data[section]
        if not isinstance(items, list):
            raise CocoFormatError(f"{source}: field '{section}' must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise CocoFormatError(f"{source}: {section}[{i}] must be an object")
            for field in fields:
                if field not in item:
                    raise CocoFormatError(f"{source}: {section}[{i}] has no field '{field}'")
    if not data["images"]:
        raise CocoFormatError(f"{source}: field 'images' is empty: the split has no images to read")
    _refuse_duplicate_ids(data, source)
    cat_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise CocoFormatError(f"{source}: annotations[{i}] field 'bbox' must be [x, y, w, h], "
                                  f"got {bbox!r}")
        if ann["category_id"] not in cat_ids:
            raise CocoFormatError(f"{source}: annotations[{i}] field 'category_id' "
                                  f"{ann['category_id']!r} is not in 'categories'")
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{source}: annotations[{i}] field 'image_id' "
                                  f"{ann['image_id']!r} is not in 'images'")


def _refuse_duplicate_ids(data: dict, source: str) -> None:
    """Two images (or annotations) with one id would be merged silently by the COCO index."""
    for section in ("images", "annotations", "categories"):
        first_at = {}
        for i, item in enumerate(data[section]):
            key = item["id"]
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise CocoFormatError(f"{source}: {section}[{i}] field 'id' must be a number, got {key!r}")
            if key in first_at:
                raise CocoFormatError(f"{source}: duplicate {section[:-1]} id {key!r} "
                                      f"({section}[{first_at[key]}] and {section}[{i}]); ids must be unique")
            first_at[key] = i


def check_num_classes(num_categories: int, num_classes: int, ann_file: str) -> None:
    """model.num_classes counts the object classes (configs/base.yaml): it must equal the categories.

    Checked before a network is built or compiled: with more categories than the network
    predicts, training fails deep inside the loss; with fewer, AP is computed over classes
    that do not exist.
    """
    if int(num_classes) != int(num_categories):
        # configs of version 1 counted the background: say so to whoever upgrades one
        old_meaning = (" (configs before config_version 2 counted the background too; it is no longer counted)"
                       if int(num_classes) == int(num_categories) + 1 else "")
        raise ValueError(
            f"{ann_file} has {num_categories} categories, so model.num_classes must be "
            f"{num_categories} (the object classes, background not counted), but the config "
            f"has model.num_classes={num_classes}{old_meaning}; set --set model.num_classes={num_categories} "
            f"(or use the annotation file the model was made for)")


# ---------------------------------------------------------------------- images

def _jpeg_truncated(data: bytes) -> bool:
    """A complete JPEG has an end-of-image marker (FF D9) after its last start-of-scan (FF DA).

    Inside entropy-coded data every FF byte is followed by 00 or a restart marker, so
    neither marker can occur by accident; an embedded EXIF thumbnail's markers all sit
    before the main scan. OpenCV itself decodes a truncated JPEG with a grey tail.
    """
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, gray+alpha, BGR, BGRA; 8/16-bit or float) -> (H, W, 3) uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)              # keep the high byte: 65535 -> 255
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
        if image.size and image.max() <= 1.0:              # float images in [0, 1]
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1 or channels == 2:                     # gray (+ alpha): alpha dropped
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image[:, :, :3]


def read_image(path: str, exif_orientation: bool = True) -> Optional[np.ndarray]:
    """Decode an image file to uint8 BGR, or None when it is missing, corrupt or truncated.
    A JPEG is turned upright by its EXIF orientation (src/data/exif.py) unless
    `exif_orientation` is False."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if data[:2] == b"\xff\xd8" and _jpeg_truncated(data):
        return None
    # UNCHANGED keeps 16-bit depth and alpha (converted by to_bgr8) but ignores EXIF
    # orientation, which is applied afterwards as OpenCV's imread would
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    if exif_orientation:
        image = apply_orientation(image, jpeg_orientation(data))
    return to_bgr8(image)


# why an image was not read; the codes are the values stored in SkipFlags
MISSING, EMPTY, UNDECODABLE = 1, 2, 3
SKIP_REASONS = {MISSING: "missing", EMPTY: "zero-byte", UNDECODABLE: "undecodable or truncated"}


def image_file_problem(path: str) -> Optional[int]:
    """MISSING or EMPTY for a file that cannot hold an image, else None (checked before decoding)."""
    try:
        if os.path.getsize(path) == 0:
            return EMPTY
    except OSError:
        return MISSING
    return None


def load_image_file(path: str) -> tuple[Optional[np.ndarray], Optional[int]]:
    """(uint8 BGR image, None), or (None, reason code) for a missing, empty or undecodable file."""
    problem = image_file_problem(path)
    if problem is not None:
        return None, problem
    try:
        image = read_image(path)
    except cv2.error:
        image = None
    return (image, None) if image is not None else (None, UNDECODABLE)


def describe_unreadable(path: str, reason: Optional[int]) -> str:
    return f"{path}: unreadable image ({SKIP_REASONS.get(reason, 'undecodable or truncated')} file)"


# ---------------------------------------------------------------------- skip flags

class SkipFlags:
    """One flag per image, shared with forked worker processes.

    Data-loader workers decode images in their own processes; a flag array in shared
    memory lets the main process report unreadable images. If the object is ever
    pickled (spawn start method) the copy falls back to process-local flags.
    """

    def __init__(self, size: int):
        self.size = size
        self._array = multiprocessing.RawArray("b", max(size, 1))

    def mark(self, index: int, reason: int = UNDECODABLE) -> None:
        self._array[index] = int(reason)

    def reasons(self) -> np.ndarray:
        """(size,) int8: 0 for read (or not yet tried), else the reason code."""
        return np.frombuffer(self._array, dtype=np.int8)[: self.size]

    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.reasons())

    def count(self) -> int:
        return int(self.indices().size)

    def __getstate__(self):
        return {"size": self.size, "flags": bytes(self._array)}

    def __setstate__(self, state):
        self.size = state["size"]
        self._array = multiprocessing.RawArray("b", max(self.size, 1))
        self._array[: len(state["flags"])] = state["flags"]

    def __deepcopy__(self, memo):
        return self   # MindSpore deep-copies pipelines; the flags must stay shared


# ---------------------------------------------------------------------- reader

class CocoDetection:
    """Random-access COCO detection reader.

    Args:
        ann_file: COCO json (instances_*.json or any file with the same fields).
        image_dir: folder holding the images named by `file_name`.
        skip_crowd: leave `iscrowd` boxes out of the targets.
        min_box_size: after clipping to the image, boxes with a side below this (pixels)
            are dropped.
        pixel_offset: read boxes in the "+1 pixel" convention (x2 = x + w - 1), see above.
    """

    def __init__(self, ann_file: str, image_dir: str, skip_crowd: bool = True,
                 min_box_size: float = 1.0, pixel_offset: bool = False):
        check_paths(ann_file, image_dir)
        from pycocotools.coco import COCO

        self.ann_file = ann_file
        self.image_dir = image_dir
        self.pixel_offset = bool(pixel_offset)
        data = load_annotation_json(ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
            self.coco.createIndex()

        self.cat_ids = sorted(self.coco.cats)
        self.label_to_cat_id = list(self.cat_ids)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.cat_names = [self.coco.cats[c]["name"] for c in self.cat_ids]

        self.image_ids = sorted(self.coco.imgs)
        infos = [self.coco.imgs[i] for i in self.image_ids]
        self.file_names = [info["file_name"] for info in infos]
        self.image_sizes = np.array([(info["height"], info["width"]) for info in infos], dtype=np.int64)
        self.stats = {"crowd_ignored": 0, "boxes_clipped": 0, "boxes_dropped": 0}
        self._boxes, self._labels = self._build_targets(data["annotations"], skip_crowd, min_box_size)
        self.skipped = SkipFlags(len(self.image_ids))
        self.orientation_ignored = SkipFlags(len(self.image_ids))
        if self.stats["boxes_clipped"] or self.stats["boxes_dropped"]:
            logger.info("%s: %d boxes clipped to their image, %d degenerate boxes dropped, "
                        "%d crowd boxes ignored", ann_file, self.stats["boxes_clipped"],
                        self.stats["boxes_dropped"], self.stats["crowd_ignored"])

    # -- targets ---------------------------------------------------------------
    def _build_targets(self, annotations: list, skip_crowd: bool, min_box_size: float):
        index_of = {image_id: k for k, image_id in enumerate(self.image_ids)}
        num = len(annotations)
        img_idx = np.fromiter((index_of[a["image_id"]] for a in annotations), np.int64, num)
        labels = np.fromiter((self.cat_id_to_label[a["category_id"]] for a in annotations), np.int32, num)
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in annotations), bool, num)
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(num, 4)

        off = 1.0 if self.pixel_offset else 0.0
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - off], axis=1)
        hw = self.image_sizes[img_idx].astype(np.float64) - off            # (N, 2) h, w (last pixel)
        limits = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=1)
        clipped = np.clip(corners, 0.0, limits)
        sides = np.minimum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]) + off
        # a box wholly outside clips to an edge line, which "+1 pixel" would count as 1 px wide
        overlaps = np.all(corners[:, :2] <= limits[:, :2], axis=1) & np.all(corners[:, 2:] >= 0, axis=1)
        valid = (sides >= min_box_size) & overlaps
        changed = np.any(clipped != corners, axis=1)

        considered = ~crowd if skip_crowd else np.ones(num, bool)
        self.stats["crowd_ignored"] = int(np.count_nonzero(crowd)) if skip_crowd else 0
        self.stats["boxes_dropped"] = int(np.count_nonzero(considered & ~valid))
        self.stats["boxes_clipped"] = int(np.count_nonzero(considered & valid & changed))
        keep = np.flatnonzero(considered & valid)

        order = keep[np.argsort(img_idx[keep], kind="stable")]           # annotation order kept
        splits = np.searchsorted(img_idx[order], np.arange(1, len(self.image_ids)))
        boxes = np.split(clipped[order].astype(np.float32), splits)
        labels_per_image = np.split(labels[order], splits)
        return boxes, labels_per_image

    # -- access ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.file_names[index])

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (G, 4) float32 pixel corners, labels (G,) int32) without reading the image."""
        return self._boxes[index], self._labels[index]

    def load_image(self, index: int) -> Optional[np.ndarray]:
        path = self.image_path(index)
        image, reason = load_image_file(path)
        if image is None:
            self.skipped.mark(index, reason)
            return image
        annotated = tuple(int(v) for v in self.image_sizes[index])
        if image.shape[:2] != annotated and image.shape[1::-1] == annotated:
            image = self._annotated_frame(index, path, image, annotated)
        return image

    def _annotated_frame(self, index: int, path: str, upright: np.ndarray, annotated: tuple) -> np.ndarray:
        """The stored (not EXIF-rotated) pixels when the json's size is theirs: the boxes were
        drawn on that frame. Reported once per image and process."""
        with open(path, "rb") as f:
            orientation = jpeg_orientation(f.read())
        if orientation not in SWAPS_SIDES:
            return upright
        stored = read_image(path, exif_orientation=False)
        if stored is None or stored.shape[:2] != annotated:
            return upright
        if index not in self.orientation_ignored.indices():
            logger.warning("%s: EXIF orientation %d gives %dx%d pixels but %s records %dx%d (the stored "
                           "frame): following the annotation, image used as stored", path, orientation,
                           upright.shape[1], upright.shape[0], self.ann_file, annotated[1], annotated[0])
        self.orientation_ignored.mark(index)
        return stored

    def __getitem__(self, index: int) -> Optional[DetectionRecord]:
        """The record of image `index` (0..len-1), or None when the image cannot be read."""
        image = self.load_image(index)
        if image is None:
            return None
        boxes, labels = self.annotations(index)
        height, width = image.shape[:2]
        if (height, width) != tuple(self.image_sizes[index]):
            # the json disagrees with the file: trust the pixels, re-clip the boxes
            off = 1.0 if self.pixel_offset else 0.0
            overlaps = ((boxes[:, 0] <= width - off) & (boxes[:, 1] <= height - off)
                        & (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0))
            boxes = boxes.copy()
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - off)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - off)
            keep = (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + off > 0) & overlaps
            boxes, labels = boxes[keep], labels[keep]
        return DetectionRecord(image, boxes, labels, int(self.image_ids[index]), (height, width))

    def orientation_summary(self) -> str:
        idx = self.orientation_ignored.indices()
        if idx.size == 0:
            return ""
        names = ", ".join(self.file_names[i] for i in idx[:5]) + (" ..." if idx.size > 5 else "")
        return (f"{idx.size} image(s) in {self.image_dir} used without their EXIF rotation, as their "
                f"annotated width/height are the stored ones: {names}")

    def skip_summary(self) -> str:
        reasons = self.skipped.reasons()
        idx = np.flatnonzero(reasons)
        if idx.size == 0:
            return ""
        counts = ", ".join(f"{int(np.count_nonzero(reasons == code))} {name}"
                           for code, name in SKIP_REASONS.items() if np.any(reasons == code))
        names = ", ".join(self.file_names[i] for i in idx[:5]) + (" ..." if idx.size > 5 else "")
        return f"{idx.size} unreadable image(s) in {self.image_dir} skipped ({counts}): {names}"
