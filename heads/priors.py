"""SSD default boxes ("priors") for M2Det, exactly as REFERENCE 1.7.

For scale k with a feature map of f x f cells and step s_k on an S x S input:
    fk = S / s_k,  centre of cell (i, j) = ((j + 0.5) / fk, (i + 0.5) / fk)
    min_k = round(pattern[k] * S, 2),  max_k = round(pattern[k + 1] * S, 2)
and each cell gets, in this order (w, h relative to S):
    (s, s), (s', s') with s' = sqrt(s * max_k / S),
    then for every aspect ratio r: (s * sqrt(r), s / sqrt(r)), (s / sqrt(r), s * sqrt(r))
with s = min_k / S. Cells are row-major, scales from largest map to smallest.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SSDPriors:
    """Prior boxes of one input size; `boxes()` returns (P, 4) (cx, cy, w, h) in [0, 1]."""

    input_size: int
    feature_maps: Sequence[int]
    steps: Sequence[float]
    size_pattern: Sequence[float]
    aspect_ratios: Sequence[Sequence[float]]
    clip: bool = True

    def __post_init__(self):
        n = len(self.feature_maps)
        problems = []
        if len(self.steps) != n:
            problems.append(f"{len(self.steps)} steps {list(self.steps)}")
        if len(self.aspect_ratios) != n:
            problems.append(f"{len(self.aspect_ratios)} aspect_ratios entries")
        if len(self.size_pattern) != n + 1:
            problems.append(f"{len(self.size_pattern)} size_pattern values (need {n + 1})")
        if problems:
            raise ValueError(f"prior config does not match {n} feature maps {list(self.feature_maps)}: "
                             + ", ".join(problems))

    @property
    def min_sizes(self) -> list[float]:
        return [round(p * self.input_size, 2) for p in self.size_pattern[:-1]]

    @property
    def max_sizes(self) -> list[float]:
        return [round(p * self.input_size, 2) for p in self.size_pattern[1:]]

    def num_anchors(self) -> list[int]:
        """Priors per cell for each scale: 2 + 2 * len(aspect ratios)."""
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def num_priors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_maps, self.num_anchors()))

    def boxes(self) -> np.ndarray:
        size = float(self.input_size)
        out = []
        for k, f in enumerate(self.feature_maps):
            fk = size / self.steps[k]
            s = self.min_sizes[k] / size
            s_prime = sqrt(s * self.max_sizes[k] / size)
            shapes = [(s, s), (s_prime, s_prime)]
            for r in self.aspect_ratios[k]:
                shapes += [(s * sqrt(r), s / sqrt(r)), (s / sqrt(r), s * sqrt(r))]
            shapes = np.asarray(shapes, dtype=np.float64)                     # (A, 2)
            idx = np.arange(f, dtype=np.float64)
            cy, cx = np.meshgrid((idx + 0.5) / fk, (idx + 0.5) / fk, indexing="ij")
            centres = np.stack([cx.ravel(), cy.ravel()], axis=1)              # (f*f, 2) row-major
            level = np.concatenate([np.repeat(centres, len(shapes), axis=0),
                                    np.tile(shapes, (f * f, 1))], axis=1)
            out.append(level)
        boxes = np.concatenate(out, axis=0)
        if self.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        return boxes.astype(np.float32)


def center_to_corner(boxes: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    half = boxes[..., 2:] / 2
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def corner_to_center(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return np.concatenate([boxes[..., :2] + wh / 2, wh], axis=-1)
