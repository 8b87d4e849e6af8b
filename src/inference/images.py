"""Where inference images come from: paths on disk, or bytes uploaded to the scoring endpoint."""
from __future__ import annotations

import glob
import io
import os

import cv2
import numpy as np

from src.data.coco import _jpeg_truncated, to_bgr8
from src.data.exif import apply_orientation, jpeg_orientation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class ImageRejected(ValueError):
    """Uploaded bytes that are not a usable image; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def expand_image_paths(spec: str) -> list[str]:
    """A file, a folder (its image files, sorted, not recursive) or a glob pattern -> paths.

    A named file is kept whatever its extension (an unreadable one is reported per image);
    folder and glob matches are filtered by image extension.
    """
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        paths = [os.path.join(spec, n) for n in sorted(os.listdir(spec))]
    else:
        paths = sorted(glob.glob(spec, recursive=True))
    return [p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]


def image_size(data: bytes):
    """(width, height) from the image header without decoding the pixels, or None if Pillow
    does not recognise the format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def decode_image_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 BGR (H, W, 3), refusing images above `max_pixels`.

    The size is read from the header first (Pillow), so a small file that would decode to a
    huge bitmap is refused before any pixel is decoded; formats Pillow does not know are
    decoded by OpenCV and checked afterwards (OpenCV caps decoding at 2^30 pixels itself).
    Decoding is OpenCV's, and a JPEG is turned upright by its EXIF orientation, as for files
    (src/data/coco.read_image).
    """
    if not data:
        raise ImageRejected("empty image data")
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageRejected(f"image of {size[0]}x{size[1]} pixels exceeds the limit of {max_pixels} pixels", 413)
    if data[:2] == b"\xff\xd8" and _jpeg_truncated(data):
        raise ImageRejected("truncated JPEG")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageRejected("not a decodable image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageRejected(f"image of {image.shape[1]}x{image.shape[0]} pixels exceeds the limit of "
                            f"{max_pixels} pixels", 413)
    return to_bgr8(apply_orientation(image, jpeg_orientation(data)))
