"""Feature pyramid network (FPN) neck for the one-stage heads (REFERENCE 2.1), mmdetection v2 semantics."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor
from mindspore.common.initializer import XavierUniform

from heads.ops.conv import conv2d
from m2det.layers import conv_output_size, nearest_resize

EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    # mmdetection's FPN init_cfg: Xavier uniform (gain 1) on every Conv2d, bias 0
    return conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=True, weight_init=XavierUniform(),
                  bias_init="zeros")


class FPN(nn.Cell):
    """Lateral 1x1 convs -> top-down nearest upsample + add -> 3x3 output convs -> extra levels.

    With C3-C5 (strides 8, 16, 32) and num_outs 5 this gives P3-P7 (strides 8..128), the
    RetinaNet/ATSS/GFL/VFNet R50-FPN neck. Each coarser lateral is upsampled to the size of the
    finer one (not by a fixed x2), so odd maps (e.g. 25 -> 13) line up.

    Args:
        in_levels: backbone `output_levels` [(channels, stride)], finest first.
        out_channels: channels of every output.
        num_outs: outputs; those beyond the used input levels are extra levels at twice the
            previous stride.
        start_level: first input level used (earlier ones are ignored).
        add_extra_convs: source of the first extra level's 3x3 stride-2 conv: 'on_output' (the
            last FPN output; ATSS, GFL, VFNet), 'on_input' (the last backbone feature; mmdetection
            v2 RetinaNet), 'on_lateral' (the last lateral), or False: 1x1 max-pool of stride 2 on
            the last output (Faster R-CNN's P6). Later extra convs always take the previous extra
            output.
        relu_before_extra_convs: ReLU on the input of every extra conv after the first (VFNet).

    Parameters: `lateral_convs.i.{weight,bias}`, `fpn_convs.i.{weight,bias}` with the extra convs at
    `fpn_convs.{len(lateral_convs)}...` (mmdetection: `lateral_convs.i.conv.weight`).
    """

    def __init__(self, in_levels: Sequence[tuple[int, int]], out_channels: int = 256, num_outs: int = 5,
                 start_level: int = 0, add_extra_convs: str | bool = "on_output",
                 relu_before_extra_convs: bool = False):
        super().__init__()
        in_levels = [(int(c), int(s)) for c, s in in_levels]
        if not 0 <= start_level < len(in_levels):
            raise ValueError(f"FPN start_level {start_level} outside the {len(in_levels)} input levels")
        used = in_levels[start_level:]
        if num_outs < len(used):
            raise ValueError(f"FPN num_outs={num_outs} is fewer than the {len(used)} levels used "
                             f"from {in_levels} (start_level={start_level})")
        if add_extra_convs is True:
            add_extra_convs = "on_input"    # mmdetection's meaning of True
        if add_extra_convs not in (False, None) + EXTRA_SOURCES:
            raise ValueError(f"FPN add_extra_convs must be one of {EXTRA_SOURCES} or False, got {add_extra_convs!r}")
        self.in_levels = in_levels
        self.out_channels = int(out_channels)
        self.num_outs = int(num_outs)
        self.start_level = int(start_level)
        self.num_used = len(used)
        self.extra_source = add_extra_convs or ""
        self.relu_before_extra_convs = bool(relu_before_extra_convs)

        self.lateral_convs = nn.CellList([_conv(c, out_channels, 1) for c, _ in used])
        convs = [_conv(out_channels, out_channels, 3, padding=1) for _ in used]
        if self.extra_source:
            for i in range(num_outs - len(used)):
                in_ch = used[-1][0] if i == 0 and self.extra_source == "on_input" else out_channels
                convs.append(_conv(in_ch, out_channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.CellList(convs)
        self.relu = nn.ReLU()

    @property
    def output_levels(self) -> list[tuple[int, int]]:
        """(channels, stride) of each output, finest first."""
        strides = [s for _, s in self.in_levels[self.start_level:]]
        while len(strides) < self.num_outs:
            strides.append(strides[-1] * 2)
        return [(self.out_channels, s) for s in strides]

    def output_sizes(self, in_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """(h, w) of each output given the backbone output sizes `in_sizes` (all input levels)."""
        sizes = [(int(h), int(w)) for h, w in in_sizes[self.start_level:]]
        while len(sizes) < self.num_outs:
            # 3x3/2 pad 1 conv and 1x1/2 max-pool give the same side: ceil(n / 2)
            h, w = sizes[-1]
            sizes.append((conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)))
        return sizes

    def construct(self, features: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        laterals = []
        for i in range(self.num_used):
            laterals.append(self.lateral_convs[i](features[i + self.start_level]))
        for i in range(self.num_used - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nearest_resize(laterals[i], laterals[i - 1].shape[2:])
        outs = ()
        for i in range(self.num_used):
            outs += (self.fpn_convs[i](laterals[i]),)
        if self.num_outs == self.num_used:
            return outs
        if not self.extra_source:
            for _ in range(self.num_outs - self.num_used):
                outs += (outs[-1][:, :, ::2, ::2],)     # max_pool2d(kernel 1, stride 2)
            return outs
        if self.extra_source == "on_input":
            source = features[len(features) - 1]
        elif self.extra_source == "on_lateral":
            source = laterals[-1]
        else:
            source = outs[-1]
        outs += (self.fpn_convs[self.num_used](source),)
        for i in range(self.num_used + 1, self.num_outs):
            source = self.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
            outs += (self.fpn_convs[i](source),)
        return outs
