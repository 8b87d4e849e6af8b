"""Feature fusion modules of M2Det's MLFPN (REFERENCE 1.3, 1.4)."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from m2det.layers import BasicConv, nearest_resize


class FFMv1(nn.Cell):
    """Fuses a shallow and a deep backbone feature into the "base feature" (REFERENCE 1.3).

    shallow -> BasicConv 3x3 -> out_channels[0]; deep -> BasicConv 1x1 -> out_channels[1],
    nearest-upsampled to the shallow map; output concat[shallow, deep] at the shallow stride.
    The reference upsamples by a fixed x2; resizing to the shallow map's size is the same
    whenever the reference works and also covers inputs where x2 is off by one.

    Args:
        in_levels: [(channels, stride)] of the shallow and the deep feature, as reported by
            the backbone's `output_levels`.
        out_channels: channels of the two branches (reference: 256, 512 -> 768 in total).
    """

    def __init__(self, in_levels: Sequence[tuple[int, int]], out_channels: Sequence[int] = (256, 512)):
        super().__init__()
        if len(in_levels) != 2:
            raise ValueError(f"FFMv1 fuses 2 backbone levels (shallow, deep), got {len(in_levels)}: "
                             f"{list(in_levels)}")
        (shallow_ch, shallow_stride), (deep_ch, deep_stride) = in_levels
        if deep_stride <= shallow_stride:
            raise ValueError(f"FFMv1 expects the deep level to have the larger stride, got strides "
                             f"{shallow_stride} (shallow) and {deep_stride} (deep)")
        self.reduce_shallow = BasicConv(shallow_ch, out_channels[0], 3, padding=1)
        self.reduce_deep = BasicConv(deep_ch, out_channels[1], 1)
        self.out_channels = int(out_channels[0]) + int(out_channels[1])
        self.stride = shallow_stride

    def construct(self, shallow: Tensor, deep: Tensor) -> Tensor:
        shallow = self.reduce_shallow(shallow)
        deep = nearest_resize(self.reduce_deep(deep), shallow.shape[2:])
        return ops.cat((shallow, deep), axis=1)


class FFMv2(nn.Cell):
    """Builds one TUM's input (REFERENCE 1.4): reduce(base) alone for the first level,
    concat[reduce(base), previous TUM's largest output] for the others.

    The reduction is a BasicConv 1x1 (reference: 768 -> 128). The reference reuses one such
    module for every level; MLFPN decides whether its levels share one FFMv2.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.reduce = BasicConv(in_channels, out_channels, 1)
        self.out_channels = out_channels

    def construct(self, base: Tensor, previous: Tensor = None) -> Tensor:
        x = self.reduce(base)
        if previous is None:
            return x
        return ops.cat((x, previous), axis=1)
