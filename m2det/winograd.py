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

Inference cells (trainable=False) may use F(4x4, 3x3) instead (`tile=4`): 6x6 input tiles, U
(36, K, C), 36 multiply-adds per 4x4 output tile and channel pair (1.78x fewer than F(2x2), 4x
fewer than direct) and a 2.25x instead of 4x expanded V, at a larger float32 rounding error
(m2det/kernels/winograd_f43.c; no adjoints, so training keeps F(2x2)).

Without the compiled library `available()` is False and `use_winograd` raises a clear error.
"""
from __future__ import annotations

import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from m2det.cells import is_3x3_same_convolution, refresh_parameter_names, replace_child, walk
from m2det.custom_ops import aot_operator, library_usable, require_library
from m2det.input_sizes import cell_input_sizes

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_winograd_f23.so")

# G (4 x 3) of F(2x2, 3x3); U = G g G^T for every (output, input) channel pair
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# U (16, K*C) = GG (16, 9) @ g (9, K*C): the weight transform as one matrix
GG = np.kron(G, G)
# G (6 x 3) of F(4x4, 3x3), points 0, 1, -1, 2, -2, infinity (m2det/kernels/winograd_f43.c)
G43 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
GG43 = np.kron(G43, G43)
TILES = (2, 4)   # output tile side m of F(m x m, 3x3)
# with tile=4, the smallest map side (pixels) for F(4x4) and for F(2x2); smaller maps stay direct
# (single layers, docs/SPEED.md "Tile size by map size")
F43_MIN_SIDE = 16
F23_MIN_SIDE = 6
# F(4x4) also pays on narrower layers than F(2x2) (64 -> 64 at 320: 62 ms against 107 direct and
# 174 F(2x2)): with tile=4, convolutions from this many channels take F(4x4) where tile_for says 4
F43_MIN_CHANNELS = 64


def available() -> bool:
    """Whether the compiled transforms exist (`bash scripts/make.sh` builds them)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether Winograd cells can run here: on CPU, with the compiled transforms. A missing
    library is logged as a warning naming `setting`, the option that asked for them."""
    return library_usable(LIBRARY, device_target, setting, "direct convolutions")


def transform_weight(weight: np.ndarray, tile: int = 2) -> np.ndarray:
    """(K, C, 3, 3) filters -> U ((tile + 2)^2, K, C), computed in float64."""
    k, c = weight.shape[:2]
    gg = GG if tile == 2 else GG43
    flat = np.asarray(weight).reshape(k * c, 9)
    u = np.empty((gg.shape[0], k * c), np.float32)
    # in chunks that stay in cache: 7x faster than one product on a 2048 -> 486 head (same values)
    for start in range(0, k * c, 1 << 16):
        u[:, start:start + (1 << 16)] = gg @ flat[start:start + (1 << 16)].astype(np.float64).T
    return u.reshape(gg.shape[0], k, c)


def _tiles(shape, tile: int = 2) -> int:
    n, _, h, w = shape
    return n * -(-h // tile) * -(-w // tile)


def _custom(name: str, out_shape, bprop=None):
    return aot_operator(LIBRARY, name, out_shape, bprop)


def _f43_transforms():
    """F(4x4, 3x3) input and output (+ bias) transforms; forward only."""
    forward_input = _custom("WinogradF43Input", lambda x: [36, x[1], _tiles(x, 4)])
    forward_output = _custom("WinogradF43Output", lambda m, bias, like: [like[0], m[1], like[2], like[3]])
    return forward_input, forward_output


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
    """A 3x3, stride-1, padding-1 convolution computed by Winograd F(tile x tile, 3x3).

    `weight` (K, C, 3, 3) and `bias` (K,) or None are taken as they are now: U is computed once
    and stored (inference). For training use `trainable=True`, which keeps `weight` as the
    Parameter and transforms it inside the graph every call (so gradients reach it); it needs
    tile=2 (F(4x4, 3x3) has no backward transforms).
    """

    def __init__(self, weight, bias=None, trainable: bool = False, tile: int = 2):
        super().__init__()
        require_library(LIBRARY, "Winograd kernels")
        shape = tuple(weight.shape)
        if len(shape) != 4 or shape[2:] != (3, 3):
            raise ValueError(f"WinogradConv2d needs (K, C, 3, 3) weights, got {shape}")
        if tile not in TILES:
            raise ValueError(f"WinogradConv2d tile must be one of {TILES} (F(2x2, 3x3) or F(4x4, 3x3)), got {tile}")
        if trainable and tile != 2:
            raise ValueError("trainable=True needs tile=2: F(4x4, 3x3) has forward transforms only")
        self.out_channels, self.in_channels = int(shape[0]), int(shape[1])
        self.trainable = trainable
        self.tile = tile
        if trainable:
            if not isinstance(weight, ms.Parameter):
                raise ValueError("trainable=True needs the convolution's weight Parameter")
            self.weight = weight
            self.gg = ms.Tensor(GG.astype(np.float32))
        else:
            w = weight.asnumpy() if isinstance(weight, ms.Tensor) else np.asarray(weight, np.float32)
            self.u = ms.Parameter(ms.Tensor(transform_weight(w, tile)), name="u", requires_grad=False)
        if isinstance(bias, ms.Parameter):
            self.bias = bias
        else:   # a constant, not a Parameter: nothing new appears in checkpoints
            b = np.zeros(self.out_channels, np.float32) if bias is None else np.asarray(
                bias.asnumpy() if isinstance(bias, ms.Tensor) else bias, np.float32)
            self.bias = ms.Tensor(b)
        if tile == 2:
            self.input_transform, self.output_transform = _input_transform(), _output_transform()
        else:
            self.input_transform, self.output_transform = _f43_transforms()
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        if self.trainable:
            g = self.weight.reshape(self.out_channels * self.in_channels, 9)
            u = ops.matmul(self.gg, g.T).reshape(16, self.out_channels, self.in_channels)
        else:
            u = self.u
        v = self.input_transform(x)                      # (T, C, N*P), T = (tile + 2)^2
        m = self.matmul(u, v)                            # (T, K, N*P)
        return self.output_transform(m, self.bias, x)   # (N, K, H, W)


def eligible(conv: nn.Conv2d, min_channels: int = 128) -> bool:
    """Whether `conv` is a 3x3 / stride 1 / dilation 1 / one-group / padding-1 convolution of at
    least `min_channels` input and output channels."""
    return is_3x3_same_convolution(conv) and conv.in_channels >= min_channels and conv.out_channels >= min_channels


def tile_for(height: int, width: int) -> int | None:
    """The fastest form for a (height, width) map when F(4x4, 3x3) may be used: 4, 2, or None for
    the direct convolution. On tiny maps the transformed weights (36 or 16 values per filter
    against 9) dominate the matmuls' memory traffic (docs/SPEED.md, "Tile size by map size")."""
    side = min(height, width)
    if side >= F43_MIN_SIDE:
        return 4
    return 2 if side >= F23_MIN_SIDE else None


