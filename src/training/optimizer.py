"""SGD with momentum; weight decay on convolution/linear weights only.

Biases and BatchNorm/GroupNorm parameters (every 1-D parameter) are not decayed, as in the
MindSpore model zoo's M2Det and the usual detection practice.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn


def split_decay_params(params):
    decay, no_decay = [], []
    for p in params:
        (no_decay if len(p.shape) <= 1 else decay).append(p)
    return decay, no_decay


def build_sgd(params, lr_per_step: np.ndarray, momentum: float, weight_decay: float) -> nn.Optimizer:
    """`lr_per_step` is the whole schedule; the optimizer indexes it by its global step."""
    decay, no_decay = split_decay_params(params)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return nn.SGD(groups, learning_rate=Tensor(lr_per_step), momentum=momentum)
