"""Learning-rate schedule: linear warmup, then multi-step decay by epoch (SPEC 1.11).

    warmup (epoch < warmup_epochs): lr(t) = start + (lr - start) * t / (warmup_epochs * steps)
    after:                          lr * multiplier of the last lr_step <= epoch (1 before any)

The reference PyTorch schedule (4e-3 -> 2e-3 at 90 -> 4e-4 at 110 -> 4e-5 at 130 ->
4e-6 at 150) is lr 0.004 with multipliers [0.5, 0.1, 0.01, 0.001] at [90, 110, 130, 150].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def step_lr_schedule(*, lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                     warmup_start_lr: float = 0.0, lr_steps: Sequence[float] = (),
                     lr_multipliers: Sequence[float] = ()) -> np.ndarray:
    """One learning rate per training step, float32 array of length epochs * steps_per_epoch."""
    if len(lr_steps) != len(lr_multipliers):
        raise ValueError(f"train.lr_steps {list(lr_steps)} and train.lr_multipliers {list(lr_multipliers)} "
                         "must have the same length")
    if list(lr_steps) != sorted(lr_steps):
        raise ValueError(f"train.lr_steps must be increasing, got {list(lr_steps)}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = epochs * steps_per_epoch
    step = np.arange(total, dtype=np.float64)
    epoch = step / steps_per_epoch
    multiplier = np.ones(total)
    for boundary, mult in zip(lr_steps, lr_multipliers):
        multiplier[epoch >= boundary] = mult
    rates = lr * multiplier
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_steps > 0:
        w = step < warmup_steps
        rates[w] = warmup_start_lr + (lr - warmup_start_lr) * step[w] / warmup_steps
    return rates.astype(np.float32)


def lr_scale_for(train_cfg, global_batch: int) -> float:
    """Linear scaling rule: `global_batch / train.base_batch_size` when `train.scale_lr`, else 1.

    `train.lr` (and the warmup target) is then the rate for a global batch of `base_batch_size`;
    `warmup_start_lr` is not scaled. The M2Det authors report that a total batch above 32 loses
    accuracy even with the rate scaled (SPEC 1.11), so more devices are best used with a smaller
    per-device batch (docs/DISTRIBUTED.md).
    """
    if not train_cfg.get("scale_lr", False):
        return 1.0
    base = int(train_cfg.get("base_batch_size", 32))
    if base < 1:
        raise ValueError(f"train.base_batch_size must be >= 1, got {base}")
    return float(global_batch) / base


def schedule_from_config(train_cfg, steps_per_epoch: int, lr_scale: float = 1.0) -> np.ndarray:
    return step_lr_schedule(lr=train_cfg.lr * lr_scale, epochs=train_cfg.epochs, steps_per_epoch=steps_per_epoch,
                            warmup_epochs=train_cfg.warmup_epochs, warmup_start_lr=train_cfg.warmup_start_lr,
                            lr_steps=train_cfg.lr_steps, lr_multipliers=train_cfg.lr_multipliers)
