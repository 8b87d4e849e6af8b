"""Test-time post-processing of one image's detections (REFERENCE 1.10, 2.1).

    network outputs of one image --decoder--> boxes (P, 4) in [0, 1] of the network input,
                                              scores (P, K), has_background, score_factors (P,) or None
    --scale_boxes-->  pixels of the original image
        --detect-->  per class: score > score_threshold -> x score factor -> (soft-)NMS
                     -> top keep_per_class, then top max_per_image over all classes
        -->  boxes (K, 4), scores (K,), labels (K,): class labels (0-based, heads/labels.py)

Scores are either softmax with the background in column 0 (multibox head; classes are
columns 1..C-1) or per-class sigmoids without a background column (dense heads; column c is
dataset label c). ``detect`` is the one function that evaluation, export checks and inference
all call, so they cannot drift apart. The decoders (`SSDOutputDecoder`, `DenseOutputDecoder`,
chosen by `src.builder.build_output_decoder`) turn a head's `predict` outputs into that form.

Score factors (ATSS/UMOP centerness) multiply a candidate's score *after* the threshold, as
mmdetection 2.14's `multiclass_nms(..., score_factors=...)`: a class score of 0.08 with a
centerness of 0.5 passes a 0.05 threshold and is kept with score 0.04.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np

from heads.box_coder import MAX_LOG_SCALE, SSDBoxCoder
from nms import nms, soft_nms
from src.data.resize import InputPolicy

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")
NMS_METHODS = SOFT_NMS_METHODS + ("nms",)


class Detections(NamedTuple):
    """One image's detections, sorted by decreasing score."""

    boxes: np.ndarray   # (K, 4) float32 corners (x1, y1, x2, y2)
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int64 class labels, 0-based (heads/labels.py)


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
           max_per_image: Optional[int] = 100, pixel_offset: bool = True,
           has_background: bool = True, score_factors: Optional[np.ndarray] = None) -> Detections:
    """Per-class score threshold, NMS and top-k for one image.

    For every foreground class c (score column c >= 1): keep the boxes with
    ``scores[:, c] > score_threshold``; suppress with ``nms_method``; keep the first
    ``keep_per_class`` of the result (they come out by decreasing score). Then keep the
    ``max_per_image`` best over all classes. With ``score_factors``, a candidate's score is
    ``scores[:, c] * score_factors`` from the threshold on (NMS, ordering, output).

    Args:
        boxes: (P, 4) decoded corner boxes, in the coordinates wanted on output (pixels
            of the original image for evaluation, see :func:`scale_boxes`); one box per
            prior, shared by all classes.
        scores: (P, C) class probabilities: softmax with the background in column 0, or
            (``has_background=False``) per-class sigmoids, column c = dataset label c.
        score_threshold: candidates need a score strictly above it (reference: 0.1).
        nms_method: ``'linear'``, ``'gaussian'`` or ``'hard'`` - the soft-NMS weightings
            (``nms.soft_nms``) - or ``'nms'``: plain greedy NMS (``nms.nms``).
        nms_threshold: Nt of linear/hard soft-NMS, or the IoU threshold of plain NMS (the
            reference uses 0.45 when soft-NMS is off).
        soft_sigma: sigma of gaussian soft-NMS.
        soft_min_score: soft-NMS drops boxes whose re-weighted score falls below it.
        keep_per_class: at most this many boxes per class; None or <= 0: no limit.
        max_per_image: at most this many boxes in total; None or <= 0: no limit (the
            release's test.py, topk=0).
        pixel_offset: the "+1 pixel" IoU (w = x2 - x1 + 1) of the reference, which
            assumes pixel coordinates; False for continuous coordinates.
        has_background: whether score column 0 is the background (and skipped). The dense
            heads' settings (REFERENCE 2.1) are score_threshold 0.05, nms_method 'nms',
            nms_threshold 0.6, keep_per_class 0, max_per_image 100, with has_background False
            (their configs' `test:` section) and pixel_offset False (`data.pixel_offset`,
            which also governs reading and results writing).
        score_factors: (P,) multipliers applied after the threshold (ATSS/UMOP centerness), or
            None.

    Returns:
        :class:`Detections` ``(boxes (K, 4) float32, scores (K,) float32, labels (K,)
        int64)``, sorted by decreasing score (ties: class order, then NMS order).
        ``labels`` are class labels (heads/labels.py): the dataset's 0-based label, whether or
        not the scores had a background column.

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
    if score_factors is not None:
        score_factors = np.asarray(score_factors, dtype=np.float32).reshape(-1)
        if score_factors.shape[0] != boxes.shape[0]:
            raise ValueError(f"score_factors must be (P,) with P = {boxes.shape[0]}, got {score_factors.shape}")

    # Classes without a candidate never reach the loop.
    fg = scores[:, 1:] if has_background else scores
    cls, rows = _candidates(fg, score_threshold)
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
        if score_factors is not None:
            dets[:, 4] *= score_factors[r]
        kept = _suppress(dets, nms_method, nms_threshold, soft_sigma, soft_min_score, pixel_offset)
        if keep_per_class is not None and keep_per_class > 0:
            kept = kept[:keep_per_class]
        per_class.append((kept, c))

    dets = np.concatenate([k for k, _ in per_class])
    labels = np.concatenate([np.full(len(k), c, dtype=np.int64) for k, c in per_class])
    order = np.argsort(-dets[:, 4], kind="stable")
    if max_per_image is not None and max_per_image > 0:
        order = order[:max_per_image]
    return Detections(dets[order, :4], dets[order, 4], labels[order])


def _candidates(fg: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(class column, row) of every score above `threshold`, class by class, rows ascending
    within a class: what ``np.nonzero((fg > threshold).T)`` returns, ~4x faster.

    np.nonzero of a 2-D (transposed) mask walks it element by element to build two index
    arrays; the flat, row-major scan is a fast 1-D pass, and a stable sort of the few
    thousand hits by class restores the class-major order (rows stay ascending).
    """
    num_classes = fg.shape[1]
    flat = np.flatnonzero(fg > threshold)
    cls = flat % num_classes
    order = np.argsort(cls, kind="stable")
    return cls[order], flat[order] // num_classes


