"""Public NMS functions: argument checks and conversion around the Cython kernels.

Detections are (N, 5) rows ``[x1, y1, x2, y2, score]`` of one class. The algorithms and
the IoU formula are described in ``nms/soft_nms.pyx``.
"""
from __future__ import annotations

import numpy as np

from nms import _soft_nms


def _as_dets(dets) -> np.ndarray:
    """``dets`` as a validated C-contiguous float32 (N, 5) array (copied only when a
    conversion is needed). An empty input of any 1-D or (0, 5) shape gives (0, 5)."""
    arr = np.asarray(dets)
    if arr.size == 0 and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 5)):
        return np.zeros((0, 5), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(
            f"dets must be an (N, 5) array of [x1, y1, x2, y2, score] rows, got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # reported just below instead
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    # checked after the cast, so a float64 value out of float32 range is caught too
    if not np.isfinite(arr).all():
        raise ValueError("dets contains non-finite values (NaN or inf) in float32")
    return arr


def _method_code(method: str) -> int:
    try:
        return _soft_nms.METHOD_CODES[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown soft-NMS method {method!r}; expected one of {sorted(_soft_nms.METHOD_CODES)}"
        ) from None


def _check_iou_threshold(iou_threshold: float) -> None:
    # Nt >= 0 is also what lets the optimized soft-NMS apply w(IoU=0) = 1 to disjoint boxes.
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")


def _soft_nms_args(method: str, iou_threshold: float, sigma: float,
                   score_threshold: float) -> int:
    code = _method_code(method)
    _check_iou_threshold(iou_threshold)
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not np.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold}")
    return code


def soft_nms(dets, method: str = "linear", iou_threshold: float = 0.3, sigma: float = 0.5,
             score_threshold: float = 0.001, pixel_offset: bool = True) -> np.ndarray:
    """Soft-NMS (Bodla et al. 2017) of one class's detections.

    Repeat until no box remains: select the remaining box with the highest current
    score; multiply the score of every other remaining box by w(IoU with it)::

        linear:    w = 1 - IoU  if IoU > Nt  else 1
        gaussian:  w = exp(-IoU^2 / sigma)
        hard:      w = 0        if IoU > Nt  else 1

    and discard the boxes whose score is now below ``score_threshold``.

    Tie rule: among remaining boxes with exactly equal current scores, the one that came
    first in the input (lowest row index) is selected first - the first of the remaining
    boxes listed in input order.

    Deliberate difference from the reference's ``cpu_soft_nms``: input boxes already
    below ``score_threshold`` are discarded up front. The reference tests the threshold
    only after re-weighting an overlapping box, so a low box that never overlapped a
    selected one survived (immaterial for M2Det, whose inputs are > 0.1). The reference's
    tie rule is the lowest current array position, which depends on its earlier swaps;
    ``soft_nms_classic`` keeps both reference rules.

    Args:
        dets: (N, 5) ``[x1, y1, x2, y2, score]``; converted to C-contiguous float32 when
            it is not (the caller's array is never modified).
        method: ``'linear'``, ``'gaussian'`` or ``'hard'``.
        iou_threshold: Nt of the linear and hard weights, in [0, 1] (unused by gaussian).
        sigma: of the gaussian weight, > 0 (unused by linear and hard).
        score_threshold: minimum score of a kept box.
        pixel_offset: True for the reference's "+1 pixel" IoU (w = x2 - x1 + 1),
            False for continuous coordinates (w = x2 - x1).

    Returns:
        (K, 5) float32: the kept rows with their re-weighted scores, in selection order
        (non-increasing score).

    Raises:
        ValueError: wrong shape, non-finite values, unknown method or bad parameter.
    """
    code = _soft_nms_args(method, iou_threshold, sigma, score_threshold)
    arr = _as_dets(dets)
    arr = arr[arr[:, 4] >= np.float32(score_threshold)]  # boolean indexing: a new C array
    if arr.shape[0] == 0:
        return np.zeros((0, 5), dtype=np.float32)
    return _soft_nms.soft_nms_kernel(arr, code, iou_threshold, sigma, score_threshold,
                                     1.0 if pixel_offset else 0.0)


def soft_nms_classic(dets, method: str = "linear", iou_threshold: float = 0.3,
                     sigma: float = 0.5, score_threshold: float = 0.001,
                     pixel_offset: bool = True) -> np.ndarray:
    """The reference's ``cpu_soft_nms`` loop (O(N^2), two sweeps per selection, swaps).

    Kept as the benchmark baseline and a second test oracle; use :func:`soft_nms`.
    Same arguments and result as :func:`soft_nms`, with the reference's rules where they
    differ (ties: lowest current array position; input boxes below the threshold are
    kept unless they overlap a selected box). For distinct scores that are all
    >= ``score_threshold``, the output is identical to :func:`soft_nms`.
    """
    code = _soft_nms_args(method, iou_threshold, sigma, score_threshold)
    boxes = _as_dets(dets).copy()  # the kernel sorts it in place
    if boxes.shape[0] == 0:
        return boxes
    n = _soft_nms.soft_nms_classic_kernel(boxes, code, iou_threshold, sigma, score_threshold,
                                          1.0 if pixel_offset else 0.0)
    return boxes[:n].copy()


def nms(dets, iou_threshold: float = 0.45, pixel_offset: bool = False) -> np.ndarray:
    """Greedy hard NMS: visit the boxes by decreasing score (equal scores in input
    order), keep a box unless its IoU with an already kept box is > ``iou_threshold``.

    Args:
        dets: (N, 5) ``[x1, y1, x2, y2, score]`` (converted to float32 if needed).
        iou_threshold: in [0, 1].
        pixel_offset: True for the "+1 pixel" IoU, False (default) for continuous boxes.

    Returns:
        (K, 5) float32 kept rows, scores unchanged, in selection order.

    Raises:
        ValueError: wrong shape, non-finite values or bad threshold.
    """
    _check_iou_threshold(iou_threshold)
    arr = _as_dets(dets)
    if arr.shape[0] == 0:
        return arr
    # a stable sort of the negated scores keeps equal scores in input order
    order = np.argsort(-arr[:, 4], kind="stable").astype(np.intp, copy=False)
    keep = _soft_nms.nms_kernel(arr, order, iou_threshold, 1.0 if pixel_offset else 0.0)
    return arr[keep]
