"""Small pieces shared by the one-stage dense heads (RetinaNet, ATSS/UMOP, GFL, VFNet).

Each is a plain function or a tiny cell, so a head reads as "tower -> predictor convs -> loss
functions" without inheriting from another head:

- `conv_tower`: N x [3x3 conv, GroupNorm, ReLU] (REFERENCE 2.1; GN convs have no bias).
- `Scale`: the learnable per-level scalar on a regression output (init 1.0).
- `predictor_conv`: the last 3x3 conv of a branch, normal(0, 0.01) weights, constant bias
  (`prior_bias(0.01)` = -log(99) for classification, REFERENCE 2.1).
- `LevelPriors`: the anchors of every level, computed in the graph from the feature-map
  shapes (one tensor per level, so the per-level counts stay static), so one cell serves any
  input size (multi-scale training). The values are those of
  `heads.anchors.AnchorGenerator.grid_anchors`, which the data pipeline assigns against.
  Heads append these per-level tensors to their raw outputs, so `loss` and `predict` get
  them without knowing the input size.
- box coding in MindSpore ops: `delta_encode` / `delta_decode` (mmdetection's
  DeltaXYWHBBoxCoder), `distance2bbox` / `bbox2distance` (point + (l, t, r, b)).
- `batch_positive_count`, `DeviceMean`: the normalisers of REFERENCE 2.3 / 2.4.
- `topk_per_level`: the test-time "keep the best nms_pre per level" (REFERENCE 2.1), in the graph
  with a static output size.

Shapes: B images, N anchors over all levels (in `heads.utils.flatten_levels` order), C classes.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import Constant, Normal

from heads.anchors import AnchorGenerator

# mmdetection's DeltaXYWHBBoxCoder clamps the decoded log-size change at |log(16 / 1000)|
WH_RATIO_CLIP = 16.0 / 1000.0
MAX_LOG_RATIO = abs(math.log(WH_RATIO_CLIP))


def prior_bias(prior_prob: float = 0.01) -> float:
    """Bias that makes sigmoid(bias) = prior_prob: -log((1 - p) / p) (= -log 99 for 0.01)."""
    return float(-math.log((1.0 - prior_prob) / prior_prob))


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm(32) where the width allows it; narrow (lite) towers take the largest
    divisor of `channels` that is <= max_groups."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _conv3x3(in_channels: int, out_channels: int, bias: bool, bias_value: float = 0.0) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, pad_mode="pad", padding=1, has_bias=bias,
                     weight_init=Normal(0.01), bias_init=Constant(bias_value) if bias else None)


def conv_tower(in_channels: int, feat_channels: int, num_convs: int, group_norm: bool = True,
               gn_groups: int = 32) -> nn.SequentialCell:
    """num_convs x [3x3 conv (normal 0.01), GroupNorm, ReLU]; with group_norm=False (RetinaNet)
    the convs carry a zero-initialised bias instead of the norm."""
    layers = []
    for i in range(num_convs):
        layers.append(_conv3x3(in_channels if i == 0 else feat_channels, feat_channels, bias=not group_norm))
        if group_norm:
            layers.append(nn.GroupNorm(group_norm_groups(feat_channels, gn_groups), feat_channels))
        layers.append(nn.ReLU())
    return nn.SequentialCell(layers) if layers else nn.SequentialCell([nn.Identity()])


def predictor_conv(in_channels: int, out_channels: int, bias_value: float = 0.0) -> nn.Conv2d:
    """A branch's output conv: 3x3, normal(0, 0.01) weights, constant bias."""
    return _conv3x3(in_channels, out_channels, bias=True, bias_value=bias_value)


