"""Distribution focal loss (GFL, REFERENCE 2.3 / 2.5).

Each box side is predicted as a discrete distribution over reg_max + 1 = 17 bins (logits z,
bin i = distance i in stride units). For a target distance y in [0, reg_max - 0.1]:

    yl = floor(y),  yr = yl + 1
    DFL(z, y) = CE(z, yl) * (yr - y) + CE(z, yr) * (y - yl),   CE(z, i) = logsumexp(z) - z_i

i.e. the cross-entropy against the two bins bracketing y, weighted by linear interpolation.
yl is clamped to [0, reg_max - 1] so that y = reg_max exactly is still valid (all its weight
then goes to the last bin); y must lie in [0, reg_max] (the head clamps to reg_max - 0.1).
The loss weight (0.25) and normaliser belong to the head.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from heads.losses.focal_loss import weighted_sum


def _bin_cross_entropy(logits, bins):
    picked = ops.gather_elements(logits, -1, ops.expand_dims(bins, -1)).squeeze(-1)
    return ops.logsumexp(logits, -1) - picked


def distribution_focal_loss_elementwise(logits, targets):
    """DFL (...,) for logits (..., reg_max + 1) and target distances (...,)."""
    logits = logits.astype(ms.float32)
    y = ops.stop_gradient(targets.astype(ms.float32))
    num_bins = logits.shape[-1]
    left = ops.clamp(ops.floor(y), 0.0, float(num_bins - 2))
    right = left + 1.0
    loss_left = _bin_cross_entropy(logits, left.astype(ms.int32)) * (right - y)
    loss_right = _bin_cross_entropy(logits, right.astype(ms.int32)) * (y - left)
    return loss_left + loss_right


def distribution_focal_loss(logits, targets, weight=None, avg_factor=None, reduction: str = "sum"):
    """sum(DFL * weight) / avg_factor for logits (..., reg_max + 1) and targets (...,)."""
    loss = distribution_focal_loss_elementwise(logits, targets)
    return weighted_sum(loss, weight, avg_factor, reduction)
