"""Thinned U-shape module (TUM) of M2Det (REFERENCE 1.5)."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor

from m2det.layers import BasicConv, conv_output_size, nearest_resize


class TUM(nn.Cell):
    """A small encoder-decoder giving `num_scales` maps, smallest first.

    Encoder (num_scales - 1 convs): 3x3 stride-2 convs, the last one 3x3 stride 1 without
    padding ("valid"), which is what makes the reference maps 3 and 1 (not 3 and 2) at 320.
    Decoder: D0 = top(E_last); D(i+1) = nearest-resize(D(i) to C[k]) + lateral[i](C[k]) walking
    back up the encoder maps C = [input, E0, E1, ...] (the last lateral conv reads the input).
    Output: [D0, smooth[0](D1), ..., smooth[-1](D_last)], every map `planes` channels.

    Args:
        in_channels: channels of the TUM input.
        planes: channels of every encoder/decoder map.
        num_scales: number of output maps (>= 2).
        norm: normalisation of every BasicConv, "bn" (reference) or "gn".
    """

    def __init__(self, in_channels: int, planes: int = 256, num_scales: int = 6, norm: str = "bn"):
        super().__init__()
        if num_scales < 2:
            raise ValueError(f"TUM needs num_scales >= 2, got {num_scales}")
        n = num_scales
        encoder = [BasicConv(in_channels, planes, 3, stride=2, padding=1, norm=norm)]
        for i in range(n - 2):
            last = i == n - 3
            encoder.append(BasicConv(planes, planes, 3, stride=1 if last else 2, padding=0 if last else 1,
                                     norm=norm))
        self.encoder = nn.CellList(encoder)
        self.top = BasicConv(planes, planes, 1, norm=norm)
        lateral = [BasicConv(planes, planes, 3, padding=1, norm=norm) for _ in range(n - 2)]
        lateral.append(BasicConv(in_channels, planes, 3, padding=1, norm=norm))
        self.lateral = nn.CellList(lateral)
        self.smooth = nn.CellList([BasicConv(planes, planes, 1, norm=norm) for _ in range(n - 1)])
        self.num_scales = n
        self.planes = planes

    @staticmethod
    def output_sizes(input_size: Sequence[int], num_scales: int) -> list[tuple[int, int]]:
        """(h, w) of the outputs, smallest first, for an input map of `input_size` (h, w)."""
        sizes = [tuple(int(s) for s in input_size)]
        for i in range(num_scales - 1):
            last = num_scales > 2 and i == num_scales - 2
            stride, padding = (1, 0) if last else (2, 1)
            sizes.append(tuple(conv_output_size(s, 3, stride, padding) for s in sizes[-1]))
        return sizes[::-1]

    def construct(self, x: Tensor) -> tuple[Tensor, ...]:
        encoded = [x]
        for i in range(self.num_scales - 1):
            encoded.append(self.encoder[i](encoded[-1]))
        decoded = self.top(encoded[-1])
        outs = [decoded]
        for i in range(self.num_scales - 1):
            skip = encoded[self.num_scales - 2 - i]
            decoded = nearest_resize(decoded, skip.shape[2:]) + self.lateral[i](skip)
            outs.append(self.smooth[i](decoded))
        return tuple(outs)
