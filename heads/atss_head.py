"""ATSS head (focal + GIoU + centerness), and UMOP as the same head with the progressive focal loss.

Per level (convs shared across levels, REFERENCE 2.1):
    cls: 4 x [3x3 conv, GN(32), ReLU] -> 3x3 conv -> C logits (bias -log 99)
    reg: 4 x [3x3 conv, GN(32), ReLU] -> 3x3 conv -> Scale_l -> 4 deltas
                                      -> 3x3 conv -> 1 centerness logit
One square anchor of 8 x stride per cell (`AnchorGenerator.atss`), no half-stride shift.
Deltas are DeltaXYWH with stds (0.1, 0.1, 0.2, 0.2) and are decoded in the graph, because the
box loss is a GIoU on decoded boxes.

Targets (src/data/dense_targets.py, ATSS assignment REFERENCE 2.2): labels (B, N) int32 (-1 =
background) and the assigned GT box (B, N, 4) in input pixels.

Loss (REFERENCE 2.3 / 2.4):
    cls        = focal (alpha .25, gamma 2) / N            [UMOP: progressive focal / N]
    box        = 2.0 * sum(GIoU loss * centerness target) / sum(centerness target)
    centerness = BCE(centerness logit, centerness target) over positives / N
N = sum over images of max(positives in the image, 1); both normalisers are averaged across
devices and clamped >= 1. Test: candidates need sigmoid(cls) > score_threshold; their score is
then sigmoid(cls) * sigmoid(centerness) (mmdetection's multiclass_nms with score_factors).
"""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from heads.anchors import AnchorGenerator
from heads.dense_head_utils import (Scale, box_centres, delta_decode, init_dense_head, level_counts,
                                    per_anchor_level_index, positive_targets, predictor_conv, prior_bias,
                                    topk_per_level)
from heads.losses import (centerness_loss, centerness_target, giou_loss, point_box_distances,
                          progressive_focal_loss, sigmoid_focal_loss)
from heads.utils import flatten_levels

BOX_STDS = (0.1, 0.1, 0.2, 0.2)
CLS_LOSSES = ("focal", "progressive_focal")


class ATSSHead(nn.Cell):
    """ATSS head on the levels `in_levels` [(channels, stride)].

    Args:
        in_levels: the neck's output levels (all with the same channel count).
        num_classes: foreground classes C (sigmoid).
        feat_channels: tower width (256). stacked_convs: convs per tower (4).
        cls_loss: "focal" (ATSS) or "progressive_focal" (UMOP, REFERENCE 2.3).
        nms_pre: test candidates kept per level (1000; 0 = all).
        loss_cls_weight, loss_box_weight, loss_centerness_weight: 1.0, 2.0, 1.0 (REFERENCE 2.4).

    `construct(features)` -> (cls (B, N, C), deltas (B, N, 4), centerness (B, N, 1), *anchors),
    one (N_l, 4) anchor tensor per level. `predict(outputs)` -> (boxes (B, K, 4) input pixels, sigmoid class
    scores (B, K, C), sigmoid centerness (B, K)), the K ranked per level by max class score x centerness.
    """

    loss_names = ("cls", "box", "centerness")
    assigner = "atss"                       # how the data pipeline assigns its targets (REFERENCE 2.2)
    anchor_generator = staticmethod(AnchorGenerator.atss)

    def __init__(self, in_levels: Sequence[tuple[int, int]], num_classes: int, feat_channels: int = 256,
                 stacked_convs: int = 4, cls_loss: str = "focal", nms_pre: int = 1000,
                 loss_cls_weight: float = 1.0, loss_box_weight: float = 2.0, loss_centerness_weight: float = 1.0):
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"ATSSHead cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        init_dense_head(self, in_levels, num_classes, feat_channels, stacked_convs, nms_pre)
        self.atss_cls = predictor_conv(feat_channels, self.num_classes, prior_bias(0.01))
        self.atss_reg = predictor_conv(feat_channels, 4)
        self.atss_centerness = predictor_conv(feat_channels, 1)
        self.scales = nn.CellList([Scale(1.0) for _ in in_levels])
        self.progressive = cls_loss == "progressive_focal"
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_box_weight = float(loss_box_weight)
        self.loss_centerness_weight = float(loss_centerness_weight)

    def construct(self, features):
        cls, reg, ctr = (), (), ()
        for i in range(self.num_levels):
            cls_feat = self.cls_convs(features[i])
            reg_feat = self.reg_convs(features[i])
            cls += (self.atss_cls(cls_feat),)
            reg += (self.scales[i](self.atss_reg(reg_feat)),)
            ctr += (self.atss_centerness(reg_feat),)
        return (flatten_levels(cls, self.num_classes), flatten_levels(reg, 4),
                flatten_levels(ctr, 1)) + self.priors(features)

    def loss(self, outputs, labels: Tensor, gt_boxes: Tensor):
        """(cls, box, centerness) losses; labels (B, N) int32, gt_boxes (B, N, 4) input pixels."""
        cls, deltas, ctr, level_anchors = outputs[0], outputs[1], outputs[2], outputs[3:]
        anchors, pos, avg, safe = positive_targets(level_anchors, labels, gt_boxes, self.num_classes,
                                                   self.device_mean)
        if self.progressive:
            loss_cls = progressive_focal_loss(cls, labels, per_anchor_level_index(level_anchors), self.num_levels,
                                              avg_factor=avg, reduce_levels=self.device_mean)
        else:
            loss_cls = sigmoid_focal_loss(cls, labels, avg_factor=avg)

        pred_boxes = delta_decode(anchors, deltas, BOX_STDS)
        ctr_target = centerness_target(point_box_distances(box_centres(anchors), safe)) * pos
        box_avg = ops.maximum(self.device_mean(ctr_target.sum()), 1.0)
        loss_box = giou_loss(pred_boxes, safe, weight=ctr_target, avg_factor=box_avg)
        loss_ctr = centerness_loss(ctr.squeeze(-1), ctr_target, weight=pos, avg_factor=avg)
        return (self.loss_cls_weight * loss_cls, self.loss_box_weight * loss_box,
                self.loss_centerness_weight * loss_ctr)

    def predict(self, outputs):
        cls, deltas, ctr, level_anchors = outputs[0], outputs[1], outputs[2], outputs[3:]
        boxes = delta_decode(ops.cat(level_anchors, axis=0), deltas, BOX_STDS)
        # the centerness stays a separate output: detect() thresholds the class score, then
        # multiplies (mmdetection's multiclass_nms with score_factors)
        return topk_per_level(ops.sigmoid(cls), boxes, level_counts(level_anchors), self.nms_pre,
                              score_factors=ops.sigmoid(ctr).squeeze(-1))
