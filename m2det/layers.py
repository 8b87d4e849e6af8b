"""Small building blocks shared by the M2Det backbone and neck."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import HeNormal

from heads.ops.conv import conv2d

# PyTorch BatchNorm momentum 0.01 (weight of the new batch) = MindSpore 0.99 (weight of the old value):
# the reference's BasicConv
BN_MOMENTUM = 0.99
# PyTorch's default momentum 0.1: the reference's plain nn.BatchNorm2d layers (torchvision ResNet, and
# the BatchNorm on the largest scale) keep it, so their running statistics move 10x faster
TORCH_DEFAULT_BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def kaiming_normal_fan_out():
    """The official M2Det init for convolutions inside BasicConv: kaiming_normal_(mode='fan_out')."""
    return HeNormal(negative_slope=0, mode="fan_out", nonlinearity="relu")


NORMS = ("bn", "gn")
GN_GROUPS = 16


def group_count(channels: int, max_groups: int = GN_GROUPS) -> int:
    """The largest group count <= max_groups that divides `channels` (GroupNorm needs one)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class BasicConv(nn.Cell):
    """Conv2d (no bias) -> norm -> ReLU, as the M2Det reference's BasicConv.

    norm: "bn" (the reference: BatchNorm2d, attribute `bn`) or "gn" (GroupNorm with
    `group_count(out_channels)` groups, attribute `gn`): normalises each image on its own, so
    training and inference compute the same function whatever the batch (see MLFPN `tum_norm`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, norm: str = "bn"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"BasicConv norm must be one of {NORMS}, got {norm!r}")
        self.conv = conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                           weight_init=kaiming_normal_fan_out())
        self.use_bn = norm == "bn"
        if self.use_bn:
            self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        else:
            self.gn = nn.GroupNorm(group_count(out_channels), out_channels, eps=BN_EPS)
        self.relu = nn.ReLU()

    def construct(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x) if self.use_bn else self.gn(x)
        return self.relu(x)


def nearest_resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of NCHW `x` to `size` (h, w).

    Source index = floor(dst * in / out), the same as PyTorch's
    `F.interpolate(mode='nearest')`, which the reference TUM and FFMv1 use
    (tests/test_torch_parity.py pins the equality, including non-integer ratios such as 3 -> 5).
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return ops.interpolate(x, size=tuple(size), mode="nearest")


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis (PyTorch's formula)."""
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch: the last window must start inside the input or the left padding
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def to_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int side or an (h, w) pair -> (h, w)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)