class Scale(nn.Cell):
    """x * s with one learnable scalar s (init 1.0), as mmcv's Scale."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = Parameter(Tensor(np.array([value], np.float32)), name="scale")

    def construct(self, x: Tensor) -> Tensor:
        return x * self.scale


def check_levels(name: str, in_levels: Sequence[tuple[int, int]]) -> int:
    """All levels must have one channel count (the convs are shared across levels)."""
    if not in_levels:
        raise ValueError(f"{name}: needs at least one input level")
    channels = {int(c) for c, _ in in_levels}
    if len(channels) != 1:
        raise ValueError(f"{name} shares its convs across levels, so every input level needs the same "
                         f"channel count; got {[c for c, _ in in_levels]}")
    return channels.pop()


# ---------------------------------------------------------------------------------------- priors

class LevelPriors(nn.Cell):
    """Per-level anchors of an `AnchorGenerator`, generated in the graph from feature shapes.

    `construct(features)` returns a tuple with one (H_l * W_l * A, 4) float32 tensor of corner
    pixel anchors per level, cells row-major and the A anchors of a cell contiguous: the order
    of `flatten_levels` and of `AnchorGenerator.grid_anchors`, which the data pipeline assigns
    against. Keeping the levels apart gives the per-level counts statically (their shapes).
    """

    def __init__(self, generator: AnchorGenerator):
        super().__init__()
        self.generator = generator
        self.strides = tuple(float(s) for s in generator.strides)
        self.num_levels = len(self.strides)
        self.num_base_anchors = generator.num_base_anchors
        self.base_anchors = tuple(Tensor(generator.base_anchors(level).astype(np.float32))
                                  for level in range(self.num_levels))

    def construct(self, features) -> tuple[Tensor, ...]:
        anchors = ()
        for level in range(self.num_levels):
            h, w = features[level].shape[2], features[level].shape[3]
            stride = self.strides[level]
            xs = ops.arange(0, w, dtype=ms.float32) * stride
            ys = ops.arange(0, h, dtype=ms.float32) * stride
            yy = ops.broadcast_to(ys.reshape(h, 1), (h, w)).reshape(-1)
            xx = ops.broadcast_to(xs.reshape(1, w), (h, w)).reshape(-1)
            shifts = ops.stack([xx, yy, xx, yy], axis=1)                          # (HW, 4)
            level_anchors = shifts.reshape(-1, 1, 4) + self.base_anchors[level].reshape(1, -1, 4)
            anchors += (level_anchors.reshape(-1, 4),)
        return anchors


def level_counts(level_tensors) -> list[int]:
    """Rows of each per-level tensor (static)."""
    return [int(t.shape[0]) for t in level_tensors]


def per_anchor_level_values(level_tensors, values: Sequence[float]) -> Tensor:
    """(N, 1) float32: values[l] for every row of level l (e.g. the stride)."""
    parts = ()
    for level, t in enumerate(level_tensors):
        parts += (ops.fill(ms.float32, (t.shape[0], 1), float(values[level])),)
    return ops.cat(parts, axis=0)


def per_anchor_level_index(level_tensors) -> Tensor:
    """(N,) int32 level index of every row."""
    parts = ()
    for level, t in enumerate(level_tensors):
        parts += (ops.fill(ms.int32, (t.shape[0],), level),)
    return ops.cat(parts, axis=0)


def box_centres(boxes: Tensor) -> Tensor:
    """(..., 4) corner boxes -> (..., 2) centres."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


# ----------------------------------------------------------------------------------- box coding

