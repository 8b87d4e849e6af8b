"""3x3 convolutions by Winograd's F(2x2, 3x3) algorithm on CPU (issue 8).

    Conv2d(C -> K, 3x3, stride 1, padding 1)  ==  WinogradConv2d  (to float rounding, ~1e-6 relative)

    x (N, C, H, W) --input transform--> V (16, C, N*P) --16 matmuls with U (16, K, C)--> M (16, K, N*P)
                   --output transform (+ bias)--> y (N, K, H, W)

U = G g G^T is the transformed weight (16 numbers per 3x3 filter), P = ceil(H/2) * ceil(W/2) the
2x2 output tiles of an image. The matmuls do 16 multiply-adds per tile, channel pair, against
the direct convolution's 36 (2.25x fewer); the transforms are linear, cheap and memory-bound and
run in C (m2det/kernels/winograd_f23.c, built by `bash scripts/make.sh`) as MindSpore "aot"
custom operators with their adjoints as backward passes, so the cell also trains.

`use_winograd(network)` swaps the eligible convolutions of a network in place (keep a copy of
the original): those with a 3x3 kernel, stride 1, dilation 1, one group, padding 1 on every
side and at least `min_channels` input and output channels. Narrow layers stay direct: the
transforms' memory traffic grows with C + K and the matmul saving with C * K.

Without the compiled library `available()` is False and `use_winograd` raises a clear error.
"""
from __future__ import annotations

import logging
import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from m2det.cells import refresh_parameter_names, replace_child, walk

log = logging.getLogger("m2det.winograd")

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_winograd_f23.so")

# G (4 x 3) of F(2x2, 3x3); U = G g G^T for every (output, input) channel pair
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# U (16, K*C) = GG (16, 9) @ g (9, K*C): the weight transform as one matrix
GG = np.kron(G, G)


def available() -> bool:
    """Whether the compiled transforms exist (`bash scripts/make.sh` builds them)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether Winograd cells can run here: on CPU, with the compiled transforms. A missing
    library is logged as a warning naming `setting`, the option that asked for them."""
    if device_target != "CPU":
        return False
    if not available():
        log.warning("%s: %s is not built (bash scripts/make.sh); using direct convolutions", setting, LIBRARY)
        return False
    return True


def transform_weight(weight: np.ndarray) -> np.ndarray:
    """(K, C, 3, 3) filters -> U (16, K, C), computed in float64."""
    k, c = weight.shape[:2]
    u = GG @ weight.astype(np.float64).reshape(k * c, 9).T
    return u.reshape(16, k, c).astype(np.float32)


def _tiles(shape) -> int:
    n, _, h, w = shape
    return n * ((h + 1) // 2) * ((w + 1) // 2)


def _custom(name: str, out_shape, bprop=None):
    return ops.Custom(f"{LIBRARY}:{name}", out_shape=out_shape, out_dtype=lambda *dtypes: dtypes[0],
                      func_type="aot", bprop=bprop)


def _input_transform():
    grad = _custom("WinogradInputGrad", lambda dv, x: x)

    def bprop(x, out, dout):
        return (grad(dout, x),)

    return _custom("WinogradInput", lambda x: [16, x[1], _tiles(x)], bprop)


def _output_transform():
    grad = _custom("WinogradOutputGrad", lambda dy: [16, dy[1], _tiles(dy)])
    reduce_sum = ops.ReduceSum()

    def bprop(m, bias, like, out, dout):
        return grad(dout), reduce_sum(dout, (0, 2, 3)), ops.zeros_like(like)

    return _custom("WinogradOutput", lambda m, bias, like: [like[0], m[1], like[2], like[3]], bprop)


class WinogradConv2d(nn.Cell):
    """A 3x3, stride-1, padding-1 convolution computed by Winograd F(2x2, 3x3).

    `weight` (K, C, 3, 3) and `bias` (K,) or None are taken as they are now: U is computed once
    and stored (inference). For training use `trainable=True`, which keeps `weight` as the
    Parameter and transforms it inside the graph every call (so gradients reach it).
    """

    def __init__(self, weight, bias=None, trainable: bool = False):
        super().__init__()
        if not available():
            raise RuntimeError(f"Winograd kernels not built: {LIBRARY} is missing (run `bash scripts/make.sh`)")
        shape = tuple(weight.shape)
        if len(shape) != 4 or shape[2:] != (3, 3):
            raise ValueError(f"WinogradConv2d needs (K, C, 3, 3) weights, got {shape}")
        self.out_channels, self.in_channels = int(shape[0]), int(shape[1])
        self.trainable = trainable
        if trainable:
            if not isinstance(weight, ms.Parameter):
                raise ValueError("trainable=True needs the convolution's weight Parameter")
            self.weight = weight
            self.gg = ms.Tensor(GG.astype(np.float32))
        else:
            w = weight.asnumpy() if isinstance(weight, ms.Tensor) else np.asarray(weight, np.float32)
            self.u = ms.Parameter(ms.Tensor(transform_weight(w)), name="u", requires_grad=False)
        if isinstance(bias, ms.Parameter):
            self.bias = bias
        else:   # a constant, not a Parameter: nothing new appears in checkpoints
            b = np.zeros(self.out_channels, np.float32) if bias is None else np.asarray(
                bias.asnumpy() if isinstance(bias, ms.Tensor) else bias, np.float32)
            self.bias = ms.Tensor(b)
        self.input_transform = _input_transform()
        self.output_transform = _output_transform()
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        if self.trainable:
            g = self.weight.reshape(self.out_channels * self.in_channels, 9)
            u = ops.matmul(self.gg, g.T).reshape(16, self.out_channels, self.in_channels)
        else:
            u = self.u
        v = self.input_transform(x)                      # (16, C, N*P)
        m = self.matmul(u, v)                            # (16, K, N*P)
        return self.output_transform(m, self.bias, x)   # (N, K, H, W)


def eligible(conv: nn.Conv2d, min_channels: int = 128) -> bool:
    """Whether `conv` is a 3x3 / stride 1 / dilation 1 / one-group / padding-1 convolution of at
    least `min_channels` input and output channels."""
    if not isinstance(conv, nn.Conv2d) or conv.data_format != "NCHW":
        return False
    padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4
    padded_by_one = (conv.pad_mode == "pad" and set(padding) == {1}) or conv.pad_mode == "same"
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.group == 1 and padded_by_one
            and conv.in_channels >= min_channels and conv.out_channels >= min_channels)


def use_winograd(network: nn.Cell, min_channels: int = 128, trainable: bool = False) -> list[str]:
    """Replace every eligible convolution of `network` in place; returns their paths.

    trainable=False (inference) bakes the current weights in: use it on a copy that will not
    be trained (e.g. after `fold_batchnorm`). trainable=True shares the weight and bias
    Parameters with the replaced convolutions, so training, checkpoints and names are unchanged.
    """
    if not available():
        raise RuntimeError(f"Winograd kernels not built: {LIBRARY} is missing (run `bash scripts/make.sh`)")
    paths = {id(c): n for n, c in network.cells_and_names()}
    replaced = []
    for parent, name, child in walk(network):
        if eligible(child, min_channels):
            bias = child.bias if child.has_bias else None
            replace_child(parent, name, WinogradConv2d(child.weight, bias, trainable=trainable))
            replaced.append(paths[id(child)])
    if not trainable:   # the new `u` Parameters get their paths as names (unique, like the rest)
        refresh_parameter_names(network)
    return replaced
