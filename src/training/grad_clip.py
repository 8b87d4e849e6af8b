"""Global-norm gradient clipping that compiles fast and keeps no copy of the gradients.

    scale = max_norm / max(||g||, max_norm)        (1 when ||g|| <= max_norm)

is torch.nn.utils.clip_grad_norm_'s rule without its 1e-6 epsilon, and
`ops.clip_by_global_norm`'s up to float rounding (it computes g * max_norm / max(||g||, max_norm)).

Both passes over the gradients are one `HyperMap` each (squared sum per gradient, then one
multiply by the shared scalar), which the graph compiler handles as a single mapped function.
An earlier version concatenated the small gradients into one flat vector to save kernel
launches; in GRAPH mode that concatenation of a few hundred gradients made the training graph
compile 4-11x slower and hold 2.3-2.6 GiB more (docs/BENCHMARKS.md, "Compile cost"). MindSpore's
own clip maps too but keeps a squared copy of every gradient and multiplies twice.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

_map = ops.HyperMap()
_square_sum = ops.MultitypeFuncGraph("square_sum")
_scale_by = ops.MultitypeFuncGraph("scale_by")


@_square_sum.register("Tensor")
def _square_sum_of(grad):
    grad = grad.astype(ms.float32)
    return ops.reduce_sum(grad * grad)


@_scale_by.register("Tensor", "Tensor")
def _scaled(scale, grad):
    return grad * scale.astype(grad.dtype)


def global_norm(grads) -> "ops.Tensor":
    """sqrt(sum of every gradient's squared entries), float32."""
    return ops.sqrt(ops.addn(_map(_square_sum, tuple(grads))))


def clip_by_global_norm(grads, max_norm: float) -> tuple:
    """Scale all gradients together so that their global norm is at most `max_norm`."""
    grads = tuple(grads)
    norm = global_norm(grads)
    scale = max_norm / ops.maximum(norm, max_norm)
    return _map(ops.partial(_scale_by, scale), grads)
