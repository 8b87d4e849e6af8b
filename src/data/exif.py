"""EXIF orientation of JPEG files, applied to decoded pixels.

OpenCV's default `imread` (which the M2Det release uses), mmcv and detectron2 all turn a JPEG
upright by its EXIF Orientation tag before use; `cv2.imdecode(..., IMREAD_UNCHANGED)`, which
keeps 16-bit depth and alpha, does not. The tag is read here from the header (Pillow parses
the markers only, no pixels) and applied with array flips and transposes:

    1 as stored   2 mirror left-right   3 rotate 180   4 mirror top-bottom
    5 transpose   6 rotate 90 clockwise   7 transverse   8 rotate 90 counter-clockwise

Orientations 5-8 swap the image's width and height.
"""
from __future__ import annotations

import io

import numpy as np

ORIENTATION_TAG = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF Orientation (1-8) of JPEG bytes; 1 for other formats, no tag or an unreadable or
    out-of-range one (the image is then used as stored, which is what the decoders do too)."""
    if data[:2] != b"\xff\xd8":
        return 1
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W[, C]) pixels as stored -> upright, for an EXIF orientation 1-8."""
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.swapaxes(0, 1)
    elif orientation == 6:
        image = image[::-1].swapaxes(0, 1)
    elif orientation == 7:
        image = image[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        image = image[:, ::-1].swapaxes(0, 1)
    else:
        return image
    return np.ascontiguousarray(image)
