"""Checks shared by the tests of our C-kernel cells (tests/test_direct_conv.py,
tests/test_group_norm_relu.py): a weighted-sum loss, the relative error, and a whole tiny
detector's loss and parameter gradients with and without the kernels."""
from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import numpy as np


class WeightedSum(nn.Cell):
    """sum(net(x) * r): its gradient with respect to net(x) is r."""

    def __init__(self, net, r):
        super().__init__()
        self.net, self.r = net, r

    def construct(self, x):
        return (self.net(x) * self.r).sum()


def rel_error(a, b):
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def batch_norm_on_moving_statistics(network: nn.Cell) -> None:
    # batch statistics of the 1 x 1 TUM maps turn 1e-7 differences into percent-level gradient changes
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.use_batch_statistics = False


def loss_and_gradients(detectors, cfg, seed: int) -> list:
    """(total loss, {parameter name: gradient}) of each detector on the same synthetic batch of 2."""
    from bench import harness
    from src.training.train_step import DetectorWithLoss

    size = cfg.model.input_size
    images = np.random.default_rng(seed).uniform(-100, 100, (2, 3, size, size))
    loc_t, conf_t = harness.synthetic_targets(cfg, 2, seed=seed)
    inputs = (ms.Tensor(images.astype(np.float32)), ms.Tensor(loc_t), ms.Tensor(conf_t))
    results = []
    for net in detectors:
        net.set_train(True)
        params = net.trainable_params()
        value, grads = ms.value_and_grad(DetectorWithLoss(net), None, params, has_aux=True)(*inputs)
        results.append((float(value[0].asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}))
    return results