def _suppress(dets: np.ndarray, method: str, threshold: float, sigma: float, min_score: float,
              pixel_offset: bool) -> np.ndarray:
    if method == "nms":
        return nms(dets, iou_threshold=threshold, pixel_offset=pixel_offset)
    return soft_nms(dets, method=method, iou_threshold=threshold, sigma=sigma,
                    score_threshold=min_score, pixel_offset=pixel_offset)


class SSDOutputDecoder:
    """Multibox head: (loc offsets (P, 4), softmax scores (P, C)) of one image -> (boxes in [0, 1],
    scores, has_background=True, no score factors); decoded against the SSD priors, not clipped
    (the reference)."""

    has_background = True
    clip = False

    def __init__(self, priors: np.ndarray, variances=(0.1, 0.2)):
        self.priors = np.asarray(priors, dtype=np.float32)
        self.coder = SSDBoxCoder(variances)
        # prior centres and sizes as contiguous arrays, once rather than per image
        self._prior_xy = np.ascontiguousarray(self.priors[:, :2])
        self._prior_wh = np.ascontiguousarray(self.priors[:, 2:])

    def __call__(self, outputs) -> tuple[np.ndarray, np.ndarray, bool, None]:
        loc, scores = outputs
        return self.decode(loc), scores, self.has_background, None

    def decode(self, loc: np.ndarray) -> np.ndarray:
        """`SSDBoxCoder.decode(loc, priors)` for one image's (P, 4) offsets, bit for bit, without
        its per-call copies of the priors and the two concatenations."""
        loc = np.asarray(loc, dtype=np.float32)
        if loc.shape != self.priors.shape:
            return self.coder.decode(loc, self.priors)
        v0, v1 = self.coder.variances
        # the same operations in the same order as SSDBoxCoder.decode and center_to_corner
        centre = loc[:, :2] * v0
        centre *= self._prior_wh
        centre += self._prior_xy
        half = np.minimum(loc[:, 2:] * v1, MAX_LOG_SCALE)
        np.exp(half, out=half)
        half *= self._prior_wh
        half /= 2
        boxes = np.empty(loc.shape, dtype=np.float32)
        np.subtract(centre, half, out=boxes[:, :2])
        np.add(centre, half, out=boxes[:, 2:])
        return boxes


