"""The jitted training step: value_and_grad -> all-reduce -> (unscale, finite check) -> clip
-> optimizer (-> EMA).

`DetectorWithLoss` runs the detector and its head's loss and returns
(total, part_1, ..., part_k); `TrainStep` differentiates the total only (the parts are
auxiliary outputs for logging).

Gradients are averaged across devices before the global-norm clip, so every replica clips
the same gradient and the result equals a single-device step on the concatenated batch.
The model zoo clips per device before the reduction, which makes the effective clip depend
on the device count (the mean of clipped per-device gradients is not the clipped mean).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode

from src.training.grad_clip import clip_by_global_norm, squared_sum_operator


class DetectorWithLoss(nn.Cell):
    """images + per-prior targets -> (total loss, *loss parts) using `detector.head.loss`.

    `float32_loss`: cast the head's raw outputs to float32 before the loss (mixed precision:
    the network may compute in float16, the loss never does).
    """

    def __init__(self, detector: nn.Cell, float32_loss: bool = False):
        # auto_prefix=False keeps the detector's parameter names bare, so checkpoints
        # saved from training load into a plain detector for eval/export.
        super().__init__(auto_prefix=False)
        self.detector = detector
        self.float32_loss = float32_loss

    def construct(self, images, *targets):
        outputs = self.detector(images)
        if self.float32_loss:
            outputs = tuple(o.astype(ms.float32) for o in outputs)
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
    """One optimisation step; returns (total, *parts) computed before the update, plus, when
    `loss_scale` is given, a scalar bool `overflow` (the step was skipped).

    Args:
        net_with_loss: returns (total, *parts), e.g. `DetectorWithLoss`.
        optimizer: updates `optimizer.parameters`.
        clip_grad_norm: global-norm clip of the averaged gradients; 0 disables.
        loss_scale: a `DynamicLossScale` (mixed precision), or None.
        ema: a `ModelEMA` updated after every optimizer update, or None.
        clip_kernel: the clip's global norm by one C operator (CPU, float32 gradients;
            src/training/grad_clip.py) instead of MindSpore's per-gradient reductions.
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, clip_grad_norm: float = 0.0,
                 loss_scale: nn.Cell | None = None, ema: nn.Cell | None = None, clip_kernel: bool = False):
        super().__init__(auto_prefix=False)
        self.network = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.clip_grad_norm = float(clip_grad_norm)
        self.squared_sum = squared_sum_operator() if clip_kernel and self.clip_grad_norm > 0 else None
        self.loss_scale = loss_scale
        self.use_loss_scale = loss_scale is not None
        self.ema = ema
        self.use_ema = ema is not None
        if self.use_loss_scale:
            self.grad_fn = ms.value_and_grad(self._scaled_forward, None, self.weights, has_aux=True)
        else:
            self.grad_fn = ms.value_and_grad(self.network, None, self.weights, has_aux=True)
        self.reducer = _grad_reducer(self.weights)

    def _scaled_forward(self, images, *targets):
        # has_aux: only the first output (the scaled total) is differentiated; the unscaled
        # (total, *parts) ride along for logging
        outputs = self.network(images, *targets)
        return (self.loss_scale.scale(outputs[0]),) + outputs

    def _apply(self, grads):
        if self.clip_grad_norm > 0:
            grads = clip_by_global_norm(grads, self.clip_grad_norm, self.squared_sum)
        done = self.optimizer(grads)
        if self.use_ema:
            done = ops.depend(done, self.ema())
        return done

    def construct(self, images, *targets):
        outputs, grads = self.grad_fn(images, *targets)
        grads = self.reducer(grads)
        if not self.use_loss_scale:
            return ops.depend(outputs, self._apply(grads))
        # the reduced gradients are identical on every replica, so is this verdict
        grads = self.loss_scale.unscale(grads)
        finite = ms.amp.all_finite(grads)
        if finite:
            self._apply(grads)
        self.loss_scale.adjust(finite)
        return outputs[1:] + (ops.logical_not(finite),)
