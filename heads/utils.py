"""Helpers shared by every dense detection head."""
from __future__ import annotations

from typing import Sequence

import mindspore.ops as ops
from mindspore import Tensor


def flatten_levels(outputs: Sequence[Tensor], values_per_anchor: int) -> Tensor:
    """Per-level (N, A*K, H, W) maps -> one (N, sum_l H_l*W_l*A_l, K) tensor.

    Each level is put in NHWC order first, so a row is indexed (level, y, x, anchor), the
    order in which `heads.priors.SSDPriors` lists its boxes (row-major cells, anchors inside).
    """
    flat = ()
    for x in outputs:
        n = x.shape[0]
        flat += (ops.transpose(x, (0, 2, 3, 1)).reshape(n, -1, values_per_anchor),)
    return ops.cat(flat, axis=1)
