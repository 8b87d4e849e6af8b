"""Deformable convolution (DCNv1 / DCNv2) taking offsets in mmcv's layout, on `ops.deformable_conv2d`.

Offset layout (verified numerically in tests/test_deform_conv.py):

    mmcv / torchvision  offset (N, 2*G*K, Ho, Wo): channel 2*(g*K + k) is dy, 2*(g*K + k) + 1 is dx
                        mask   (N, G*K, Ho, Wo):   channel g*K + k
    MindSpore           offsets (N, 3*G*K, Ho, Wo) = [dx block | dy block | mask block],
                        each block G*K channels in the same (g, k) order

with G the deformable groups, K = kh*kw and k = ky*kw + kx (kernel points row-major). Kernel point
k of output (i, j) samples the input at
    (i*stride - pad + ky*dilation + dy,  j*stride - pad + kx*dilation + dx)
bilinearly, with zeros outside the input (a corner outside contributes nothing), as mmcv does.

`ops.deformable_conv2d` in MindSpore 2.8 (an "experimental" API) is DeformableOffsets, which gathers
the (N, C, Ho*kh, Wo*kw) sampled columns, then a kernel-strided Conv2D. It only implements the
modulated (v2) op (`modulated=False` raises), so DCNv1 passes a mask of ones. On CPU the tests cover
kernels 1, 3 and 5, stride 2, dilation 2, groups and deformable groups, forward and backward: the
gradients of input, weight, offsets and mask match an autograd reference, so the deformable backbone
option trains on CPU too. Memory: the sampled columns are kh*kw times the input map.
"""
from __future__ import annotations

import math

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import Uniform, initializer

from heads.ops.conv import conv2d


def mmcv_to_mindspore_offsets(offset: Tensor, mask: Tensor | None, deform_groups: int, kernel_points: int) -> Tensor:
    """mmcv's interleaved (dy, dx) offsets and separate mask -> MindSpore's [dx | dy | mask] channels.

    `mask=None` is DCNv1: every kernel point weighted 1 (MindSpore only implements the modulated op).
    """
    n, _, h, w = offset.shape
    pairs = offset.reshape(n, deform_groups * kernel_points, 2, h, w)
    dy = pairs[:, :, 0]
    dx = pairs[:, :, 1]
    if mask is None:
        mask = ops.ones_like(dy)
    return ops.cat((dx, dy, mask), 1)


class DeformConv2d(nn.Cell):
    """Deformable 2-D convolution: `construct(x, offset, mask=None)` with mmcv-layout `offset`/`mask`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as nn.Conv2d
            (symmetric padding).
        deform_groups: channel groups sharing one set of offsets (mmcv's `deform_groups`).
        modulated: DCNv2 (a per-point mask is passed to construct) or DCNv1 (no mask).
        bias: add a learned bias.
        weight_init: initializer of `weight`; default mmcv's U(-1/sqrt(n), 1/sqrt(n)),
            n = in_channels * kh * kw.

    `offset` is (N, 2*deform_groups*kh*kw, Ho, Wo), `mask` (N, deform_groups*kh*kw, Ho, Wo) (already
    a probability: mmcv's modulated pack applies the sigmoid before the op). Parameter `weight` has
    nn.Conv2d's shape (out, in/groups, kh, kw), so a plain conv's weight loads into it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 modulated: bool = True, bias: bool = False, weight_init=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"DeformConv2d: channels ({in_channels}, {out_channels}) must be divisible by "
                             f"groups={groups}")
        if in_channels % deform_groups:
            raise ValueError(f"DeformConv2d: in_channels={in_channels} must be divisible by "
                             f"deform_groups={deform_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.kernel_points = kernel_size * kernel_size
        if weight_init is None:
            weight_init = Uniform(1.0 / math.sqrt(in_channels * self.kernel_points))
        self.weight = Parameter(initializer(weight_init, (out_channels, in_channels // groups, kernel_size,
                                                          kernel_size)), name="weight")
        self.has_bias = bias
        self.bias = Parameter(initializer("zeros", (out_channels,)), name="bias") if bias else None

    def construct(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.modulated and mask is None:
            raise ValueError("DeformConv2d(modulated=True) needs a mask")
        if not self.modulated and mask is not None:
            raise ValueError("DeformConv2d(modulated=False) takes no mask")
        return self._deform(x, offset, mask)

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        offsets = mmcv_to_mindspore_offsets(offset, mask, self.deform_groups, self.kernel_points)
        p, s, d = self.padding, self.stride, self.dilation
        return ops.deformable_conv2d(x, self.weight, offsets, self.kernel_size, (1, 1, s, s), (p, p, p, p),
                                     bias=self.bias, dilations=(1, 1, d, d), groups=self.groups,
                                     deformable_groups=self.deform_groups, modulated=True)


class ModulatedDeformConv2dWithOffsets(DeformConv2d):
    """DCNv2 that predicts its own offsets and mask (mmcv's `ModulatedDeformConv2dPack`, "DCNv2").

    `conv_offset` (a conv with bias, same kernel/stride/padding/dilation) maps the input to
    3*deform_groups*K channels: the first 2*G*K are mmcv-layout offsets, the last G*K mask logits
    (sigmoid). It starts at zero, so training starts from a regular conv whose taps are weighted
    sigmoid(0) = 0.5, as in mmcv/mmdetection. Parameters: `weight`, `conv_offset.weight`,
    `conv_offset.bias` (mmdetection's names under `conv2.`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False, weight_init=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, modulated=True, bias=bias, weight_init=weight_init)
        self.offset_channels = 2 * deform_groups * self.kernel_points
        self.conv_offset = conv2d(in_channels, 3 * deform_groups * self.kernel_points, kernel_size, stride,
                                  padding, dilation, bias=True, weight_init="zeros", bias_init="zeros")
        self.sigmoid = ops.Sigmoid()

    def construct(self, x: Tensor) -> Tensor:
        out = self.conv_offset(x)
        offset = out[:, :self.offset_channels]
        mask = self.sigmoid(out[:, self.offset_channels:])
        return self._deform(x, offset, mask)
