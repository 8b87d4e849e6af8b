"""The jitted training step: value_and_grad -> all-reduce -> clip -> optimizer.

`DetectorWithLoss` runs the detector and its head's loss and returns
(total, part_1, ..., part_k); `TrainStep` differentiates the total only (the parts are
auxiliary outputs for logging). Gradients are averaged across devices before the global-
norm clip, so every replica clips the same gradient (the model zoo clips per device before
the reduction, which makes the clip depend on the device count).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode


class DetectorWithLoss(nn.Cell):
    """images + per-prior targets -> (total loss, *loss parts) using `detector.head.loss`."""

    def __init__(self, detector: nn.Cell):
        # auto_prefix=False keeps the detector's parameter names bare, so checkpoints
        # saved from training load into a plain detector for eval/export.
        super().__init__(auto_prefix=False)
        self.detector = detector

    def construct(self, images, *targets):
        outputs = self.detector(images)
        parts = self.detector.head.loss(outputs, *targets)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return (total,) + tuple(parts)


def _grad_reducer(params):
    mode = ms.get_auto_parallel_context("parallel_mode")
    if mode in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
        mean = ms.get_auto_parallel_context("gradients_mean")
        return nn.DistributedGradReducer(params, mean, get_group_size())
    return ops.identity


class TrainStep(nn.Cell):
    """One optimisation step; returns (total, *parts) computed before the update."""

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, clip_grad_norm: float = 0.0):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.clip_grad_norm = float(clip_grad_norm)
        self.grad_fn = ms.value_and_grad(self.network, None, self.weights, has_aux=True)
        self.reducer = _grad_reducer(self.weights)

    def construct(self, images, *targets):
        outputs, grads = self.grad_fn(images, *targets)
        grads = self.reducer(grads)
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        outputs = ops.depend(outputs, self.optimizer(grads))
        return outputs
