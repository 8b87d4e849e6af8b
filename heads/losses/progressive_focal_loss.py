"""UMOP progressive focal loss (REFERENCE 2.3): a focal loss whose (gamma, alpha) adapt per level.

For every pyramid level l, over the positive anchors i of that level (label y_i in [0, C)):

    c_l     = mean_i -log sigmoid(x_{i, y_i})        (2.0 when the level has no positive)
    c_l     <- reduce(c_l)                           (cross-device mean hook, default identity)
    gamma_l = clamp(c_l, 1.5, 2.5),   alpha_l = 0.5 / gamma_l
    L       = sum_l sum_{i in l, c} FL_{gamma_l, alpha_l}(x_ic, t_ic) * weight / avg_factor

with FL the sigmoid focal loss of `heads.losses.focal_loss`. c_l is detached (stop_gradient):
the parameters steer the loss, they are not trained. A level without positives gets
c = 2.0, i.e. the standard focal loss (gamma 2, alpha 0.25). avg_factor is the global positive
count N of REFERENCE 2.3, as for the focal loss, so this is a drop-in replacement: same arguments
plus a per-anchor level index.

"Averaged across devices" is left to the caller: `reduce_levels` receives the (L,) vector of
per-device c_l (after the 2.0 default) and must return the (L,) cross-device mean, e.g.
`lambda c: all_reduce(c) / group_size` inside the jitted train step. The default is identity
(single device).

Static shapes throughout: the level membership is a one-hot (..., L) mask built from the
level index, so there is no loop over data-dependent sizes (nor over levels).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops

from heads.losses.focal_loss import one_hot_targets, sigmoid_focal_loss_elementwise, weighted_sum

EMPTY_LEVEL_C = 2.0
GAMMA_MIN, GAMMA_MAX = 1.5, 2.5


def _identity(x):
    return x


def anchor_level_index(num_level_anchors: Sequence[int]) -> Tensor:
    """(sum(num_level_anchors),) int32 tensor giving the level of each anchor, in level order."""
    levels = np.repeat(np.arange(len(num_level_anchors), dtype=np.int32), list(num_level_anchors))
    return Tensor(levels, ms.int32)


def progressive_focal_params(logits, labels, level_index, num_levels: int,
                             reduce_levels: Callable = _identity):
    """Per-level (gamma, alpha), each (num_levels,) float32 and detached.

    logits (..., C); labels (...,) with background outside [0, C); level_index int,
    broadcastable to labels' shape (e.g. (A,) for labels (B, A)), values in [0, num_levels).
    """
    logits = logits.astype(ms.float32)
    num_classes = logits.shape[-1]
    targets = one_hot_targets(labels, num_classes)                       # (..., C)
    positive = targets.sum(-1)                                           # (...,) 0 / 1
    # -log sigmoid(x) = log(1 + exp(-x)), written stably
    nll = ops.relu(-logits) + ops.log1p(ops.exp(-ops.abs(logits)))
    pos_nll = (nll * targets).sum(-1)                                    # (...,)
    levels = one_hot_targets(ops.broadcast_to(level_index, positive.shape), num_levels)
    levels = levels.reshape(-1, num_levels)                              # (M, L)
    count = (levels * positive.reshape(-1, 1)).sum(0)                    # (L,)
    total = (levels * pos_nll.reshape(-1, 1)).sum(0)
    c = ops.where(count > 0, total / ops.clamp(count, 1.0, None),
                  ops.full_like(total, EMPTY_LEVEL_C))
    c = ops.stop_gradient(reduce_levels(ops.stop_gradient(c)))
    gamma = ops.clamp(c, GAMMA_MIN, GAMMA_MAX)
    return gamma, 0.5 / gamma


def progressive_focal_loss(logits, labels, level_index, num_levels: int, weight=None,
                           avg_factor=None, reduce_levels: Callable = _identity,
                           reduction: str = "sum"):
    """Progressive focal loss of logits (..., C) against labels (...,); see the module docstring.

    Returns sum(FL_{gamma_l, alpha_l} * weight) / avg_factor, or the (..., C) elementwise loss
    times weight with reduction="none".
    """
    gamma, alpha = progressive_focal_params(logits, labels, level_index, num_levels, reduce_levels)
    level_index = ops.broadcast_to(level_index.astype(ms.int32), labels.shape)
    gamma_a = ops.expand_dims(ops.gather(gamma, level_index, 0), -1)     # (..., 1)
    alpha_a = ops.expand_dims(ops.gather(alpha, level_index, 0), -1)
    targets = one_hot_targets(labels, logits.shape[-1])
    loss = sigmoid_focal_loss_elementwise(logits, targets, alpha_a, gamma_a)
    return weighted_sum(loss, weight, avg_factor, reduction)
