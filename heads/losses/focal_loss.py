"""Sigmoid focal loss (REFERENCE 2.3), plus the label / reduction helpers every sigmoid loss uses.

Per anchor i and class c, with x the logit, p = sigmoid(x) and t in {0, 1} the one-hot target:

    p_t     = p if t = 1 else 1 - p
    alpha_t = alpha if t = 1 else 1 - alpha
    FL(x, t) = -alpha_t (1 - p_t)^gamma log p_t          (alpha 0.25, gamma 2)

computed as alpha_t (1 - p_t)^gamma BCE(x, t) with the logit form of the binary cross-entropy,
    BCE(x, t) = max(x, 0) - x t + log(1 + exp(-|x|)),
and 1 - p_t taken as sigmoid(-x) / sigmoid(x) rather than 1 - sigmoid(.), so that neither
log(0) nor catastrophic cancellation appears for large |x|. The focal weight is not detached.

Conventions shared by every sigmoid loss in this package:
- Labels are class indices (...,) int; labels in [0, C) are foreground, any other value is
  background (an all-zero target row): `heads.labels.BACKGROUND` / `IGNORE` as the data
  pipeline writes them, and mmdetection's "background = C" works unchanged.
- Reduction follows mmdetection: loss = sum(elementwise * weight) / avg_factor. `weight` may
  have fewer dimensions than the elementwise loss (e.g. (N,) per anchor for an (N, C) loss);
  it is broadcast over the trailing ones. `reduction="none"` returns elementwise * weight.
- Only static shapes and masks (no boolean indexing), so everything compiles in GRAPH mode.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def one_hot_targets(labels, num_classes: int):
    """(...,) int labels -> (..., num_classes) float32 one-hot; labels outside [0, C) -> zeros."""
    classes = ops.arange(0, num_classes, dtype=ms.int32)
    return ops.equal(ops.expand_dims(labels.astype(ms.int32), -1), classes).astype(ms.float32)


def weighted_sum(loss, weight=None, avg_factor=None, reduction: str = "sum"):
    """sum(loss * weight) / avg_factor ("sum"), or loss * weight elementwise ("none").

    weight: None or broadcastable to `loss` after appending trailing axes of size 1.
    avg_factor: None (no division) or a positive scalar / 0-d tensor; the heads pass the
    normaliser of REFERENCE 2.3 / 2.4 already clamped >= 1.
    """
    if weight is not None:
        weight = weight.astype(loss.dtype)
        for _ in range(loss.ndim - weight.ndim):
            weight = ops.expand_dims(weight, -1)
        loss = loss * weight
    if reduction == "none":
        if avg_factor is not None:
            raise ValueError("avg_factor only applies to reduction='sum'")
        return loss
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    total = loss.sum()
    if avg_factor is not None:
        total = total / avg_factor
    return total


def bce_with_logits(logits, targets):
    """Elementwise BCE(x, t) = max(x, 0) - x t + log(1 + exp(-|x|)); t may be soft."""
    return ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def sigmoid_focal_loss_elementwise(logits, targets, alpha=0.25, gamma=2.0):
    """Elementwise focal loss for logits (..., C) and binary dense targets (..., C).

    alpha and gamma are Python floats or tensors broadcastable to the logits (the progressive
    focal loss passes per-anchor (..., 1) tensors).
    """
    logits = logits.astype(ms.float32)
    targets = targets.astype(ms.float32)
    one_minus_pt = targets * ops.sigmoid(-logits) + (1.0 - targets) * ops.sigmoid(logits)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return alpha_t * ops.pow(one_minus_pt, gamma) * bce_with_logits(logits, targets)


def sigmoid_focal_loss(logits, labels, weight=None, avg_factor=None, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "sum"):
    """Focal loss of logits (..., C) against class labels (...,) (background: outside [0, C)).

    Returns sum(FL * weight) / avg_factor (see the module docstring), or the (..., C)
    elementwise loss times weight with reduction="none".
    """
    targets = one_hot_targets(labels, logits.shape[-1])
    loss = sigmoid_focal_loss_elementwise(logits, targets, alpha, gamma)
    return weighted_sum(loss, weight, avg_factor, reduction)
