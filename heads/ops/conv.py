"""The PyTorch-style convolution every network part is built from (explicit symmetric padding)."""
from __future__ import annotations

import mindspore.nn as nn


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
           dilation: int = 1, bias: bool = False, weight_init=None, bias_init=None,
           groups: int = 1) -> nn.Conv2d:
    """A PyTorch-style Conv2d (explicit symmetric padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad", padding=padding,
                     dilation=dilation, group=groups, has_bias=bias, weight_init=weight_init,
                     bias_init=bias_init if bias else None)
