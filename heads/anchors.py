"""Grid anchors of the shared one-stage heads (REFERENCE 2.1), mmdetection v2 layout.

Level l has stride s_l and a feature map of H_l x W_l cells. Its base anchors, centred at the
origin, have for every aspect ratio r (= height / width) and scale k

    w = s_l * k / sqrt(r),   h = s_l * k * sqrt(r),   k = octave_base_scale * 2^(i / scales_per_octave)

for i = 0 .. scales_per_octave - 1, listed **ratios outer, scales inner** (base anchor index
= ratio_index * num_scales + scale_index; mmdetection's `scale_major=True`, its default).
Cell (y, x) is centred at (x * s_l + center_offset * s_l, y * s_l + center_offset * s_l); with
the default offset 0 there is no half-stride shift. Anchors are listed level by level, cells
row-major (y outer, x inner), the base anchors of one cell contiguous - the order of
`heads.utils.flatten_levels`.

- ATSS / GFL / VFNet / UMOP: one square anchor of 8 * stride per cell (`AnchorGenerator.atss()`).
- RetinaNet: 3 scales x 3 ratios (0.5, 1, 2), octave_base_scale 4 (`AnchorGenerator.retinanet()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class AnchorGenerator:
    """Corner-form pixel anchors (x1, y1, x2, y2) for a list of feature-map sizes."""

    strides: Sequence[int] = (8, 16, 32, 64, 128)
    octave_base_scale: float = 8.0
    scales_per_octave: int = 1
    ratios: Sequence[float] = (1.0,)
    center_offset: float = 0.0

    @classmethod
    def atss(cls, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> "AnchorGenerator":
        return cls(strides=tuple(strides), octave_base_scale=8.0, scales_per_octave=1, ratios=(1.0,))

    @classmethod
    def retinanet(cls, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> "AnchorGenerator":
        return cls(strides=tuple(strides), octave_base_scale=4.0, scales_per_octave=3,
                   ratios=(0.5, 1.0, 2.0))

    @property
    def scales(self) -> np.ndarray:
        i = np.arange(self.scales_per_octave, dtype=np.float64)
        return self.octave_base_scale * 2.0 ** (i / self.scales_per_octave)

    @property
    def num_base_anchors(self) -> int:
        """Anchors per cell (the A of the head's A*K output channels)."""
        return len(self.ratios) * self.scales_per_octave

    def base_anchors(self, level: int) -> np.ndarray:
        """(A, 4) float64 anchors of one cell of `level`, centred at the cell origin."""
        stride = float(self.strides[level])
        h_ratios = np.sqrt(np.asarray(self.ratios, dtype=np.float64))
        ws = (stride / h_ratios[:, None] * self.scales[None, :]).ravel()      # ratios outer
        hs = (stride * h_ratios[:, None] * self.scales[None, :]).ravel()
        c = self.center_offset * stride
        return np.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], axis=1)

    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
        """Anchors of all levels concatenated, (N, 4) float32, and the per-level counts.

        feature_sizes: one (H, W) per stride, e.g. from `feature_sizes()`.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"{len(feature_sizes)} feature sizes for {len(self.strides)} strides")
        out, counts = [], []
        for level, (h, w) in enumerate(feature_sizes):
            stride = float(self.strides[level])
            ys, xs = np.meshgrid(np.arange(h) * stride, np.arange(w) * stride, indexing="ij")
            shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1)  # (HW, 4)
            level_anchors = (shifts[:, None, :] + self.base_anchors(level)[None]).reshape(-1, 4)
            out.append(level_anchors)
            counts.append(level_anchors.shape[0])
        return np.concatenate(out, axis=0).astype(np.float32), counts


def feature_sizes(image_hw: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of each level for a (padded) input of image_hw: ceil(size / stride).

    Matches a backbone/FPN whose every stride-2 step (3x3 pad 1, 7x7 pad 3, 3x3 max-pool pad 1)
    maps n to ceil(n / 2).
    """
    h, w = image_hw
    return [(-(-h // s), -(-w // s)) for s in strides]
