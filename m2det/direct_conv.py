"""Narrow 3x3 convolutions for CPU training by our own direct kernels (issue 18 item 3).

    Conv2d(C -> K, 3x3, stride 1, padding 1, no dilation, one group)  ==  DirectConv3x3  (to float rounding)

MindSpore 2.8 runs CPU convolutions as im2col + SGEMM (oneDNN 2.2 gemm:jit); on layers of 8-64
channels the unfolding costs more than the multiply-adds, and their backward passes lose
1.6-5.3x to PyTorch's direct convolution (docs/SPEED.md). m2det/kernels/direct_conv3x3.c
computes the forward pass, the input gradient and the filter gradient directly (padded planes,
register-blocked, vectorized, OpenMP), as MindSpore "aot" custom operators; the cell wires the
two gradients in as the forward operator's backward pass. Built by `bash scripts/make.sh`.

`use_direct_conv(network, max_channels)` swaps, in place, every eligible convolution
(`eligible`) whose wider side has at most `max_channels` channels, sharing the weight and bias
Parameters, so training, checkpoints and names are unchanged. Used by the trainer when
`train.direct_conv_max_channels` > 0 on CPU (src/training/trainer.py).
"""
from __future__ import annotations

import ctypes
import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from m2det.cells import is_3x3_same_convolution, replace_child, walk
from m2det.custom_ops import aot_operator, library_usable, require_library

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_direct_conv3x3.so")


def available() -> bool:
    """Whether the compiled kernels exist (`bash scripts/make.sh` builds them)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether the cells can run here: on CPU, with the compiled kernels. A missing library is
    logged as a warning naming `setting`, the option that asked for them."""
    return library_usable(LIBRARY, device_target, setting, "MindSpore's convolutions")


def set_threads(threads: int) -> int:
    """OpenMP threads per kernel call (<= 0: one per core, the default); returns the number in
    use. The library keeps it for the whole process: ctypes loads the same file MindSpore's
    custom operators load, so this reaches them (train.direct_conv_threads; docs/BENCHMARKS.md,
    "Narrow-layer training speed": one thread was faster while other processes kept the cores
    busy, two on a quiet machine)."""
    require_library(LIBRARY, "direct convolution kernels")
    return int(ctypes.CDLL(LIBRARY).DirectConv3x3SetThreads(int(threads)))


def _custom(name: str, out_shape, bprop=None):
    return aot_operator(LIBRARY, name, out_shape, bprop)


def _convolution():
    input_grad = _custom("DirectConv3x3InputGrad", lambda dy, w: [dy[0], w[1], dy[2], dy[3]])
    filter_grad = _custom("DirectConv3x3FilterGrad", lambda dy, x: [dy[1], x[1], 3, 3])

    def bprop(x, w, out, dout):
        return input_grad(dout, w), filter_grad(dout, x)

    return _custom("DirectConv3x3", lambda x, w: [x[0], w[0], x[2], x[3]], bprop)


class DirectConv3x3(nn.Cell):
    """A 3x3, stride-1, padding-1 convolution by the direct kernels, on `weight` (K, C, 3, 3)
    and `bias` (K,) or None: the Parameters of the convolution it replaces, shared."""

    def __init__(self, weight: ms.Parameter, bias: ms.Parameter | None = None):
        super().__init__()
        require_library(LIBRARY, "direct convolution kernels")
        if not isinstance(weight, ms.Parameter) or len(weight.shape) != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise ValueError(f"DirectConv3x3 needs the (K, C, 3, 3) weight Parameter of a convolution, got "
                             f"{type(weight).__name__} {tuple(getattr(weight, 'shape', ()))}")
        if bias is not None and not isinstance(bias, ms.Parameter):
            raise ValueError("DirectConv3x3 needs the convolution's bias Parameter (or None)")
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.weight = weight
        self.has_bias = bias is not None
        self.bias = bias
        self.convolution = _convolution()
        self.bias_add = ops.BiasAdd()

    def construct(self, x):
        y = self.convolution(x, self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return y


def eligible(conv: nn.Cell, max_channels: int) -> bool:
    """Whether `conv` is a 3x3 / stride 1 / dilation 1 / one-group / padding-1 NCHW convolution
    with at most `max_channels` input and at most `max_channels` output channels."""
    return is_3x3_same_convolution(conv) and max(conv.in_channels, conv.out_channels) <= max_channels


def use_direct_conv(network: nn.Cell, max_channels: int) -> list[str]:
    """Replace every eligible convolution of `network` in place, sharing its Parameters;
    returns their paths."""
    require_library(LIBRARY, "direct convolution kernels")
    paths = {id(c): n for n, c in network.cells_and_names()}
    replaced = []
    for parent, name, child in walk(network):
        if eligible(child, max_channels):
            replace_child(parent, name, DirectConv3x3(child.weight, child.bias if child.has_bias else None))
            replaced.append(paths[id(child)])
    return replaced
