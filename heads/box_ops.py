"""Vectorised NumPy box geometry for corner boxes (x1, y1, x2, y2).

Used by the data pipeline (SSD crop, target assignment) and by any head whose
targets are built on the host. No "+1 pixel" convention here: a box's width is
x2 - x1, as in the SSD matcher (the +1 convention only appears in the reference
soft-NMS, REFERENCE 1.10, which has its own IoU).
"""
from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of corner boxes (..., 4); degenerate (negative-side) boxes count as 0."""
    w = np.maximum(boxes[..., 2] - boxes[..., 0], 0)
    h = np.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return w * h


def pairwise_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of every box in `a` (N, 4) with every box in `b` (M, 4) -> (N, M)."""
    # one axis at a time keeps the temporaries at (N, M) instead of (N, M, 2)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(ih, 0, out=ih)
    iw *= ih
    return iw


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4) -> (N, M).

        IoU = |a ∩ b| / (|a| + |b| - |a ∩ b|)

    Computed in the wider of the two input float types (float32 for float32 inputs:
    the data pipeline matches up to 80k priors per image, where float64 would double
    the cost for no change in which prior wins). A pair whose union is empty (two
    degenerate boxes) gets IoU 0 rather than NaN.
    """
    dtype = np.result_type(a.dtype, b.dtype, np.float32)
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    inter = pairwise_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
