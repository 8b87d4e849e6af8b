"""Test-time post-processing of one image's detections (SPEC 1.10).

    decoded boxes (P, 4) in [0, 1]  --scale_boxes-->  pixels of the original image
    softmax scores (P, C), background in column 0
        --detect-->  per class c >= 1: score > score_threshold -> (soft-)NMS -> top keep_per_class
                     then top max_per_image over all classes
        -->  boxes (K, 4), scores (K,), labels (K,) in 1..C-1

``detect`` is the one function that evaluation, export checks and inference all call, so
they cannot drift apart. Decoding the network's regression output is not done here (see
``heads.box_coder.SSDBoxCoder.decode``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from nms import nms, soft_nms

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")
NMS_METHODS = SOFT_NMS_METHODS + ("nms",)


class Detections(NamedTuple):
    """One image's detections, sorted by decreasing score."""

    boxes: np.ndarray   # (K, 4) float32 corners (x1, y1, x2, y2)
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int64 score-column index, 1..C-1 (dataset label + 1)


def scale_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalised corner boxes (P, 4) -> pixels of a ``width`` x ``height`` image.

    Multiplies by (w, h, w, h) and does not clip, as the reference does (its priors are
    clipped to [0, 1], the decoded boxes are not).
    """
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32) * scale


def _empty() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                      np.zeros((0,), np.int64))


def detect(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float = 0.1,
           nms_method: str = "linear", nms_threshold: float = 0.3, soft_sigma: float = 0.5,
           soft_min_score: float = 0.001, keep_per_class: Optional[int] = 50,
           max_per_image: Optional[int] = 100, pixel_offset: bool = True) -> Detections:
    """Per-class score threshold, NMS and top-k for one image.

    For every foreground class c (score column c >= 1): keep the boxes with
    ``scores[:, c] > score_threshold``; suppress with ``nms_method``; keep the first
    ``keep_per_class`` of the result (they come out by decreasing score). Then keep the
    ``max_per_image`` best over all classes.

    Args:
        boxes: (P, 4) decoded corner boxes, in the coordinates wanted on output (pixels
            of the original image for evaluation, see :func:`scale_boxes`); one box per
            prior, shared by all classes.
        scores: (P, C) class probabilities (softmax), background in column 0.
        score_threshold: candidates need a score strictly above it (reference: 0.1).
        nms_method: ``'linear'``, ``'gaussian'`` or ``'hard'`` - the soft-NMS weightings
            (``nms.soft_nms``) - or ``'nms'``: plain greedy NMS (``nms.nms``).
        nms_threshold: Nt of linear/hard soft-NMS, or the IoU threshold of plain NMS (the
            reference uses 0.45 when soft-NMS is off).
        soft_sigma: sigma of gaussian soft-NMS.
        soft_min_score: soft-NMS drops boxes whose re-weighted score falls below it.
        keep_per_class: at most this many boxes per class; None or <= 0: no limit.
        max_per_image: at most this many boxes in total; None or <= 0: no limit.
        pixel_offset: the "+1 pixel" IoU (w = x2 - x1 + 1) of the reference, which
            assumes pixel coordinates; False for continuous coordinates.

    Returns:
        :class:`Detections` ``(boxes (K, 4) float32, scores (K,) float32, labels (K,)
        int64)``, sorted by decreasing score (ties: class order, then NMS order).
        ``labels`` are score-column indices 1..C-1; the dataset's 0-based label is
        ``label - 1`` (see ``src.evaluation.coco_eval.detections_to_coco``).

    The reference's soft-NMS call and why the defaults are what they are: the reference
    runs ``cpu_soft_nms(dets, 0.45, method=1)`` against the signature
    ``cpu_soft_nms(boxes, sigma=0.5, Nt=0.3, threshold=0.001, method=0)``, so its
    "IoU 0.45" lands in the *sigma* slot, which linear mode never reads. What it really
    runs is linear soft-NMS with Nt = 0.3 and a minimum score of 0.001, with the "+1
    pixel" IoU - which is what the defaults here do (``nms_method='linear'``,
    ``nms_threshold=0.3``, ``soft_min_score=0.001``, ``pixel_offset=True``);
    ``soft_sigma`` only matters for ``'gaussian'``.
    """
    if nms_method not in NMS_METHODS:
        raise ValueError(f"nms_method must be one of {NMS_METHODS}, got {nms_method!r}")
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (P, 4), got {boxes.shape}")
    if scores.ndim != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must be (P, C) with P = {boxes.shape[0]}, got {scores.shape}")

    # One vectorised threshold over all classes; transposed so that np.nonzero lists the
    # candidates class by class. Classes without a candidate never reach the loop.
    fg = scores[:, 1:]
    cls, rows = np.nonzero((fg > score_threshold).T)
    if cls.size == 0:
        return _empty()
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    ends = np.r_[starts[1:], cls.size]

    per_class = []
    for a, b in zip(starts, ends):
        c = int(cls[a])
        r = rows[a:b]
        dets = np.empty((r.size, 5), dtype=np.float32)
        dets[:, :4] = boxes[r]
        dets[:, 4] = fg[r, c]
        kept = _suppress(dets, nms_method, nms_threshold, soft_sigma, soft_min_score, pixel_offset)
        if keep_per_class is not None and keep_per_class > 0:
            kept = kept[:keep_per_class]
        per_class.append((kept, c + 1))

    dets = np.concatenate([k for k, _ in per_class])
    labels = np.concatenate([np.full(len(k), c, dtype=np.int64) for k, c in per_class])
    order = np.argsort(-dets[:, 4], kind="stable")
    if max_per_image is not None and max_per_image > 0:
        order = order[:max_per_image]
    return Detections(dets[order, :4], dets[order, 4], labels[order])


def _suppress(dets: np.ndarray, method: str, threshold: float, sigma: float, min_score: float,
              pixel_offset: bool) -> np.ndarray:
    if method == "nms":
        return nms(dets, iou_threshold=threshold, pixel_offset=pixel_offset)
    return soft_nms(dets, method=method, iou_threshold=threshold, sigma=sigma,
                    score_threshold=min_score, pixel_offset=pixel_offset)
