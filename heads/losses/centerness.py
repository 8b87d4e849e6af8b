"""Centerness target and loss (ATSS / UMOP, REFERENCE 2.4).

For a positive anchor whose centre lies at distances (l, t, r, b) from the left, top, right
and bottom sides of its GT box:

    centerness = sqrt( min(l, r) / max(l, r) * min(t, b) / max(t, b) )     in [0, 1]
    L = BCE(x, centerness) = max(x, 0) - x c + log(1 + exp(-|x|))          (x: the logit)

ATSS positives have their centre strictly inside the GT (every distance > 0.01), where this
is exactly the formula. So that the target can be computed for every anchor with static
shapes, distances are clamped at 0 and a side pair with max 0 gives 0 instead of NaN; the
loss weight of non-positives must then be 0. The target carries no gradient.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from heads.losses.focal_loss import bce_with_logits, weighted_sum


def point_box_distances(points, boxes):
    """(l, t, r, b) from points (..., 2) to the sides of corner boxes (..., 4) -> (..., 4)."""
    return ops.cat((points - boxes[..., :2], boxes[..., 2:] - points), axis=-1)


def centerness_target(distances):
    """Centerness (...,) of (l, t, r, b) distances (..., 4), detached."""
    d = ops.clamp(ops.stop_gradient(distances.astype(ms.float32)), 0.0, None)
    lr_min = ops.minimum(d[..., 0], d[..., 2])
    lr_max = ops.maximum(d[..., 0], d[..., 2])
    tb_min = ops.minimum(d[..., 1], d[..., 3])
    tb_max = ops.maximum(d[..., 1], d[..., 3])
    ratio = ops.where(lr_max > 0, lr_min / ops.clamp(lr_max, 1e-12, None), ops.zeros_like(lr_min)) \
        * ops.where(tb_max > 0, tb_min / ops.clamp(tb_max, 1e-12, None), ops.zeros_like(tb_min))
    return ops.sqrt(ratio)


def centerness_loss(logits, targets, weight=None, avg_factor=None, reduction: str = "sum"):
    """sum(BCE(logits, targets) * weight) / avg_factor; logits and targets (...,)."""
    loss = bce_with_logits(logits.astype(ms.float32), ops.stop_gradient(targets.astype(ms.float32)))
    return weighted_sum(loss, weight, avg_factor, reduction)
