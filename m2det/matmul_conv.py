"""Unpadded convolutions that are matrix products, computed as MatMuls for CPU training (issue 18 item 3).

    1x1, stride 1, no padding:         y[n] = W (K, C) @ x[n] (C, H*W)
    k x k, no padding, input k x k:    y[n] = W (K, C*k*k) @ x[n] (C*k*k)     (a 1 x 1 output)

MindSpore 2.8's CPU convolution backward (oneDNN 2.2 gemm:jit) costs several milliseconds per
call even when the layer is tiny; M2Det-lite's TUMs have twenty 1x1 convolutions on 1-24 px maps
and four 3x3 convolutions on 3x3 maps (the encoders' last level), where this is most of the
work. Written as MatMuls, forward and backward are MindSpore's matrix kernels (docs/SPEED.md).

`use_matmul_conv(network, max_channels)` swaps, in place, the eligible convolutions (`eligible`)
whose wider side has at most `max_channels` channels, sharing the weight and bias Parameters
(checkpoints and names unchanged). A k x k convolution whose input turns out larger than its
kernel runs the original convolution operator (decided when the graph is compiled).
"""
from __future__ import annotations

import mindspore.nn as nn
import mindspore.ops as ops
from m2det.cells import replace_child, walk


class MatmulConv2d(nn.Cell):
    """The convolution `conv` (an eligible nn.Conv2d) computed as a matrix product, with its
    weight and bias Parameters."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.has_bias = bool(conv.has_bias)
        self.bias = conv.bias if conv.has_bias else None
        self.out_channels, self.in_channels = int(conv.out_channels), int(conv.in_channels)
        self.kernel_size = tuple(conv.kernel_size)
        self.pointwise = self.kernel_size == (1, 1)
        self.conv2d = conv.conv2d            # the original operator, for inputs larger than the kernel
        self.bias_add = ops.BiasAdd()

    def construct(self, x):
        n, c, h, w = x.shape
        if self.pointwise:
            y = ops.matmul(self.weight.reshape(self.out_channels, c), x.reshape(n, c, h * w))
            y = y.reshape(n, self.out_channels, h, w)
        elif (h, w) == self.kernel_size:
            y = ops.matmul(x.reshape(n, c * h * w), self.weight.reshape(self.out_channels, c * h * w).T)
            y = y.reshape(n, self.out_channels, 1, 1)
        else:
            y = self.conv2d(x, self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return y


def eligible(conv: nn.Cell, max_channels: int) -> bool:
    """Whether `conv` is an unpadded, one-group, undilated NCHW convolution with at most
    `max_channels` input and output channels that is 1x1 / stride 1 or larger than 1x1 (then it
    is a matrix product on inputs of the kernel's size)."""
    if not isinstance(conv, nn.Conv2d) or conv.data_format != "NCHW":
        return False
    padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4
    kernel = tuple(conv.kernel_size)
    unpadded = conv.pad_mode == "valid" or (conv.pad_mode == "pad" and set(padding) == {0}) or (
        conv.pad_mode == "same" and kernel == (1, 1))
    shape_ok = (kernel == (1, 1) and tuple(conv.stride) == (1, 1)) or kernel != (1, 1)
    return (unpadded and shape_ok and conv.group == 1 and tuple(conv.dilation) == (1, 1)
            and max(conv.in_channels, conv.out_channels) <= max_channels)


def use_matmul_conv(network: nn.Cell, max_channels: int) -> list[str]:
    """Replace every eligible convolution of `network` in place, sharing its Parameters;
    returns their paths."""
    paths = {id(c): n for n, c in network.cells_and_names()}
    replaced = []
    for parent, name, child in walk(network):
        if eligible(child, max_channels):
            replace_child(parent, name, MatmulConv2d(child))
            replaced.append(paths[id(child)])
    return replaced

