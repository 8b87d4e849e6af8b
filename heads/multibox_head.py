"""SSD/M2Det multibox head: one 3x3 conv per level for box offsets, one for class logits."""
from __future__ import annotations

import math
from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor
from mindspore.common.initializer import HeUniform

from heads.losses.multibox_loss import multibox_loss
from heads.utils import flatten_levels


class MultiBoxHead(nn.Cell):
    """Per level: loc = Conv3x3(ch -> A*4), conf = Conv3x3(ch -> A*(num_classes + 1)) (REFERENCE 1.6).

    `construct(features)` takes the neck's maps (in `in_levels` order) and returns
    loc (B, P, 4) (SSD offsets, see heads.box_coder.SSDBoxCoder) and conf (B, P, num_classes + 1)
    raw logits, column 0 = background and class label L in column L + 1 (heads/labels.py);
    P = sum over levels of H * W * A, ordered as the priors.

    Args:
        in_levels: [(channels, stride)] of the input maps, e.g. the neck's `output_levels`.
        num_anchors: anchors (priors) per cell for each level (SSDPriors.num_anchors()).
        num_classes: object classes C, background not counted (the softmax has C + 1 columns).
        neg_pos_ratio, empty_image_negatives: hard-negative mining of the loss
            (heads/losses/multibox_loss.py).

    Init as the reference: weights keep PyTorch's default law (kaiming-uniform, a=sqrt(5)),
    biases are zero.
    """

    def __init__(self, in_levels: Sequence[tuple[int, int]], num_anchors: Sequence[int], num_classes: int,
                 neg_pos_ratio: int = 3, empty_image_negatives: int = 0):
        super().__init__()
        if len(num_anchors) != len(in_levels):
            raise ValueError(f"MultiBoxHead: {len(in_levels)} input levels but num_anchors has "
                             f"{len(num_anchors)} entries {list(num_anchors)}")
        if num_classes < 1:
            raise ValueError(f"MultiBoxHead needs num_classes >= 1 (object classes), got {num_classes}")
        self.loc_convs = nn.CellList([self._conv(ch, a * 4) for (ch, _), a in zip(in_levels, num_anchors)])
        self.num_classes = int(num_classes)
        self.num_columns = self.num_classes + 1     # column 0 is background (heads/labels.py)
        self.conf_convs = nn.CellList([self._conv(ch, a * self.num_columns)
                                       for (ch, _), a in zip(in_levels, num_anchors)])
        self.num_anchors = tuple(num_anchors)
        self.num_levels = len(in_levels)
        self.softmax = nn.Softmax(axis=-1)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.empty_image_negatives = int(empty_image_negatives)

    @staticmethod
    def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
        return nn.Conv2d(in_channels, out_channels, 3, pad_mode="pad", padding=1, has_bias=True,
                         weight_init=HeUniform(math.sqrt(5)), bias_init="zeros")

    def construct(self, features: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        loc = ()
        conf = ()
        for i in range(self.num_levels):
            loc += (self.loc_convs[i](features[i]),)
            conf += (self.conf_convs[i](features[i]),)
        return flatten_levels(loc, 4), flatten_levels(conf, self.num_columns)

    def predict(self, outputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Inference outputs: loc offsets (B, P, 4) and softmax scores (B, P, C + 1), column 0 background."""
        loc, conf = outputs
        return loc, self.softmax(conf)

    loss_names = ("loc", "conf")

    def loss(self, outputs: tuple[Tensor, Tensor], loc_t: Tensor, conf_t: Tensor) -> tuple[Tensor, Tensor]:
        """(loc_loss, conf_loss) of raw outputs against per-prior targets (REFERENCE 1.8).

        loc_t (B, P, 4) are SSD-encoded offsets, conf_t (B, P) class indices with 0 =
        background (src/data/targets.py builds both in the data pipeline).
        """
        loc, conf = outputs
        return multibox_loss(loc, conf, loc_t, conf_t, self.neg_pos_ratio, self.empty_image_negatives)
