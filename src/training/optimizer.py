"""Optimizers: SGD with momentum (the reference) or AdamW; weight decay on conv/linear weights only.

Biases and BatchNorm/GroupNorm parameters (every 1-D parameter) are not decayed, as in the
MindSpore model zoo's M2Det and the usual detection practice. AdamW is not in the reference:
it trains the narrow lite models from scratch much faster in a short CPU budget.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn


def split_decay_params(params):
    decay, no_decay = [], []
    for p in params:
        (no_decay if len(p.shape) <= 1 else decay).append(p)
    return decay, no_decay


def _groups(params, weight_decay: float) -> list[dict]:
    decay, no_decay = split_decay_params(params)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_sgd(params, lr_per_step: np.ndarray, momentum: float, weight_decay: float) -> nn.Optimizer:
    """`lr_per_step` is the whole schedule; the optimizer indexes it by its global step."""
    return nn.SGD(_groups(params, weight_decay), learning_rate=Tensor(lr_per_step), momentum=momentum)


def build_optimizer(name: str, params, lr_per_step: np.ndarray, momentum: float,
                    weight_decay: float) -> nn.Optimizer:
    """`train.optimizer`: 'sgd' (momentum = `momentum`) or 'adamw' (beta1 = 0.9, beta2 = 0.999)."""
    if name == "sgd":
        return build_sgd(params, lr_per_step, momentum, weight_decay)
    if name == "adamw":
        return nn.AdamWeightDecay(_groups(params, weight_decay), learning_rate=Tensor(lr_per_step),
                                  beta1=0.9, beta2=0.999, eps=1e-8)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got '{name}'")
