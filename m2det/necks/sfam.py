"""Scale-wise feature aggregation module (SFAM) of M2Det (REFERENCE 1.6)."""
from __future__ import annotations

import math

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import HeUniform, Uniform


class SFAM(nn.Cell):
    """Channel attention per scale: x * sigmoid(expand(relu(squeeze(avgpool(x))))).

    As in the reference, the two 1x1 convs are shared by all scales (2 * 2048 * 128 + 128 +
    2048 = 526,464 parameters at 2048 channels). Off in every shipped config.

    Args:
        channels: channels of every scale (planes * num_levels).
        reduction: squeeze ratio (reference 16).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        # the reference leaves these convs at PyTorch's default init; this is the same law
        self.squeeze = nn.Conv2d(channels, hidden, 1, has_bias=True, weight_init=HeUniform(math.sqrt(5)),
                                 bias_init=Uniform(1 / math.sqrt(channels)))
        self.expand = nn.Conv2d(hidden, channels, 1, has_bias=True, weight_init=HeUniform(math.sqrt(5)),
                                bias_init=Uniform(1 / math.sqrt(hidden)))
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def construct(self, features: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        outs = ()
        for x in features:
            weight = ops.mean(x, axis=(2, 3), keep_dims=True)
            weight = self.sigmoid(self.expand(self.relu(self.squeeze(weight))))
            outs += (x * weight,)
        return outs