def use_winograd(network: nn.Cell, min_channels: int = 128, trainable: bool = False, tile: int = 2,
                 input_shape=None) -> list[str]:
    """Replace every eligible convolution of `network` in place; returns their paths.

    trainable=False (inference) bakes the current weights in: use it on a copy that will not
    be trained (e.g. after `fold_batchnorm`). trainable=True shares the weight and bias
    Parameters with the replaced convolutions, so training, checkpoints and names are unchanged.

    tile=2: F(2x2, 3x3) for every eligible convolution. tile=4 (inference only): with
    `input_shape` (N, C, H, W), one forward of zeros finds each convolution's map size and
    `tile_for` picks F(4x4, 3x3), F(2x2, 3x3) or the direct convolution (kept); without it,
    F(4x4, 3x3) everywhere. With tile=4, convolutions of fewer than `min_channels` but at least
    F43_MIN_CHANNELS channels are taken for F(4x4) only. Any choice computes the same
    convolution: the sizes only decide speed.
    """
    require_library(LIBRARY, "Winograd kernels")
    if tile not in TILES:
        raise ValueError(f"Winograd tile must be one of {TILES} (F(2x2, 3x3) or F(4x4, 3x3)), got {tile}")
    if trainable and tile != 2:
        raise ValueError("trainable=True needs tile=2: F(4x4, 3x3) has forward transforms only")
    sizes = None
    widest = min(min_channels, F43_MIN_CHANNELS) if tile == 4 else min_channels
    if tile == 4 and input_shape is not None:
        sizes = cell_input_sizes(network, input_shape, lambda cell: eligible(cell, widest))
    paths = {id(c): n for n, c in network.cells_and_names()}
    replaced = []
    for parent, name, child in walk(network):
        if eligible(child, widest):
            chosen = tile if sizes is None or id(child) not in sizes else tile_for(*sizes[id(child)])
            if chosen == 2 and not eligible(child, min_channels):
                chosen = None               # too narrow for F(2x2): direct
            if chosen is None:
                continue
            bias = child.bias if child.has_bias else None
            replace_child(parent, name, WinogradConv2d(child.weight, bias, trainable=trainable, tile=chosen))
            replaced.append(paths[id(child)])
    if not trainable:   # the new `u` Parameters get their paths as names (unique, like the rest)
        refresh_parameter_names(network)
    return replaced


def describe(network: nn.Cell) -> str:
    """How many Winograd cells of `network` use each tile, e.g. "F(4x4, 3x3): 40, F(2x2, 3x3): 9"."""
    counts = {tile: 0 for tile in TILES}
    for _, cell in network.cells_and_names():
        if isinstance(cell, WinogradConv2d):
            counts[cell.tile] += 1
    return ", ".join(f"F({t}x{t}, 3x3): {n}" for t, n in sorted(counts.items(), reverse=True) if n) or "none"
