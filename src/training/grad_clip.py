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

On CPU the squared sum can instead be one C operator over all the gradients
(`squared_sum_operator`, m2det/kernels/squared_sum.c; `train.grad_norm_kernel`): the mapped
version launches a square and a reduction per gradient, ~460 small operators for the lite
model, which cost 10-20 ms of its ~320 ms step. The kernel sums in double precision, in a fixed
order.
"""
from __future__ import annotations

import os

import mindspore as ms
from mindspore import ops

import m2det
from m2det.custom_ops import aot_operator, library_usable, require_library

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(m2det.__file__)), "kernels", "_squared_sum.so")

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


def usable(device_target: str, setting: str) -> bool:
    """Whether `squared_sum_operator` can run here: on CPU, with the library built (a missing
    library is logged as a warning naming `setting`)."""
    return library_usable(LIBRARY, device_target, setting, "MindSpore's per-gradient reductions")


def squared_sum_operator() -> ops.Custom:
    """sum_j sum_i g_j[i]^2 over float32 tensors g_1, ..., g_n as one operator (CPU)."""
    require_library(LIBRARY, "squared-sum kernel")
    return aot_operator(LIBRARY, "SquaredSum", lambda *shapes: [])


def global_norm(grads, squared_sum=None) -> "ops.Tensor":
    """sqrt(sum of every gradient's squared entries), float32; `squared_sum`: a
    `squared_sum_operator()` to compute the sum with, or None for MindSpore's operators."""
    if squared_sum is None:
        return ops.sqrt(ops.addn(_map(_square_sum, tuple(grads))))
    return ops.sqrt(squared_sum(*grads))


def clip_by_global_norm(grads, max_norm: float, squared_sum=None) -> tuple:
    """Scale all gradients together so that their global norm is at most `max_norm`
    (`squared_sum`: as in `global_norm`)."""
    grads = tuple(grads)
    norm = global_norm(grads, squared_sum)
    scale = max_norm / ops.maximum(norm, max_norm)
    return _map(ops.partial(_scale_by, scale), grads)
