"""GIoU loss (REFERENCE 2.3) and aligned IoU / GIoU of corner boxes, in MindSpore ops.

For aligned pairs of corner boxes (x1, y1, x2, y2) a (pred) and b (target):

    I = |a ∩ b|,  U = |a| + |b| - I,  C = area of the smallest box enclosing a and b
    IoU  = I / max(U, eps)
    GIoU = IoU - (C - U) / max(C, eps)
    L    = 1 - GIoU                                   (in [0, 2))

Box areas are (x2 - x1)(y2 - y1) with no "+1" (as `heads.box_ops`); the intersection and the
enclosing box sides are clamped at 0. eps = 1e-6 as in mmdetection. The pairwise (all pairs)
IoU used by the assigners is the NumPy `heads.box_ops.pairwise_iou`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from heads.losses.focal_loss import weighted_sum


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _overlap_union(a, b):
    lt = ops.maximum(a[..., :2], b[..., :2])
    rb = ops.minimum(a[..., 2:], b[..., 2:])
    wh = ops.clamp(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter, _area(a) + _area(b) - inter


def aligned_box_iou(boxes1, boxes2, eps: float = 1e-6):
    """IoU of boxes1[i] with boxes2[i]: (..., 4) x (..., 4) -> (...,)."""
    boxes1 = boxes1.astype(ms.float32)
    boxes2 = boxes2.astype(ms.float32)
    inter, union = _overlap_union(boxes1, boxes2)
    return inter / ops.clamp(union, eps, None)


def aligned_box_giou(boxes1, boxes2, eps: float = 1e-6):
    """Generalised IoU of boxes1[i] with boxes2[i]: (..., 4) x (..., 4) -> (...,) in (-1, 1]."""
    boxes1 = boxes1.astype(ms.float32)
    boxes2 = boxes2.astype(ms.float32)
    inter, union = _overlap_union(boxes1, boxes2)
    union = ops.clamp(union, eps, None)
    lt = ops.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = ops.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.clamp(rb - lt, 0.0, None)
    enclose = ops.clamp(wh[..., 0] * wh[..., 1], eps, None)
    return inter / union - (enclose - union) / enclose


def giou_loss(pred_boxes, target_boxes, weight=None, avg_factor=None, eps: float = 1e-6,
              reduction: str = "sum"):
    """sum((1 - GIoU(pred, target)) * weight) / avg_factor for aligned (..., 4) corner boxes."""
    loss = 1.0 - aligned_box_giou(pred_boxes, target_boxes, eps)
    return weighted_sum(loss, weight, avg_factor, reduction)
