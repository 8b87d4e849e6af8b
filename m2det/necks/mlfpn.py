"""Multi-level feature pyramid network (MLFPN), M2Det's neck (REFERENCE 1.3-1.6)."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from m2det.layers import BN_EPS, TORCH_DEFAULT_BN_MOMENTUM
from m2det.necks.ffm import FFMv1, FFMv2
from m2det.necks.sfam import SFAM
from m2det.necks.tum import TUM


class MLFPN(nn.Cell):
    """FFMv1 -> num_levels x (FFMv2 -> TUM) -> per-scale concat -> [SFAM] -> BN on the largest scale.

    Output: `num_scales` maps, largest first, each `planes * num_levels` channels (the
    concatenation of every level's map of that scale, level 1 first).

    Args:
        in_levels: backbone `output_levels` [(channels, stride)] of the shallow and deep features.
        base_channels: FFMv1 branch widths (reference 256, 512).
        planes: TUM width; each FFMv2 reduces the base feature to planes // 2.
        num_levels: number of TUMs (reference 8).
        num_scales: maps per TUM (reference 6).
        shared_ffm2: one FFMv2 for all levels, as the reference (its `leach` list holds one
            module 8 times); False gives every level its own weights.
        sfam: add the SFAM attention (off in the reference configs).
        sfam_reduction: SFAM squeeze ratio.
        tum_norm: the TUMs' normalisation, "bn" (reference) or "gn" (GroupNorm). A TUM's deepest
            maps are 1x1 and 3x3, so in training their BatchNorm sees one value (or nine) per
            image and bounds an outlying image to a few standard deviations of its batch; at
            inference the running statistics do not, and 4-8 stacked TUMs amplify the outlier
            (small-batch CPU training, docs/BENCHMARKS.md "Quickstart"). GroupNorm normalises
            every image on its own, identically in training and inference.
    """

    def __init__(self, in_levels: Sequence[tuple[int, int]], base_channels: Sequence[int] = (256, 512),
                 planes: int = 256, num_levels: int = 8, num_scales: int = 6, shared_ffm2: bool = True,
                 sfam: bool = False, sfam_reduction: int = 16, tum_norm: str = "bn"):
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"MLFPN needs num_levels >= 1, got {num_levels}")
        if planes < 2 or planes % 2:
            raise ValueError(f"MLFPN planes must be even and >= 2 (FFMv2 gives planes // 2), got {planes}")
        self.ffm1 = FFMv1(in_levels, base_channels)
        half = planes // 2
        self.ffm2 = nn.CellList([FFMv2(self.ffm1.out_channels, half)
                                 for _ in range(1 if shared_ffm2 else num_levels)])
        self._ffm2_index = tuple(0 if shared_ffm2 else i for i in range(num_levels))
        self.tums = nn.CellList([TUM(half if i == 0 else half + planes, planes, num_scales, norm=tum_norm)
                                 for i in range(num_levels)])
        channels = planes * num_levels
        self.sfam = SFAM(channels, sfam_reduction) if sfam else None
        self.use_sfam = bool(sfam)
        # the reference's stand-in for SSD's L2Norm: a BatchNorm on the largest scale only. It is a
        # plain nn.BatchNorm2d there, i.e. PyTorch momentum 0.1 (not BasicConv's 0.01)
        self.norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=TORCH_DEFAULT_BN_MOMENTUM)
        self.num_levels = num_levels
        self.num_scales = num_scales
        self.planes = planes
        self.base_stride = self.ffm1.stride

    @property
    def output_levels(self) -> list[tuple[int, int]]:
        """(channels, stride) of each output, largest map first.

        The stride is the spacing of the feature grid; the last scale comes from a stride-1
        "valid" conv, so it has the spacing of the scale before it (its map is just trimmed).
        """
        channels = self.planes * self.num_levels
        num_stride2 = self.num_scales - 2 if self.num_scales > 2 else 1
        strides = [self.base_stride * 2 ** min(k, num_stride2) for k in range(self.num_scales)]
        return [(channels, s) for s in strides]

    def output_sizes(self, in_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """(h, w) of each output (largest first) given the backbone output sizes `in_sizes`."""
        return self.scale_sizes(in_sizes[0], self.num_scales)

    @staticmethod
    def scale_sizes(base_size: Sequence[int], num_scales: int) -> list[tuple[int, int]]:
        """(h, w) of each output (largest first) for a base feature (FFMv1 output) of `base_size`."""
        return TUM.output_sizes(base_size, num_scales)[::-1]

    def construct(self, features: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        base = self.ffm1(features[0], features[1])
        levels = [self.tums[0](self.ffm2[0](base))]
        for i in range(1, self.num_levels):
            x = self.ffm2[self._ffm2_index[i]](base, levels[-1][-1])
            levels.append(self.tums[i](x))
        scales = ()
        for k in range(self.num_scales - 1, -1, -1):
            same_scale = ()
            for level in levels:
                same_scale += (level[k],)
            scales += (ops.cat(same_scale, axis=1),)
        if self.use_sfam:
            scales = self.sfam(scales)
        return (self.norm(scales[0]),) + scales[1:]
