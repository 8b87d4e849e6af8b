"""GroupNorm + ReLU as one operator for CPU training (issue 18 item 3).

    nn.GroupNorm(G, C, eps) then nn.ReLU  ==  GroupNormReLU  (to float rounding)

MindSpore 2.8's CPU GroupNorm and its gradient take 1.5-6x PyTorch's on the lite model's TUM
maps, and each is followed by a ReLU pass each way. m2det/kernels/group_norm_relu.c computes the
normalisation, the affine map and the ReLU in one operator and the gradients of the input, gamma
and beta in one more, as MindSpore "aot" custom operators; the forward operator also returns the
per-(image, group) mean and 1/std that its gradient uses. Built by `bash scripts/make.sh`.
(BatchNorm + ReLU: m2det/batch_norm_relu.py, which recomputes the ReLU's mask in the gradient.)

`use_group_norm_relu(network)` rewrites, in place, every `BasicConv` with GroupNorm (the TUMs
with `tum_norm: gn`): its `gn` becomes this cell, sharing gamma and beta, and its ReLU an
identity, so training, checkpoints and names are unchanged. Used by the trainer when
`train.group_norm_relu_kernel` is true on CPU (src/training/trainer.py).
"""
from __future__ import annotations

import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from m2det.cells import replace_child, walk
from m2det.custom_ops import aot_operator, library_usable, require_library
from m2det.layers import BasicConv

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_group_norm_relu.so")


def available() -> bool:
    """Whether the compiled kernels exist (`bash scripts/make.sh` builds them)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether the cells can run here: on CPU, with the compiled kernels. A missing library is
    logged as a warning naming `setting`, the option that asked for them."""
    return library_usable(LIBRARY, device_target, setting, "MindSpore's GroupNorm and ReLU")


def _operator(groups: int):
    gradient = aot_operator(LIBRARY, "GroupNormReLUGrad", lambda x, gamma, mean, rstd, y, dy: (x, gamma, gamma),
                            outputs=3)

    def bprop(x, gamma, beta, eps, out, dout):
        y, mean, rstd = out
        dx, dgamma, dbeta = gradient(x, gamma, mean, rstd, y, dout[0])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return aot_operator(LIBRARY, "GroupNormReLU", lambda x, gamma, beta, eps: (x, [x[0], groups], [x[0], groups]),
                        bprop, outputs=3)


class GroupNormReLU(nn.Cell):
    """ReLU(GroupNorm(x)) over `groups` groups with `gamma` and `beta` (C,): the Parameters of the
    nn.GroupNorm it replaces, shared."""

    def __init__(self, gamma: ms.Parameter, beta: ms.Parameter, groups: int, eps: float):
        super().__init__()
        require_library(LIBRARY, "GroupNorm + ReLU kernels")
        channels = int(gamma.shape[0])
        if groups <= 0 or channels % groups:
            raise ValueError(f"GroupNormReLU: {channels} channels do not split into {groups} groups")
        self.gamma = gamma
        self.beta = beta
        self.eps = ms.Tensor([eps], ms.float32)
        self.operator = _operator(groups)

    def construct(self, x):
        return self.operator(x, self.gamma, self.beta, self.eps)[0]


def eligible(cell: nn.Cell) -> bool:
    """Whether `cell` is a BasicConv whose norm is an affine nn.GroupNorm followed by nn.ReLU."""
    return (isinstance(cell, BasicConv) and not cell.use_bn and isinstance(cell.gn, nn.GroupNorm)
            and cell.gn.affine and isinstance(cell.relu, nn.ReLU))


def use_group_norm_relu(network: nn.Cell) -> list[str]:
    """Rewrite every eligible BasicConv of `network` in place (its GroupNorm by this cell, sharing
    gamma and beta, its ReLU by an identity); returns their paths."""
    require_library(LIBRARY, "GroupNorm + ReLU kernels")
    paths = {id(c): n for n, c in network.cells_and_names()}
    rewritten = []
    for _, _, cell in walk(network):
        if eligible(cell):
            norm = cell.gn
            replace_child(cell, "gn", GroupNormReLU(norm.gamma, norm.beta, norm.num_groups, norm.eps))
            replace_child(cell, "relu", nn.Identity())
            rewritten.append(paths[id(cell)])
    return rewritten
