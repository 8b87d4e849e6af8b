"""GFL head (generalized focal loss: QFL + DFL + GIoU, integral box regression), REFERENCE 2.5.

Per level (convs shared across levels):
    cls: 4 x [3x3 conv, GN(32), ReLU] -> 3x3 conv -> C logits (bias -log 99)
    reg: 4 x [3x3 conv, GN(32), ReLU] -> 3x3 conv -> Scale_l -> 4 x (reg_max + 1) = 68 logits
Each side's distance, in stride units, is the expectation sum_i softmax_i * i over the 17 bins;
the box is anchor centre -/+ distance * stride. The class score is the joint class-quality
(IoU) sigmoid: there is no centerness branch. One square anchor of 8 x stride per cell, used
for the ATSS assignment (in the data pipeline) and for its centre.

Loss (REFERENCE 2.3 / 2.4), everything on the stride-unit grid as the reference:
    cls = QFL(beta 2) with quality target = IoU(decoded box (detached), GT) / N
    box = 2.0 * sum(GIoU loss * w) / sum(w),   w = max_c sigmoid(cls) (detached), positives
    dfl = 0.25 * sum(DFL(side) * w) / 4 / sum(w),   target distance clamped to [0, reg_max - 0.1]
N = sum over images of max(positives in the image, 1); sum(w) averaged across devices,
clamped >= 1.
"""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from heads.anchors import AnchorGenerator
from heads.dense_head_utils import (Scale, bbox2distance, box_centres, distance2bbox, init_dense_head,
                                    integral_distances, level_counts, per_anchor_level_values, positive_targets,
                                    predictor_conv, prior_bias, topk_per_level)
from heads.losses import aligned_box_iou, distribution_focal_loss, giou_loss, quality_focal_loss
from heads.utils import flatten_levels

DFL_TARGET_EPS = 0.1   # target distances stop at reg_max - 0.1 (mmdetection's bbox2distance eps)


class GFLHead(nn.Cell):
    """GFL head on the levels `in_levels` [(channels, stride)].

    Args:
        in_levels: the neck's output levels (all with the same channel count).
        num_classes: foreground classes C (sigmoid).
        feat_channels: tower width (256). stacked_convs: convs per tower (4).
        reg_max: the last distance bin (16 -> 17 bins).
        nms_pre: test candidates kept per level (1000; 0 = all).
        loss_cls_weight, loss_box_weight, loss_dfl_weight: 1.0, 2.0, 0.25 (REFERENCE 2.4).

    `construct(features)` -> (cls (B, N, C), reg (B, N, 4 * (reg_max + 1)), *anchors), one (N_l, 4)
    anchor tensor per level.
    `predict(outputs)` -> (boxes (B, K, 4) input pixels, scores (B, K, C)).
    """

    loss_names = ("cls", "box", "dfl")
    assigner = "atss"                       # how the data pipeline assigns its targets (REFERENCE 2.2)
    anchor_generator = staticmethod(AnchorGenerator.atss)

    def __init__(self, in_levels: Sequence[tuple[int, int]], num_classes: int, feat_channels: int = 256,
                 stacked_convs: int = 4, reg_max: int = 16, nms_pre: int = 1000, loss_cls_weight: float = 1.0,
                 loss_box_weight: float = 2.0, loss_dfl_weight: float = 0.25):
        super().__init__()
        self.reg_max = int(reg_max)
        init_dense_head(self, in_levels, num_classes, feat_channels, stacked_convs, nms_pre)
        self.gfl_cls = predictor_conv(feat_channels, self.num_classes, prior_bias(0.01))
        self.gfl_reg = predictor_conv(feat_channels, 4 * (self.reg_max + 1))
        self.scales = nn.CellList([Scale(1.0) for _ in in_levels])
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_box_weight = float(loss_box_weight)
        self.loss_dfl_weight = float(loss_dfl_weight)

    def construct(self, features):
        cls, reg = (), ()
        for i in range(self.num_levels):
            cls += (self.gfl_cls(self.cls_convs(features[i])),)
            reg += (self.scales[i](self.gfl_reg(self.reg_convs(features[i]))),)
        return (flatten_levels(cls, self.num_classes),
                flatten_levels(reg, 4 * (self.reg_max + 1))) + self.priors(features)

    def loss(self, outputs, labels: Tensor, gt_boxes: Tensor):
        """(cls, box, dfl) losses; labels (B, N) int32, gt_boxes (B, N, 4) input pixels."""
        cls, reg, level_anchors = outputs[0], outputs[1], outputs[2:]
        anchors, pos, avg, safe = positive_targets(level_anchors, labels, gt_boxes, self.num_classes,
                                                   self.device_mean)
        strides = per_anchor_level_values(level_anchors, self.strides)            # (N, 1)
        centres = box_centres(anchors) / strides                                   # stride units

        pred_boxes = distance2bbox(centres, integral_distances(reg, self.reg_max))
        target_boxes = safe / ops.tile(strides, (1, 4))
        quality = aligned_box_iou(ops.stop_gradient(pred_boxes), target_boxes) * pos
        loss_cls = quality_focal_loss(cls, labels, quality, avg_factor=avg)

        weight = ops.stop_gradient(ops.sigmoid(cls).max(axis=-1)) * pos
        box_avg = ops.maximum(self.device_mean(weight.sum()), 1.0)
        loss_box = giou_loss(pred_boxes, target_boxes, weight=weight, avg_factor=box_avg)
        target_dist = bbox2distance(centres, target_boxes, self.reg_max - DFL_TARGET_EPS)
        side_logits = reg.reshape(reg.shape[0], reg.shape[1], 4, self.reg_max + 1)
        loss_dfl = distribution_focal_loss(side_logits, target_dist, weight=ops.expand_dims(weight, -1),
                                           avg_factor=4.0 * box_avg)
        return (self.loss_cls_weight * loss_cls, self.loss_box_weight * loss_box,
                self.loss_dfl_weight * loss_dfl)

    def predict(self, outputs):
        cls, reg, level_anchors = outputs[0], outputs[1], outputs[2:]
        anchors = ops.cat(level_anchors, axis=0)
        strides = per_anchor_level_values(level_anchors, self.strides)
        boxes = distance2bbox(box_centres(anchors), integral_distances(reg, self.reg_max) * strides)
        return topk_per_level(ops.sigmoid(cls), boxes, level_counts(level_anchors), self.nms_pre)
