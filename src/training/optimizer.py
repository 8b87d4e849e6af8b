"""Optimizers: SGD with momentum (the reference) or AdamW; weight decay on conv/linear weights only.

Biases and BatchNorm/GroupNorm parameters (every 1-D parameter) are not decayed, as in the
MindSpore model zoo's M2Det and the usual detection practice. AdamW is not in the reference:
it trains the narrow lite models from scratch much faster in a short CPU budget.

MindSpore's `nn.AdamWeightDecay` has no bias correction (it is BERT's optimizer): for the first
few thousand steps its updates are up to 3.2x those of PyTorch's AdamW at the same learning rate
(m_t / sqrt(v_t) without the 1 / (1 - beta1^t) and sqrt(1 - beta2^t) factors), which stalled the
lite model exactly as a 3x larger rate stalls it in PyTorch. `build_optimizer('adamw', ...)`
folds the correction into the per-step rate, lr_t * sqrt(1 - beta2^t) / (1 - beta1^t), so the
gradient part of every update equals torch.optim.AdamW's (up to where eps is added: 1e-8 is
scaled by the same factor). The decoupled decay term is scaled by that factor too (0.32 at the
first step, 0.95 after 3,000): a slightly weaker decay early in training.
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


ADAM_BETAS = (0.9, 0.999)


def adam_bias_corrected_lr(lr_per_step: np.ndarray, betas=ADAM_BETAS) -> np.ndarray:
    """lr_t * sqrt(1 - beta2^t) / (1 - beta1^t) for t = 1, 2, ... (Adam's bias correction)."""
    lr = np.asarray(lr_per_step, dtype=np.float64)
    t = np.arange(1, lr.shape[0] + 1, dtype=np.float64)
    return (lr * np.sqrt(1.0 - betas[1] ** t) / (1.0 - betas[0] ** t)).astype(np.float32)


def build_optimizer(name: str, params, lr_per_step: np.ndarray, momentum: float,
                    weight_decay: float) -> nn.Optimizer:
    """`train.optimizer`: 'sgd' (momentum = `momentum`) or 'adamw' (beta1 = 0.9, beta2 = 0.999)."""
    if name == "sgd":
        return build_sgd(params, lr_per_step, momentum, weight_decay)
    if name == "adamw":
        lr = adam_bias_corrected_lr(lr_per_step, ADAM_BETAS)
        return nn.AdamWeightDecay(_groups(params, weight_decay), learning_rate=Tensor(lr),
                                  beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], eps=1e-8)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got '{name}'")
