"""Mixed precision (O2 style) and dynamic loss scaling.

O2 here means: every cell computes in float16 except the normalisation layers (BatchNorm,
GroupNorm, LayerNorm), which keep float32 inputs, weights and running statistics; the
head's raw outputs are cast back to float32 before the loss (`DetectorWithLoss`), so the
loss, its reductions and hard-negative mining run in float32. Master weights, gradients
and optimizer state stay float32.

`train.amp_level: auto` picks O2 on GPU/Ascend and O0 (everything float32) on CPU, where
float16 kernels are slower than float32 and bring nothing.

Dynamic loss scaling (`DynamicLossScale`): the loss is multiplied by `scale` before the
backward pass and the gradients divided by it afterwards (after the all-reduce, so every
replica sees the same overflow verdict). A step whose gradients are not finite is skipped
(no optimizer update, no EMA update) and the scale is divided by `factor`; after `window`
finite steps in a row it is multiplied by `factor`.
"""
from __future__ import annotations

import logging

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

log = logging.getLogger("m2det.train")

FLOAT32_CELLS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def resolve_amp_level(level: str, device_target: str) -> str:
    """'auto' -> 'O2' on GPU/Ascend, 'O0' on CPU; 'O0'/'O2' are returned as given."""
    level = str(level)
    if level == "auto":
        return "O0" if device_target == "CPU" else "O2"
    if level not in ("O0", "O2"):
        raise ValueError(f"train.amp_level must be auto, O0 or O2, got '{level}'")
    if level == "O2" and device_target == "CPU":
        log.warning("train.amp_level O2 on CPU: float16 CPU kernels are slow; use it for checks only")
    return level


def apply_o2(network: nn.Cell) -> nn.Cell:
    """Cast `network`'s computation to float16 in place, keeping normalisation layers in float32."""
    network.to_float(ms.float16)
    for _, cell in network.cells_and_names():
        if isinstance(cell, FLOAT32_CELLS):
            cell.to_float(ms.float32)
    return network


class DynamicLossScale(nn.Cell):
    """Loss-scale state as parameters (`loss_scale.value`, `loss_scale.good_steps`) so that a
    checkpoint carries it and a resumed run continues with the same scale."""

    def __init__(self, init_scale: float = 2.0 ** 16, factor: float = 2.0, window: int = 1000):
        super().__init__(auto_prefix=False)
        if init_scale < 1.0 or factor <= 1.0 or window < 1:
            raise ValueError(f"loss scale needs init >= 1, factor > 1, window >= 1; got {init_scale}, "
                             f"{factor}, {window}")
        self.value = Parameter(Tensor(float(init_scale), ms.float32), name="loss_scale.value", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale.good_steps", requires_grad=False)
        self.factor = float(factor)
        self.window = int(window)

    def scale(self, loss):
        return loss * self.value.astype(loss.dtype)

    def unscale(self, grads):
        inv = 1.0 / self.value
        return tuple(g * inv.astype(g.dtype) for g in grads)

    def adjust(self, finite):
        """Update the scale after a step; `finite` is a scalar bool tensor."""
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.window
        value = ops.select(finite, ops.select(grow, self.value * self.factor, self.value),
                           ops.maximum(self.value / self.factor, ops.ones_like(self.value)))
        good = ops.select(grow, ops.zeros_like(good), good)
        ops.assign(self.value, value)
        ops.assign(self.good_steps, good)
        return finite
