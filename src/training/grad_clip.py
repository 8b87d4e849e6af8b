"""Global-norm gradient clipping with few kernel launches.

`mindspore.ops.clip_by_global_norm` launches a Square, a ReduceSum, a Mul and a Div per
gradient (about 930 small kernels for M2Det-lite's 232 parameters, ~4% of its CPU train step,
see docs/SPEED.md). Here the squared norms of the small gradients come from one flattened
concatenation, large gradients are reduced on their own (no copy of them), and every gradient
is multiplied once by one scalar:

    scale = max_norm / max(||g||, max_norm)        (1 when ||g|| <= max_norm)

which is torch.nn.utils.clip_grad_norm_'s rule without its 1e-6 epsilon, and
clip_by_global_norm's up to float rounding (it computes g * max_norm / max(||g||, max_norm)).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

SMALL_GRADIENT = 1 << 16     # elements; smaller gradients share one concatenation


def global_norm(grads) -> "ops.Tensor":
    """sqrt(sum of every gradient's squared entries), float32."""
    small = [g.reshape(-1).astype(ms.float32) for g in grads if g.size < SMALL_GRADIENT]
    large = [g for g in grads if g.size >= SMALL_GRADIENT]
    parts = []
    if small:
        flat = ops.cat(small) if len(small) > 1 else small[0]
        parts.append(ops.reduce_sum(flat * flat))
    for g in large:
        g = g.astype(ms.float32)
        parts.append(ops.reduce_sum(g * g))
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return ops.sqrt(total)


def clip_by_global_norm(grads, max_norm: float) -> tuple:
    """Scale all gradients together so that their global norm is at most `max_norm`."""
    norm = global_norm(grads)
    scale = max_norm / ops.maximum(norm, max_norm)
    return tuple(g * scale.astype(g.dtype) for g in grads)
