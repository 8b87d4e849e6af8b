"""Fold inference-mode BatchNorm into the convolution that feeds it.

For y = BN(conv(x)) with moving statistics (mean m, variance v), affine (gamma, beta) and eps:

    s = gamma / sqrt(v + eps)
    W' = W * s  (per output channel),   b' = (b - m) * s + beta   (b = 0 without a conv bias)

so conv'(x) = BN(conv(x)) exactly, up to float rounding. This only holds when the BN reads the
convolution's output directly, so the pairs are named per cell class below rather than guessed
from the graph; anything else (e.g. MLFPN's BatchNorm on a concatenation of TUM outputs) stays.
"""
from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from m2det.backbones.resnet import Bottleneck, ResNet
from m2det.layers import BasicConv
from m2det.cells import replace_child, walk

# cell class -> (conv attribute, bn attribute) pairs where construct applies bn straight to conv's output
FOLD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    BasicConv: (("conv", "bn"),),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ResNet: (("conv1", "bn1"),),
}


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias computing BN(conv(x)) of inference mode."""
    w = conv.weight.asnumpy().astype(np.float64)
    b = conv.bias.asnumpy().astype(np.float64) if conv.has_bias else 0.0
    scale = bn.gamma.asnumpy().astype(np.float64) / np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps)
    weight = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
    bias = ((b - bn.moving_mean.asnumpy()) * scale + bn.beta.asnumpy()).astype(np.float32)
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     pad_mode=conv.pad_mode, padding=conv.padding, dilation=conv.dilation, group=conv.group,
                     has_bias=True, weight_init=ms.Tensor(weight), bias_init=ms.Tensor(bias),
                     data_format=conv.data_format)


def _foldable_pairs(cell: nn.Cell) -> list[tuple[str, str]]:
    pairs = [p for cls, ps in FOLD_PAIRS.items() if isinstance(cell, cls) for p in ps]
    if isinstance(cell, nn.SequentialCell):   # sequential: child i's output is child i+1's input
        names = list(cell.name_cells())
        kids = list(cell.name_cells().values())
        pairs += [(names[i], names[i + 1]) for i in range(len(kids) - 1)
                  if isinstance(kids[i], nn.Conv2d) and isinstance(kids[i + 1], nn.BatchNorm2d)]
    return [(c, b) for c, b in pairs if isinstance(cell.name_cells().get(c), nn.Conv2d)
            and isinstance(cell.name_cells().get(b), nn.BatchNorm2d)]


def fold_batchnorm(network: nn.Cell) -> list[str]:
    """Fold every conv -> BN pair of `network` in place (use a copy); returns the folded BN paths.

    Each folded BN is replaced by an identity cell, so the cells' construct methods are unchanged.
    """
    folded = []
    cells = [("", network)] + [(name, child) for _, name, child in walk(network)]
    paths = {id(c): n for n, c in network.cells_and_names()}
    for _, cell in cells:
        for conv_name, bn_name in _foldable_pairs(cell):
            conv, bn = cell.name_cells()[conv_name], cell.name_cells()[bn_name]
            replace_child(cell, conv_name, folded_conv(conv, bn))
            replace_child(cell, bn_name, nn.Identity())
            prefix = paths.get(id(cell), "")
            folded.append(f"{prefix}.{bn_name}" if prefix else bn_name)
    return folded
