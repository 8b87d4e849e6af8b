"""VFNet head: IoU-aware classification (varifocal loss), star-shaped deformable conv, initial +
refined boxes (REFERENCE 2.6).

Per level (convs shared across levels):
    cls_feat = 3 x [3x3 conv, GN(32), ReLU](x);  reg_feat = 3 x [3x3 conv, GN(32), ReLU](x)
    initial box: [3x3 conv, GN, ReLU] -> 3x3 conv -> Scale_l -> exp * reg_denom_l  (l, t, r, b) px
    star offsets: from (l, t, r, b) (gradient x 0.1) / stride, kernel point k samples at
        (-t,-l) (-t,0) (-t,r) / (0,-l) (0,0) (0,r) / (b,-l) (b,0) (b,r)
    refined box: ReLU(DCN_reg(reg_feat)) -> 3x3 conv -> Scale'_l -> exp * initial box (detached)
    cls: ReLU(DCN_cls(cls_feat)) -> 3x3 conv -> C logits (bias -log 99)
reg_denom_l = 8 x stride_l, i.e. mmdetection's [64, 128, 256, 512, 1024] for strides 8..128.
Points are the cell positions (x * stride, y * stride): the centres of the ATSS anchors used to
assign targets (mmdetection's use_atss with anchor centre offset 0).

The deformable convs are `heads.ops.DeformConv2d`, DCN v1 behaviour through the modulated op
with every mask value 1; offsets in mmcv's interleaved (dy, dx) layout (the cell converts).

Loss (REFERENCE 2.3 / 2.4):
    cls    = varifocal(q = IoU(refined box, GT) at the GT class) / max(num_pos, 1)
    box    = 1.5 * sum(GIoU(initial) * IoU_init) / sum(IoU_init)
    refine = 2.0 * sum(GIoU(refined) * IoU_rf) / sum(IoU_rf)
with IoUs detached and clamped >= 1e-6, normalisers averaged across devices and clamped >= 1.
Test: sigmoid scores with the refined boxes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import Normal

from heads.anchors import AnchorGenerator
from heads.dense_head_utils import (Scale, box_centres, conv_tower, distance2bbox, init_dense_head, level_counts,
                                    positive_targets, predictor_conv, prior_bias, topk_per_level)
from heads.losses import aligned_box_iou, giou_loss, varifocal_loss
from heads.utils import flatten_levels
from heads.ops.deform_conv import DeformConv2d

MIN_IOU = 1e-6


def star_base_offsets() -> np.ndarray:
    """(18,) the regular 3x3 grid positions, interleaved (dy, dx) per kernel point (row-major)."""
    ky, kx = np.divmod(np.arange(9), 3)
    return np.stack([ky - 1, kx - 1], axis=1).reshape(-1).astype(np.float32)


def star_dcn_offset(distances: Tensor, stride: float, gradient_mul: float = 0.1) -> Tensor:
    """(B, 4, H, W) (l, t, r, b) pixels -> (B, 18, H, W) mmcv-layout DCN offsets (REFERENCE 2.6).

    Kernel point k = 3 * ky + kx samples at (dy, dx) = star position - its grid position, the
    star positions being the corners, edge midpoints and centre of the box in stride units.
    Only `gradient_mul` of the gradient flows back into the box prediction.
    """
    d = (1.0 - gradient_mul) * ops.stop_gradient(distances) + gradient_mul * distances
    d = d / stride
    left, top, right, bottom = d[:, 0:1], d[:, 1:2], d[:, 2:3], d[:, 3:4]
    zero = ops.zeros_like(left)
    rows = (-top, zero, bottom)
    cols = (-left, zero, right)
    parts = ()
    for ky in range(3):
        for kx in range(3):
            parts += (rows[ky], cols[kx])
    base = Tensor(star_base_offsets().reshape(1, 18, 1, 1))
    return ops.cat(parts, axis=1) - base


class VFNetHead(nn.Cell):
    """VFNet head on the levels `in_levels` [(channels, stride)].

    Args:
        in_levels: the neck's output levels (all with the same channel count).
        num_classes: foreground classes C (sigmoid).
        feat_channels: tower width (256). stacked_convs: convs per tower (3).
        gradient_mul: share of the star offsets' gradient reaching the initial box (0.1).
        nms_pre: test candidates kept per level (1000; 0 = all).
        loss_cls_weight, loss_box_weight, loss_refine_weight: 1.0, 1.5, 2.0 (REFERENCE 2.4).

    `construct(features)` -> (cls (B, N, C), initial (B, N, 4), refined (B, N, 4) (l, t, r, b)
    pixels, *anchors), one (N_l, 4) anchor tensor per level. `predict(outputs)` -> (boxes (B, K, 4) pixels, scores (B, K, C)).
    """

    loss_names = ("cls", "box", "box_refine")
    assigner = "atss"                       # how the data pipeline assigns its targets (REFERENCE 2.2)
    anchor_generator = staticmethod(AnchorGenerator.atss)

    def __init__(self, in_levels: Sequence[tuple[int, int]], num_classes: int, feat_channels: int = 256,
                 stacked_convs: int = 3, gradient_mul: float = 0.1, nms_pre: int = 1000,
                 loss_cls_weight: float = 1.0, loss_box_weight: float = 1.5, loss_refine_weight: float = 2.0):
        super().__init__()
        init_dense_head(self, in_levels, num_classes, feat_channels, stacked_convs, nms_pre)
        self.reg_denoms = tuple(8.0 * s for s in self.strides)
        self.vfnet_reg_conv = conv_tower(feat_channels, feat_channels, 1)
        self.vfnet_reg = predictor_conv(feat_channels, 4)
        self.scales = nn.CellList([Scale(1.0) for _ in in_levels])
        self.vfnet_reg_refine_dconv = DeformConv2d(feat_channels, feat_channels, 3, 1, 1, modulated=True,
                                                   weight_init=Normal(0.01))
        self.vfnet_reg_refine = predictor_conv(feat_channels, 4)
        self.scales_refine = nn.CellList([Scale(1.0) for _ in in_levels])
        self.vfnet_cls_dconv = DeformConv2d(feat_channels, feat_channels, 3, 1, 1, modulated=True,
                                            weight_init=Normal(0.01))
        self.vfnet_cls = predictor_conv(feat_channels, self.num_classes, prior_bias(0.01))
        self.relu = nn.ReLU()
        self.gradient_mul = float(gradient_mul)
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_box_weight = float(loss_box_weight)
        self.loss_refine_weight = float(loss_refine_weight)

    def construct(self, features):
        cls, init, refine = (), (), ()
        for i in range(self.num_levels):
            cls_feat = self.cls_convs(features[i])
            reg_feat = self.reg_convs(features[i])
            box = ops.exp(self.scales[i](self.vfnet_reg(self.vfnet_reg_conv(reg_feat)))) * self.reg_denoms[i]
            offset = star_dcn_offset(box, self.strides[i], self.gradient_mul)
            mask = ops.ones((offset.shape[0], 9, offset.shape[2], offset.shape[3]), offset.dtype)
            reg_feat = self.relu(self.vfnet_reg_refine_dconv(reg_feat, offset, mask))
            box_refine = ops.exp(self.scales_refine[i](self.vfnet_reg_refine(reg_feat))) * ops.stop_gradient(box)
            cls_feat = self.relu(self.vfnet_cls_dconv(cls_feat, offset, mask))
            cls += (self.vfnet_cls(cls_feat),)
            init += (box,)
            refine += (box_refine,)
        return (flatten_levels(cls, self.num_classes), flatten_levels(init, 4),
                flatten_levels(refine, 4)) + self.priors(features)

    def loss(self, outputs, labels: Tensor, gt_boxes: Tensor):
        """(cls, box, box_refine) losses; labels (B, N) int32, gt_boxes (B, N, 4) input pixels."""
        cls, init, refine, level_anchors = outputs[0], outputs[1], outputs[2], outputs[3:]
        anchors, pos, num_pos, safe = positive_targets(level_anchors, labels, gt_boxes, self.num_classes,
                                                       self.device_mean, per_image_count=False)
        points = box_centres(anchors)

        init_boxes = distance2bbox(points, init)
        iou_init = ops.stop_gradient(ops.clamp(aligned_box_iou(init_boxes, safe), MIN_IOU, None)) * pos
        avg_init = ops.maximum(self.device_mean(iou_init.sum()), 1.0)
        loss_box = giou_loss(init_boxes, safe, weight=iou_init, avg_factor=avg_init)

        refine_boxes = distance2bbox(points, refine)
        iou_rf = ops.stop_gradient(ops.clamp(aligned_box_iou(refine_boxes, safe), MIN_IOU, None)) * pos
        avg_rf = ops.maximum(self.device_mean(iou_rf.sum()), 1.0)
        loss_refine = giou_loss(refine_boxes, safe, weight=iou_rf, avg_factor=avg_rf)

        loss_cls = varifocal_loss(cls, labels, iou_rf, avg_factor=num_pos)
        return (self.loss_cls_weight * loss_cls, self.loss_box_weight * loss_box,
                self.loss_refine_weight * loss_refine)

    def predict(self, outputs):
        cls, refine, level_anchors = outputs[0], outputs[2], outputs[3:]
        boxes = distance2bbox(box_centres(ops.cat(level_anchors, axis=0)), refine)
        return topk_per_level(ops.sigmoid(cls), boxes, level_counts(level_anchors), self.nms_pre)
