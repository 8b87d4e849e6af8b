"""Learning-rate schedules: linear warmup, then multi-step decay by epoch (REFERENCE 1.11), or a
cosine or linear annealing to `min_lr_ratio * lr` at the last step (mmdetection's
CosineAnnealing / linear decay; short runs from scratch, e.g. the quickstart).

    warmup (epoch < warmup_epochs): lr(t) = start + (lr - start) * t / (warmup_epochs * steps)
    step:    lr * multiplier of the last lr_step <= epoch (1 before any)
    cosine:  lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,  p = (t - W) / (T - 1 - W)
    linear:  lr_min + (lr - lr_min) * (1 - p)
             (t: step, W: warmup steps, T: total steps; p runs from 0 after the warmup to 1 at
             the last step, so the last step trains at lr_min)

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


def annealed_lr_schedule(*, lr: float, epochs: float, steps_per_epoch: int, shape: str = "cosine",
                         warmup_epochs: float = 0.0, warmup_start_lr: float = 0.0,
                         min_lr_ratio: float = 0.0) -> np.ndarray:
    """One learning rate per step: warmup, then cosine or linear annealing to lr * min_lr_ratio."""
    if shape not in ANNEALED_SHAPES:
        raise ValueError(f"unknown annealing shape {shape!r}; expected one of {ANNEALED_SHAPES}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    total = int(round(epochs * steps_per_epoch))
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total)
    step = np.arange(total, dtype=np.float64)
    lr_min = lr * min_lr_ratio
    span = max(total - 1 - warmup_steps, 1)
    progress = np.clip((step - warmup_steps) / span, 0.0, 1.0)
    if shape == "cosine":
        rates = lr_min + (lr - lr_min) * 0.5 * (1.0 + np.cos(np.pi * progress))
    else:
        rates = lr_min + (lr - lr_min) * (1.0 - progress)
    if warmup_steps > 0:
        w = step < warmup_steps
        rates[w] = warmup_start_lr + (lr - warmup_start_lr) * step[w] / warmup_steps
    return rates.astype(np.float32)


ANNEALED_SHAPES = ("cosine", "linear")
SCHEDULES = ("step",) + ANNEALED_SHAPES


def linear_scale(global_batch: int, base_batch_size: int) -> float:
    """Linear scaling rule: the rate multiplier `global_batch / base_batch_size`.

    The configured rate (and the warmup target) is then the rate for a global batch of
    `base_batch_size`; the warmup start is not scaled. The M2Det authors report that a total
    batch above 32 loses accuracy even with the rate scaled (REFERENCE 1.11), so more devices
    are best used with a smaller per-device batch (docs/DISTRIBUTED.md).
    """
    if base_batch_size < 1:
        raise ValueError(f"train.base_batch_size must be >= 1, got {base_batch_size}")
    return float(global_batch) / base_batch_size


def lr_schedule(kind: str, *, lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                warmup_start_lr: float, lr_steps, lr_multipliers, min_lr_ratio: float = 0.0) -> np.ndarray:
    """The per-step rates of schedule `kind` (step | cosine | linear)."""
    if kind not in SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind != "step":
        return annealed_lr_schedule(lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, shape=kind,
                                    warmup_epochs=warmup_epochs, warmup_start_lr=warmup_start_lr,
                                    min_lr_ratio=min_lr_ratio)
    return step_lr_schedule(lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs,
                            warmup_start_lr=warmup_start_lr, lr_steps=lr_steps, lr_multipliers=lr_multipliers)
