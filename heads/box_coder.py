"""SSD box coding with variances (REFERENCE 1.8).

    encode:  t_xy = (g_c - p_c) / (v0 * p_wh),   t_wh = log(g_wh / p_wh) / v1
    decode:  c = p_c + t_xy * v0 * p_wh,         wh = p_wh * exp(min(t_wh * v1, log(1000/16)))

Priors are (cx, cy, w, h); ground truth and decoded boxes are corners (x1, y1, x2, y2),
all in the same units (normalised [0, 1] in this project). NumPy functions serve the
data pipeline and post-processing; `decode_graph` is the same formula, with the same clamp,
in MindSpore ops for graphs that output decoded boxes (export --with_decode), and the only
graph version: `SSDBoxCoder.decode_ms` and the exported network both call it.
"""
from __future__ import annotations

from typing import Sequence

import math

import numpy as np
from mindspore import ops

from heads.priors import center_to_corner, corner_to_center

# Largest log-scale a decoded side may take (a box at most 1000/16 times its prior, as
# mmdetection's delta coder): keeps exp() finite for a diverging or untrained network.
MAX_LOG_SCALE = math.log(1000.0 / 16)


class SSDBoxCoder:
    def __init__(self, variances: Sequence[float] = (0.1, 0.2)):
        if len(variances) != 2:
            raise ValueError(f"SSD box coder needs 2 variances, got {list(variances)}")
        self.variances = (float(variances[0]), float(variances[1]))

    def encode(self, boxes: np.ndarray, priors: np.ndarray) -> np.ndarray:
        """Corner boxes (..., 4) matched to priors (..., 4) -> regression targets (..., 4)."""
        v0, v1 = self.variances
        g = corner_to_center(boxes.astype(np.float64))
        p = priors.astype(np.float64)
        t_xy = (g[..., :2] - p[..., :2]) / (v0 * p[..., 2:])
        # a degenerate matched box (zero side) would give log(0); such boxes are filtered
        # by the data pipeline, the floor only keeps a stray one finite
        t_wh = np.log(np.maximum(g[..., 2:], 1e-12) / p[..., 2:]) / v1
        return np.concatenate([t_xy, t_wh], axis=-1).astype(np.float32)

    def decode(self, loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
        """Regression outputs (..., 4) -> corner boxes (..., 4)."""
        v0, v1 = self.variances
        loc = loc.astype(np.float32)
        p = priors.astype(np.float32)
        centre = p[..., :2] + loc[..., :2] * v0 * p[..., 2:]
        wh = p[..., 2:] * np.exp(np.minimum(loc[..., 2:] * v1, MAX_LOG_SCALE))
        return center_to_corner(np.concatenate([centre, wh], axis=-1))

    def decode_ms(self, loc, priors):
        """MindSpore version of `decode` for in-graph decoding; loc (B, P, 4), priors (P, 4)."""
        return decode_graph(loc, priors, self.variances[0], self.variances[1])


def decode_graph(loc, priors, v0: float, v1: float):
    """`SSDBoxCoder.decode` in MindSpore ops (usable inside a cell's construct): loc (..., P, 4)
    offsets, priors (P, 4) (cx, cy, w, h) -> corner boxes (..., P, 4), log-scale clamped at
    MAX_LOG_SCALE as the NumPy decode."""
    centre = priors[:, :2] + loc[..., :2] * v0 * priors[:, 2:]
    wh = priors[:, 2:] * ops.exp(ops.minimum(loc[..., 2:] * v1, MAX_LOG_SCALE))
    return ops.concat((centre - wh / 2, centre + wh / 2), axis=-1)
