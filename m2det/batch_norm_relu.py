"""BatchNorm + ReLU as one operator for CPU training (issue 18 item 3).

    nn.BatchNorm2d(C, eps, momentum) then nn.ReLU  ==  BatchNormReLU  (to float rounding; in
                                                       training with the moving statistics' update)

On the lite model's first layers (8-16 channels at 96-192 px, batch 8) MindSpore's BatchNorm,
ReLU and their gradients are memory passes: 5 over the map forward and 8 backward.
m2det/kernels/batch_norm_relu.c makes them 3 and 5: the forward operator computes the batch
statistics, the affine map and the ReLU; the gradient operator recomputes the ReLU's mask from
the input instead of reading the output. The forward operator also returns the mean and 1/std
its gradient uses and the moving statistics as nn.BatchNorm2d would move them; this cell
assigns those.
Built by `bash scripts/make.sh`.

`use_batch_norm_relu(network)` rewrites, in place, every nn.BatchNorm2d that an nn.ReLU follows:
a `BasicConv`'s `bn` (the FFMs, and the TUMs with `tum_norm: bn`) and the VGG's BatchNorm + ReLU
pairs. The normalisation becomes this cell, sharing its Parameters (gamma, beta, the moving
statistics), and the ReLU an identity, so training, checkpoints and names are unchanged; in
inference the cell computes nn.BatchNorm2d's inference then a ReLU. Used by the trainer when
`train.batch_norm_relu_kernel` is true on CPU (src/training/trainer.py).
"""
from __future__ import annotations

import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from m2det.cells import replace_child, walk
from m2det.custom_ops import aot_operator, library_usable, require_library
from m2det.layers import BasicConv

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "_batch_norm_relu.so")


def available() -> bool:
    """Whether the compiled kernels exist (`bash scripts/make.sh` builds them)."""
    return os.path.isfile(LIBRARY)


def usable(device_target: str, setting: str) -> bool:
    """Whether the cells can run here: on CPU, with the compiled kernels. A missing library is
    logged as a warning naming `setting`, the option that asked for them."""
    return library_usable(LIBRARY, device_target, setting, "MindSpore's BatchNorm and ReLU")


def _operator():
    gradient = aot_operator(LIBRARY, "BatchNormReLUGrad",
                            lambda x, gamma, beta, mean, rstd, dy: (x, gamma, gamma), outputs=3)

    def bprop(x, gamma, beta, eps, moving_mean, moving_variance, weight, out, dout):
        _, mean, rstd, _, _ = out
        dx, dgamma, dbeta = gradient(x, gamma, beta, mean, rstd, dout[0])
        return (dx, dgamma, dbeta, ops.zeros_like(eps), ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                ops.zeros_like(weight))

    return aot_operator(LIBRARY, "BatchNormReLU",
                        lambda x, gamma, beta, eps, moving_mean, moving_variance, weight: (x,) + (gamma,) * 4,
                        bprop, outputs=5)


class BatchNormReLU(nn.Cell):
    """ReLU(BatchNorm2d(x)) on the Parameters of `norm` (gamma, beta, moving mean and variance),
    shared. In training it normalises with the batch statistics and moves the moving statistics
    as nn.BatchNorm2d does (moving = (1 - w) * moving + w * batch, w the weight of the new batch,
    the batch variance unbiased); in inference it uses the moving statistics."""

    def __init__(self, norm: nn.BatchNorm2d):
        super().__init__()
        require_library(LIBRARY, "BatchNorm + ReLU kernels")
        if not eligible_norm(norm):
            raise ValueError(f"BatchNormReLU: {norm} is not an affine NCHW nn.BatchNorm2d with batch statistics "
                             "in training")
        # nn.BatchNorm2d's order (the detector's parameter list and checkpoints keep it)
        self.moving_mean, self.moving_variance = norm.moving_mean, norm.moving_variance
        self.gamma, self.beta = norm.gamma, norm.beta
        # the batch's weight in the moving statistics: nn.BatchNorm2d keeps 1 - its `momentum` argument
        self.weight = ms.Tensor([norm.momentum], ms.float32)
        self.eps = ms.Tensor([norm.eps], ms.float32)
        self.operator = _operator()
        self.inference = ops.BatchNorm(is_training=False, epsilon=float(norm.eps))
        self.relu = ops.ReLU()

    def construct(self, x):
        if not self.training:
            return self.relu(self.inference(x, self.gamma, self.beta, self.moving_mean, self.moving_variance)[0])
        y, _, _, moved_mean, moved_variance = self.operator(x, self.gamma, self.beta, self.eps, self.moving_mean,
                                                             self.moving_variance, self.weight)
        y = ops.depend(y, ops.assign(self.moving_mean, ops.stop_gradient(moved_mean)))
        return ops.depend(y, ops.assign(self.moving_variance, ops.stop_gradient(moved_variance)))


def eligible_norm(norm: nn.Cell) -> bool:
    """Whether `norm` is an nn.BatchNorm2d this cell computes: NCHW, trainable gamma, batch
    statistics in training and moving ones in inference (`use_batch_statistics` None)."""
    return (isinstance(norm, nn.BatchNorm2d) and norm.use_batch_statistics is None
            and norm.gamma.requires_grad and norm.format == "NCHW")


def _pairs(network: nn.Cell):
    """(container, norm name, relu name) of every eligible BatchNorm that an nn.ReLU directly
    follows: a BasicConv's bn and relu, and consecutive slots of a SequentialCell."""
    for _, _, cell in walk(network):
        if isinstance(cell, BasicConv):
            if cell.use_bn and eligible_norm(cell.bn) and isinstance(cell.relu, nn.ReLU):
                yield cell, "bn", "relu"
        elif isinstance(cell, nn.SequentialCell):
            children = cell.name_cells()
            names = list(children)
            for first, second in zip(names, names[1:]):
                if eligible_norm(children[first]) and isinstance(children[second], nn.ReLU):
                    yield cell, first, second


def use_batch_norm_relu(network: nn.Cell) -> list[str]:
    """Rewrite every eligible BatchNorm + ReLU of `network` in place (the BatchNorm by this cell,
    sharing its Parameters, the ReLU by an identity); returns the BatchNorms' paths."""
    require_library(LIBRARY, "BatchNorm + ReLU kernels")
    paths = {id(c): n for n, c in network.cells_and_names()}
    rewritten = []
    for container, norm_name, relu_name in list(_pairs(network)):
        norm = container.name_cells()[norm_name]
        replace_child(container, norm_name, BatchNormReLU(norm))
        replace_child(container, relu_name, nn.Identity())
        rewritten.append(paths[id(norm)])
    return rewritten
