"""Checks shared by the tests of our C-kernel cells (tests/test_direct_conv.py,
tests/test_group_norm_relu.py, tests/test_batch_norm_relu.py, tests/test_max_pool.py): a
weighted-sum loss, the relative error, a whole tiny detector's loss and parameter gradients with
and without the kernels, a direct call of a C entry point, and the checks of a trainer setting
that turns a kernel on."""
from __future__ import annotations

import ctypes
import logging
import os

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


def loss_and_gradients(detectors, cfg, seed: int, input_scales=None) -> list:
    """(total loss, {parameter name: gradient}) of each detector on the same synthetic batch of 2
    (its images times `input_scales[i]` for detector i, if given)."""
    from bench import harness
    from src.training.train_step import DetectorWithLoss

    size = cfg.model.input_size
    images = np.random.default_rng(seed).uniform(-100, 100, (2, 3, size, size))
    loc_t, conf_t = harness.synthetic_targets(cfg, 2, seed=seed)
    inputs = (ms.Tensor(images.astype(np.float32)), ms.Tensor(loc_t), ms.Tensor(conf_t))
    results = []
    for i, net in enumerate(detectors):
        net.set_train(True)
        params = net.trainable_params()
        scaled = inputs if input_scales is None else (inputs[0] * input_scales[i],) + inputs[1:]
        value, grads = ms.value_and_grad(DetectorWithLoss(net), None, params, has_aux=True)(*scaled)
        results.append((float(value[0].asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}))
    return results


def call_kernel(library: str, name: str, arrays, dtypes=None) -> int:
    """Call the C entry point `name` of `library` the way MindSpore's aot operators do (every
    input, then every output) and return its code; `dtypes[i]`, if given and not None, is the
    dtype name passed for array i instead of its own."""
    lib = ctypes.CDLL(library)
    count = len(arrays)
    params = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
    ndims = (ctypes.c_int * count)(*[a.ndim for a in arrays])
    shape_arrays = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    shapes = (ctypes.POINTER(ctypes.c_int64) * count)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64))
                                                         for s in shape_arrays])
    names = [str(a.dtype) if d is None else d for a, d in zip(arrays, dtypes or [None] * count)]
    return getattr(lib, name)(count, params, ndims, shapes, (ctypes.c_char_p * count)(*[n.encode() for n in names]),
                              None, None)


def check_trainer_setting(hook, detector, cells, caplog, message: str) -> None:
    """A trainer hook `hook(detector, device_target, amp_level, enabled)` rewrites nothing when
    off, on GPU or in O2, then rewrites on CPU in float32 and logs `message` after the number of
    cells it made (`cells(detector)` lists them)."""
    from src.training import trainer

    hook(detector, "CPU", "O0", False)
    hook(detector, "GPU", "O0", True)
    hook(detector, "CPU", "O2", True)
    assert not cells(detector)
    with caplog.at_level(logging.INFO, logger=trainer.log.name):
        hook(detector, "CPU", "O0", True)
    assert cells(detector)
    assert f"{len(cells(detector))} {message}" in caplog.text


def check_missing_library(kernels, setting: str, hook, detector, cells, monkeypatch, caplog) -> None:
    """With the library of `kernels` (a module of m2det with LIBRARY) missing, the hook leaves
    MindSpore's operators and logs a warning naming `setting` and how to build it."""
    monkeypatch.setattr(kernels, "LIBRARY", "/nonexistent/" + os.path.basename(kernels.LIBRARY))
    with caplog.at_level(logging.WARNING, logger="m2det.custom_ops"):
        hook(detector, "CPU", "O0", True)
    assert not cells(detector)
    assert setting in caplog.text and "scripts/make.sh" in caplog.text