class DenseOutputDecoder:
    """Dense heads: (boxes (K, 4) in network-input pixels, sigmoid scores (K, C)[, score factors
    (K,)]) of one image (already decoded and pre-NMS top-k'd in the graph by `head.predict`) ->
    (boxes in [0, 1] of the (H, W) input, scores, has_background=False, score factors or None).
    Boxes are clipped to the image afterwards, as mmdetection clips to the image shape."""

    has_background = False
    clip = True

    def __init__(self, input_hw):
        h, w = (int(v) for v in input_hw)
        self.scale = np.array([w, h, w, h], dtype=np.float32)

    def __call__(self, outputs) -> tuple[np.ndarray, np.ndarray, bool, Optional[np.ndarray]]:
        boxes, scores = outputs[0], outputs[1]
        factors = outputs[2] if len(outputs) > 2 else None
        return np.asarray(boxes, dtype=np.float32) / self.scale, scores, self.has_background, factors


@dataclass(frozen=True)
class DetectionSettings:
    """The keyword arguments of `detect`, read once from the config (src.builder.detection_settings:
    its `test:` section and the box convention `data.pixel_offset`, the NMS IoU)."""

    score_threshold: float = 0.1
    nms_method: str = "linear"
    nms_threshold: float = 0.3
    soft_sigma: float = 0.5
    soft_min_score: float = 0.001
    keep_per_class: Optional[int] = 50
    max_per_image: Optional[int] = 100
    pixel_offset: bool = True

    def as_kwargs(self) -> dict:
        return asdict(self)


def to_original_pixels(boxes: np.ndarray, policy: InputPolicy, height: int, width: int,
                       clip: bool = False) -> np.ndarray:
    """Boxes in [0, 1] of the network input -> pixels of the original height x width image."""
    if policy.mode == "square":
        out = scale_boxes(boxes, width, height)
    else:
        canvas_h, canvas_w = policy.canvas()
        sx, sy = policy.scale((height, width))
        out = np.asarray(boxes, dtype=np.float32) * np.array(
            [canvas_w / sx, canvas_h / sy, canvas_w / sx, canvas_h / sy], dtype=np.float32)
    if clip:
        out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


class Postprocessor:
    """One image's network outputs -> its Detections in original-image pixels; the one path that
    evaluation, infer.py, serve.py, the Python API and the benchmarks share.

        outputs --decoder--> boxes in [0, 1] of the network input, scores, has_background, factors
                --to_original_pixels (InputPolicy)--> pixels  --detect (DetectionSettings)--> Detections

    clip: clip boxes to the image before NMS; None follows the decoder (the SSD decoder keeps the
    reference's unclipped boxes for evaluation; inference clips, see src/inference/predictor.py).
    """

    def __init__(self, decoder: Callable, policy: InputPolicy, settings: DetectionSettings,
                 clip: Optional[bool] = None):
        self.decoder = decoder
        self.policy = policy
        self.settings = settings
        self.clip = getattr(decoder, "clip", False) if clip is None else bool(clip)
        self._kwargs = settings.as_kwargs()

    def __call__(self, outputs, height: int, width: int) -> Detections:
        boxes, scores, has_background, factors = self.decoder(outputs)
        boxes = to_original_pixels(boxes, self.policy, height, width, self.clip)
        return detect(boxes, scores, has_background=has_background, score_factors=factors, **self._kwargs)