def delta_encode(anchors: Tensor, boxes: Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """DeltaXYWH encoding (means 0): anchors (N, 4), boxes (..., N, 4) -> deltas (..., N, 4).

        dx = (gx - px) / pw / std0,  dy = (gy - py) / ph / std1,
        dw = log(gw / pw) / std2,    dh = log(gh / ph) / std3
    with (px, py, pw, ph) the anchor's centre and size. Boxes must have positive sides (the
    heads substitute the anchor itself for non-positive rows).
    """
    pc = box_centres(anchors)
    pwh = anchors[..., 2:] - anchors[..., :2]
    gc = box_centres(boxes)
    gwh = boxes[..., 2:] - boxes[..., :2]
    dxy = (gc - pc) / pwh
    dwh = ops.log(gwh / pwh)
    std = Tensor(np.asarray(stds, np.float32))
    return ops.cat((dxy, dwh), axis=-1) / std


def delta_decode(anchors: Tensor, deltas: Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Inverse of `delta_encode`: (N, 4) anchors, (..., N, 4) deltas -> corner boxes.

    dw, dh are clamped to |log(16 / 1000)| as mmdetection (keeps exp finite early in
    training); x1 = cx - w / 2 etc. without the legacy +-0.5.
    """
    std = Tensor(np.asarray(stds, np.float32))
    d = deltas * std
    pc = box_centres(anchors)
    pwh = anchors[..., 2:] - anchors[..., :2]
    dwh = ops.clamp(d[..., 2:], -MAX_LOG_RATIO, MAX_LOG_RATIO)
    centre = pc + d[..., :2] * pwh
    wh = pwh * ops.exp(dwh)
    return ops.cat((centre - 0.5 * wh, centre + 0.5 * wh), axis=-1)


def distance2bbox(points: Tensor, distances: Tensor) -> Tensor:
    """Points (N, 2) and (l, t, r, b) distances (..., N, 4) -> corner boxes (..., N, 4)."""
    return ops.cat((points - distances[..., :2], points + distances[..., 2:]), axis=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_distance: float | None = None) -> Tensor:
    """Corner boxes (..., N, 4) -> (l, t, r, b) from points (N, 2), clamped to [0, max_distance]."""
    d = ops.cat((points - boxes[..., :2], boxes[..., 2:] - points), axis=-1)
    if max_distance is None:
        return d
    return ops.clamp(d, 0.0, float(max_distance))


def integral_distances(logits: Tensor, reg_max: int) -> Tensor:
    """GFL integral regression: (..., 4 * (reg_max + 1)) logits -> (..., 4) expected bin index
    sum_i softmax_i * i (REFERENCE 2.5)."""
    shape = logits.shape[:-1]
    probs = ops.softmax(logits.reshape(shape + (4, reg_max + 1)), axis=-1)
    bins = Tensor(np.arange(reg_max + 1, dtype=np.float32))
    return (probs * bins).sum(-1)


# ------------------------------------------------------------------------------ shared by every head

def init_dense_head(head: nn.Cell, in_levels: Sequence[tuple[int, int]], num_classes: int, feat_channels: int,
                    stacked_convs: int, nms_pre: int, group_norm: bool = True) -> int:
    """Give `head` what every dense head has, under the names checkpoints use; returns the input width.

    num_classes, num_levels, strides, priors (the head's own `anchor_generator` on the level
    strides), cls_convs and reg_convs (towers, in that order: the order parameters are created
    in), nms_pre and device_mean. The head adds its predictor convs, scales and loss weights.
    """
    in_channels = check_levels(type(head).__name__, in_levels)
    head.num_classes = int(num_classes)
    head.num_levels = len(in_levels)
    head.strides = tuple(float(s) for _, s in in_levels)
    head.priors = LevelPriors(head.anchor_generator([s for _, s in in_levels]))
    head.cls_convs = conv_tower(in_channels, feat_channels, stacked_convs, group_norm=group_norm)
    head.reg_convs = conv_tower(in_channels, feat_channels, stacked_convs, group_norm=group_norm)
    head.nms_pre = int(nms_pre)
    head.device_mean = DeviceMean()
    return in_channels


def positive_targets(level_anchors, labels: Tensor, gt_boxes: Tensor, num_classes: int,
                     device_mean: nn.Cell, per_image_count: bool = True):
    """The loss prologue of the dense heads: (anchors, pos, avg_factor, boxes), a plain tuple
    (MindSpore's graph mode does not unpack named tuples returned by functions).

    anchors (N, 4) corner pixels of all levels; pos (B, N) float 1.0 at positives; avg_factor the
    positive count averaged across devices and clamped >= 1; boxes (B, N, 4) the assigned GT at
    positives and the anchor itself elsewhere.

    The positive count is N of REFERENCE 2.3 (sum over images of max(positives, 1)) with
    per_image_count, else the plain number of positives (VFNet). Rows that are not positive
    get their own anchor as the box target, so encodings stay finite (zero deltas, no log(0))
    where the weight is 0.
    """
    anchors = ops.cat(level_anchors, axis=0)
    pos = foreground_mask(labels, num_classes)
    count = batch_positive_count(pos) if per_image_count else pos.sum()
    avg = ops.maximum(device_mean(count), 1.0)
    safe = ops.where(ops.expand_dims(pos > 0, -1), gt_boxes, ops.broadcast_to(anchors, gt_boxes.shape))
    return anchors, pos, avg, safe


# ----------------------------------------------------------------------------------- normalisers

def foreground_mask(labels: Tensor, num_classes: int) -> Tensor:
    """(B, N) float 1.0 where labels is a class in [0, num_classes), else 0."""
    return ops.logical_and(labels >= 0, labels < num_classes).astype(ms.float32)


def batch_positive_count(pos: Tensor) -> Tensor:
    """N of REFERENCE 2.3: sum over images of max(positives in the image, 1); pos (B, N) 0/1."""
    return ops.maximum(pos.sum(1), 1.0).sum()


class DeviceMean(nn.Cell):
    """Mean of a value across data-parallel devices (identity on one device).

    Decided when the head is built, from the parallel context: build the model after
    `set_auto_parallel_context(parallel_mode=DATA_PARALLEL)` (train.py does).
    """

    def __init__(self):
        super().__init__()
        mode = ms.get_auto_parallel_context("parallel_mode")
        self.distributed = mode in ("data_parallel", "hybrid_parallel")
        self.group_size = 1
        if self.distributed:
            from mindspore.communication import get_group_size

            self.group_size = get_group_size()
            self.all_reduce = ops.AllReduce()

    def construct(self, x: Tensor) -> Tensor:
        if self.distributed:
            return self.all_reduce(x) / self.group_size
        return x


# ----------------------------------------------------------------------------------- inference

def topk_per_level(scores: Tensor, boxes: Tensor, counts: Sequence[int], k: int,
                   score_factors: Tensor | None = None) -> tuple[Tensor, ...]:
    """Keep, per level, the k anchors ranked highest (REFERENCE 2.1's pre-NMS top 1000). k <= 0 keeps
    everything. Output sizes are static: sum_l min(k, n_l) candidates per image.

    The rank is the max-over-classes score, or with `score_factors` (ATSS/UMOP centerness) the
    max over classes of score x factor, which is what mmdetection 2.14's ATSS head ranks by. The
    factors are kept apart, not multiplied in: `postprocess.detect` thresholds the class score
    first and multiplies afterwards, as mmdetection's `multiclass_nms(score_factors=...)`.

    scores (B, N, C), boxes (B, N, 4)[, score_factors (B, N)] -> (boxes (B, K, 4), scores (B, K, C)
    [, score_factors (B, K)]).
    """
    rank = scores if score_factors is None else scores * ops.expand_dims(score_factors, -1)
    if k <= 0 or all(n <= k for n in counts):
        return (boxes, scores) if score_factors is None else (boxes, scores, score_factors)
    kept_boxes, kept_scores, kept_factors = (), (), ()
    start = 0
    for n in counts:
        s = scores[:, start:start + n]
        b = boxes[:, start:start + n]
        f = score_factors[:, start:start + n] if score_factors is not None else None
        if n > k:
            _, idx = ops.topk(rank[:, start:start + n].max(axis=-1), k)            # (B, k)
            if f is not None:
                f = ops.gather_elements(f, 1, idx)
            idx = ops.expand_dims(idx, -1)
            s = ops.gather_elements(s, 1, ops.broadcast_to(idx, (idx.shape[0], k, s.shape[2])))
            b = ops.gather_elements(b, 1, ops.broadcast_to(idx, (idx.shape[0], k, 4)))
        kept_boxes += (b,)
        kept_scores += (s,)
        if f is not None:
            kept_factors += (f,)
        start += n
    if score_factors is None:
        return ops.cat(kept_boxes, axis=1), ops.cat(kept_scores, axis=1)
    return ops.cat(kept_boxes, axis=1), ops.cat(kept_scores, axis=1), ops.cat(kept_factors, axis=1)
