"""Loss functions: pure functions of MindSpore tensors, formulas in each module's docstring.

Sigmoid losses take class labels with background outside [0, C) (canonically -1) and reduce
as sum(elementwise * weight) / avg_factor (mmdetection semantics).
"""
from heads.losses.centerness import centerness_loss, centerness_target, point_box_distances
from heads.losses.distribution_focal_loss import distribution_focal_loss, distribution_focal_loss_elementwise
from heads.losses.focal_loss import (bce_with_logits, one_hot_targets, sigmoid_focal_loss,
                                     sigmoid_focal_loss_elementwise, weighted_sum)
from heads.losses.giou_loss import aligned_box_giou, aligned_box_iou, giou_loss
from heads.losses.multibox_loss import multibox_loss
from heads.losses.progressive_focal_loss import anchor_level_index, progressive_focal_loss, progressive_focal_params
from heads.losses.quality_focal_loss import quality_focal_loss, quality_focal_loss_elementwise
from heads.losses.varifocal_loss import varifocal_loss, varifocal_loss_elementwise, varifocal_targets

__all__ = [
    "aligned_box_giou", "aligned_box_iou", "anchor_level_index", "bce_with_logits",
    "centerness_loss", "centerness_target", "distribution_focal_loss", "distribution_focal_loss_elementwise",
    "giou_loss", "multibox_loss", "one_hot_targets", "point_box_distances", "progressive_focal_loss",
    "progressive_focal_params", "quality_focal_loss", "quality_focal_loss_elementwise", "sigmoid_focal_loss",
    "sigmoid_focal_loss_elementwise", "varifocal_loss", "varifocal_loss_elementwise", "varifocal_targets",
    "weighted_sum",
]
