"""VGG16 with the fully connected layers turned into convolutions ("reduced fc"), SSD style."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor

from heads.ops.conv import conv2d
from m2det.layers import BN_EPS, TORCH_DEFAULT_BN_MOMENTUM, conv_output_size, to_pair

# channel plan of the five VGG stages; "M" = 2x2/2 max-pool, "C" = the same with ceil mode
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
SHALLOW_INDEX = 22   # ReLU(conv4_3)
DEEP_INDEX = 34      # ReLU(conv7)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _activation(channels: int, batch_norm: bool) -> nn.Cell:
    if not batch_norm:
        return nn.ReLU()
    return nn.SequentialCell([nn.BatchNorm2d(channels, eps=BN_EPS, momentum=TORCH_DEFAULT_BN_MOMENTUM), nn.ReLU()])


class VGG16Reduced(nn.Cell):
    """VGG16 "reduced fc" backbone (REFERENCE 1.1), without SSD's L2Norm.

    The layers form one flat list, `layers.0` ... `layers.34`, so that the indices of the
    convolutions (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33) are those of the
    reference checkpoint `vgg16_reducedfc.pth` (`31.weight` -> `layers.31.weight`).
    Outputs: (ReLU(conv4_3) at stride 8, ReLU(conv7) at stride 16).

    Args:
        width: multiplier on every channel count (1.0 = the reference, 20,483,904 parameters).
        batch_norm: put a BatchNorm before every ReLU (the "vgg16_bn" variant; convolutions
            then have no bias). Not in the reference: it lets narrow lite models train from
            scratch in minutes. The BN+ReLU pair sits at the ReLU's index (`layers.1.0.gamma`),
            so the convolution indices, and with them checkpoint names, do not move.
    """

    def __init__(self, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Cell] = []
        in_ch = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif v == "C":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="pad", ceil_mode=True))
            else:
                out_ch = _scaled(v, width)
                layers += [conv2d(in_ch, out_ch, 3, padding=1, bias=not batch_norm), _activation(out_ch, batch_norm)]
                in_ch = out_ch
        fc_ch = _scaled(1024, width)
        layers += [
            nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="pad", padding=1),       # 30: pool5
            conv2d(in_ch, fc_ch, 3, padding=6, dilation=6, bias=not batch_norm),    # 31: conv6
            _activation(fc_ch, batch_norm),                                         # 32
            conv2d(fc_ch, fc_ch, 1, bias=not batch_norm),                           # 33: conv7
            _activation(fc_ch, batch_norm),                                         # 34
        ]
        assert len(layers) == DEEP_INDEX + 1
        self.layers = nn.CellList(layers)
        self.width = width
        self._channels = (_scaled(512, width), fc_ch)

    @property
    def output_levels(self) -> list[tuple[int, int]]:
        """(channels, stride) of each output."""
        return [(self._channels[0], 8), (self._channels[1], 16)]

    @staticmethod
    def output_sizes(input_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """(h, w) of each output for an input of `input_size`, by shape arithmetic."""
        return [tuple(s) for s in zip(*(vgg16_reduced_sizes(n) for n in to_pair(input_size)))]

    def construct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shallow = x
        for i in range(DEEP_INDEX + 1):
            x = self.layers[i](x)
            if i == SHALLOW_INDEX:
                shallow = x
        return shallow, x


def vgg16_reduced_sizes(n: int) -> tuple[int, int]:
    """Side lengths of the two outputs for an input side `n`."""
    n = conv_output_size(n, 2, 2)                  # pool 4
    n = conv_output_size(n, 2, 2)                  # pool 9
    n = conv_output_size(n, 2, 2, ceil_mode=True)  # pool 16
    shallow = n
    deep = conv_output_size(n, 2, 2)               # pool 23 (pool5 and conv6/7 keep the size)
    return shallow, deep
