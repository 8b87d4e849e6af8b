"""Quality focal loss (GFL, REFERENCE 2.3), sigmoid per class.

With x the logit, p = sigmoid(x), s in [0, 1] the quality (IoU) target of a positive:

    QFL = BCE(x, 0) * p^beta             at every class of a background anchor and at the
                                         non-GT classes of a positive
    QFL = BCE(x, s) * |s - p|^beta       at the GT class of a positive        (beta 2)

Both cases are BCE(x, t) * |t - p|^beta with the dense target t = s at the GT class and 0
elsewhere, which is how it is computed (static shapes, no scatter). The result is summed over
classes, so the elementwise loss is per anchor (...,), like the reference; `weight` is per
anchor. s is detached. The head divides by N (REFERENCE 2.3): pass it as avg_factor.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from heads.losses.focal_loss import bce_with_logits, one_hot_targets, weighted_sum


def quality_focal_loss_elementwise(logits, labels, scores, beta: float = 2.0):
    """Per-anchor QFL (...,) for logits (..., C), labels (...,) and scores (...,)."""
    logits = logits.astype(ms.float32)
    s = ops.stop_gradient(scores.astype(ms.float32))
    targets = one_hot_targets(labels, logits.shape[-1]) * ops.expand_dims(s, -1)
    modulator = ops.pow(ops.abs(targets - ops.sigmoid(logits)), beta)
    return (bce_with_logits(logits, targets) * modulator).sum(-1)


def quality_focal_loss(logits, labels, scores, weight=None, avg_factor=None, beta: float = 2.0,
                       reduction: str = "sum"):
    """QFL of logits (..., C) given labels (...,) (background outside [0, C)) and the
    positives' quality targets (...,) (ignored for background).

    Returns sum(QFL * weight) / avg_factor, or the per-anchor (...,) loss times weight.
    """
    loss = quality_focal_loss_elementwise(logits, labels, scores, beta)
    return weighted_sum(loss, weight, avg_factor, reduction)
