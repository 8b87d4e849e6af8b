"""RetinaNet head (focal loss + L1 on box deltas), on any list of input levels.

Per level (convs shared across levels, mmdetection's RetinaHead):
    cls: 4 x [3x3 conv + ReLU] -> 3x3 conv -> A * C logits (bias -log 99)
    reg: 4 x [3x3 conv + ReLU] -> 3x3 conv -> A * 4 deltas
with A = 9 anchors per cell (3 scales x 3 ratios, `AnchorGenerator.retinanet`). The towers
have no GroupNorm (conv bias instead), as the reference RetinaNet.

Targets (src/data/dense_targets.py, max-IoU: positive >= 0.5, background < 0.4, ignored in
between, every GT's best anchor forced positive): labels (B, N) int32 (class, -1 background,
-2 ignored) and the assigned GT box (B, N, 4) in input pixels.

Loss (REFERENCE 2.3 / 2.4, mmdetection's retinanet_r50_fpn_1x):
    cls = focal(alpha .25, gamma 2) over non-ignored anchors / N
    box = L1(pred deltas, DeltaXYWH(anchor, GT) with means 0, stds (1, 1, 1, 1)) on positives / N
N = sum over images of max(positives in the image, 1), averaged across devices.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from heads.anchors import AnchorGenerator
from heads.dense_head_utils import (delta_decode, delta_encode, init_dense_head, level_counts, positive_targets,
                                    predictor_conv, prior_bias, topk_per_level)
from heads.labels import IGNORE
from heads.losses import sigmoid_focal_loss
from heads.utils import flatten_levels

BOX_STDS = (1.0, 1.0, 1.0, 1.0)


class RetinaHead(nn.Cell):
    """RetinaNet classification and box subnets on the levels `in_levels` [(channels, stride)].

    Args:
        in_levels: the neck's output levels (all with the same channel count).
        num_classes: foreground classes C (sigmoid, no background column).
        feat_channels: tower width (256).
        stacked_convs: convs per tower (4).
        nms_pre: test-time candidates kept per level before NMS (REFERENCE 2.1: 1000; 0 = all).
        loss_cls_weight, loss_box_weight: 1.0 and 1.0.

    `construct(features)` -> (cls (B, N, C), deltas (B, N, 4), *anchors) with one (N_l, 4) anchor
    tensor per level (a flat tuple: generic code may map over the outputs).
    `predict(outputs)` -> (boxes (B, K, 4) input pixels, sigmoid scores (B, K, C)).
    """

    loss_names = ("cls", "box")
    assigner = "max_iou"                    # how the data pipeline assigns its targets
    anchor_generator = staticmethod(AnchorGenerator.retinanet)

    def __init__(self, in_levels: Sequence[tuple[int, int]], num_classes: int, feat_channels: int = 256,
                 stacked_convs: int = 4, nms_pre: int = 1000, loss_cls_weight: float = 1.0,
                 loss_box_weight: float = 1.0):
        super().__init__()
        init_dense_head(self, in_levels, num_classes, feat_channels, stacked_convs, nms_pre, group_norm=False)
        a = self.priors.num_base_anchors
        self.retina_cls = predictor_conv(feat_channels, a * self.num_classes, prior_bias(0.01))
        self.retina_reg = predictor_conv(feat_channels, a * 4)
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_box_weight = float(loss_box_weight)

    def construct(self, features):
        cls, reg = (), ()
        for i in range(self.num_levels):
            cls += (self.retina_cls(self.cls_convs(features[i])),)
            reg += (self.retina_reg(self.reg_convs(features[i])),)
        return (flatten_levels(cls, self.num_classes), flatten_levels(reg, 4)) + self.priors(features)

    def loss(self, outputs, labels: Tensor, gt_boxes: Tensor):
        """(cls, box) losses; labels (B, N) int32, gt_boxes (B, N, 4) input pixels."""
        cls, deltas, level_anchors = outputs[0], outputs[1], outputs[2:]
        anchors, pos, avg, safe = positive_targets(level_anchors, labels, gt_boxes, self.num_classes,
                                                   self.device_mean)
        not_ignored = (labels != IGNORE).astype(ms.float32)
        loss_cls = sigmoid_focal_loss(cls, labels, weight=not_ignored, avg_factor=avg)
        target = ops.stop_gradient(delta_encode(anchors, safe, BOX_STDS))
        loss_box = (ops.abs(deltas - target).sum(-1) * pos).sum() / avg
        return self.loss_cls_weight * loss_cls, self.loss_box_weight * loss_box

    def predict(self, outputs):
        cls, deltas, level_anchors = outputs[0], outputs[1], outputs[2:]
        boxes = delta_decode(ops.cat(level_anchors, axis=0), deltas, BOX_STDS)
        return topk_per_level(ops.sigmoid(cls), boxes, level_counts(level_anchors), self.nms_pre)
