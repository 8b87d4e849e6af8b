"""2-D max pooling for CPU training by our own C kernel (issue 18 item 3).

    nn.MaxPool2d(k, s, padding p, floor or ceil mode)  ==  MaxPoolKernel  (exactly)

MindSpore 2.8's CPU MaxPoolGrad took 6.8 ms for the lite model's first pool (8 channels at
192 px, batch 8) and its padded pools run as MaxPool3DWithArgmax; together the lite model's five
pools cost ~17 ms of its ~320 ms training step. m2det/kernels/max_pool.c computes the maxima and
routes the gradient in one pass each way (0.3 and 0.4 ms for that first pool). The maximum of a
window is its first largest value in row-major order, as MindSpore's and PyTorch's, so outputs
and gradients are the same bit for bit (ties are common: all-zero windows after a ReLU). Built
by `bash scripts/make.sh`.

`use_max_pool_kernel(network)` swaps, in place, every eligible nn.MaxPool2d (`eligible`); pools
have no Parameters, so checkpoints and names are unchanged. Used by the trainer when
`train.max_pool_kernel` is true on CPU (src/training/trainer.py).
"""
from __future__ import annotations

import math
import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from m2det.cells import replace_child, walk
from m2det.custom_ops import aot_operator, library_usable, require_library

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_max_pool.so")


def available() -> bool:
    """Whether the compiled kernel exists (`bash scripts/make.sh` builds it)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether the cells can run here: on CPU, with the compiled kernel. A missing library is
    logged as a warning naming `setting`, the option that asked for it."""
    return library_usable(LIBRARY, device_target, setting, "MindSpore's max-pooling")


def pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a max-pool along one side (PyTorch's and MindSpore's rule: in ceil mode
    the last window must start inside the input or its left padding)."""
    span = size + 2 * padding - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_window(pool: nn.Cell):
    """(kh, kw, sh, sw, ph, pw, ceil_mode) of an nn.MaxPool2d our kernel computes, or None:
    NCHW, no dilation, no indices returned, 'valid' or 'pad' mode ('same' is left to MindSpore)."""
    if not isinstance(pool, nn.MaxPool2d) or pool.format != "NCHW" or pool.return_indices:
        return None
    attrs = pool.max_pool.attrs
    if pool.use_pad:
        if tuple(attrs.get("dilation", (1, 1, 1))) != (1, 1, 1):
            return None
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = attrs["ksize"], attrs["strides"], attrs["pads"]
        return kh, kw, sh, sw, ph, pw, bool(attrs["ceil_mode"])
    if attrs.get("pad_mode") != "VALID":
        return None
    (_, _, kh, kw), (_, _, sh, sw) = attrs["kernel_size"], attrs["strides"]
    return kh, kw, sh, sw, 0, 0, False


def eligible(pool: nn.Cell) -> bool:
    """Whether `pool` is an nn.MaxPool2d the kernel computes (`pool_window`)."""
    return pool_window(pool) is not None


def _operator(window):
    kh, kw, sh, sw, ph, pw, ceil_mode = window
    gradient = aot_operator(LIBRARY, "MaxPoolGrad", lambda x, dy, spec: x)

    def bprop(x, spec, out, dout):
        return gradient(x, dout, spec), ops.zeros_like(spec)

    def out_shape(x, spec):
        return [x[0], x[1], pooled_size(x[2], kh, sh, ph, ceil_mode), pooled_size(x[3], kw, sw, pw, ceil_mode)]

    return aot_operator(LIBRARY, "MaxPool", out_shape, bprop)


class MaxPoolKernel(nn.Cell):
    """Max-pooling of NCHW float32 maps over `window` = (kh, kw, sh, sw, ph, pw, ceil_mode)."""

    def __init__(self, window):
        super().__init__()
        require_library(LIBRARY, "max-pooling kernel")
        kh, kw, sh, sw, ph, pw, _ = window
        if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or ph >= kh or pw >= kw:
            raise ValueError(f"MaxPoolKernel: unsupported window {tuple(window)}")
        self.window = tuple(window)
        self.spec = ms.Tensor([kh, kw, sh, sw, ph, pw], ms.int32)
        self.operator = _operator(self.window)

    def construct(self, x):
        return self.operator(x, self.spec)


def use_max_pool_kernel(network: nn.Cell) -> list[str]:
    """Replace every eligible nn.MaxPool2d of `network` in place; returns their paths."""
    require_library(LIBRARY, "max-pooling kernel")
    paths = {id(c): n for n, c in network.cells_and_names()}
    replaced = []
    for parent, name, child in walk(network):
        window = pool_window(child)
        if window is not None:
            replace_child(parent, name, MaxPoolKernel(window))
            replaced.append(paths[id(child)])
    return replaced
