"""Varifocal loss (VFNet, REFERENCE 2.3), sigmoid per class.

With x the logit, p = sigmoid(x) and q the IoU-aware target (q = IoU of the positive's box with
its GT at the GT class, 0 at every other class and for background anchors):

    VFL(x, q) = BCE(x, q) * w,   w = q                  if q > 0   (iou_weighted)
                                 w = alpha * p^gamma    if q = 0   (alpha 0.75, gamma 2)

(iou_weighted=False uses w = 1 for q > 0.) The IoU is detached and clamped >= 1e-6 when the
dense target is built, so a positive whose box does not overlap its GT still counts as
positive. The negative weight alpha * p^gamma is not detached (as in the reference).
The head divides by max(num_pos, 1): pass it as avg_factor.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from heads.losses.focal_loss import bce_with_logits, one_hot_targets, weighted_sum


def varifocal_targets(labels, ious, num_classes: int, min_iou: float = 1e-6):
    """Dense (..., C) target q: clamp(IoU, min_iou) at the label's class, 0 elsewhere.

    labels (...,) int with background outside [0, C); ious (...,) float, detached here.
    """
    q = ops.clamp(ops.stop_gradient(ious.astype(ms.float32)), min_iou, None)
    return one_hot_targets(labels, num_classes) * ops.expand_dims(q, -1)


def varifocal_loss_elementwise(logits, targets, alpha: float = 0.75, gamma: float = 2.0,
                               iou_weighted: bool = True):
    """Elementwise VFL for logits (..., C) and dense IoU targets q (..., C)."""
    logits = logits.astype(ms.float32)
    targets = targets.astype(ms.float32)
    positive = targets > 0
    pos_weight = targets if iou_weighted else ops.ones_like(targets)
    weight = ops.where(positive, pos_weight, alpha * ops.pow(ops.sigmoid(logits), gamma))
    return bce_with_logits(logits, targets) * weight


def varifocal_loss(logits, labels, ious, weight=None, avg_factor=None, alpha: float = 0.75,
                   gamma: float = 2.0, iou_weighted: bool = True, reduction: str = "sum"):
    """VFL of logits (..., C) given labels (...,) and the positives' IoUs (...,).

    ious of background anchors are ignored. Returns sum(VFL * weight) / avg_factor.
    """
    targets = varifocal_targets(labels, ious, logits.shape[-1])
    loss = varifocal_loss_elementwise(logits, targets, alpha, gamma, iou_weighted)
    return weighted_sum(loss, weight, avg_factor, reduction)
