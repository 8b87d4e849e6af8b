"""Winograd F(2x2, 3x3) convolutions (m2det/winograd.py, m2det/kernels/winograd_f23.c).

Independent truth: the algorithm's identity checked in NumPy on one tile, the input transform
against B^T d B computed by hand-written tiling, and every result (outputs, gradients of input,
weight and bias, a whole detector in inference and a training step) against MindSpore's direct
convolution on the same weights.
"""
import copy
import logging
import os
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import pytest

from m2det import winograd
from src.builder import build_detector
from src.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
TINY = "tests/configs/tiny.yaml"


def setup_module():
    assert winograd.available(), f"{winograd.LIBRARY} missing: run `bash scripts/make.sh`"


def direct_conv(weight, bias=None):
    k, c = weight.shape[:2]
    conv = nn.Conv2d(c, k, 3, pad_mode="pad", padding=1, has_bias=bias is not None,
                     weight_init=ms.Tensor(weight), bias_init=None if bias is None else ms.Tensor(bias))
    return conv


def rel_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def test_f23_identity_on_one_tile():
    # Y = A^T [(G g G^T) . (B^T d B)] A is the 2x2 valid correlation of a 4x4 patch with a 3x3 filter
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = AT @ ((winograd.G @ g @ winograd.G.T) * (BT @ d @ BT.T)) @ AT.T
    expected = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_weight_transform_is_g_g_gt():
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)
    u = winograd.transform_weight(w)
    assert u.shape == (16, 3, 2)
    for k in range(3):
        for c in range(2):
            expected = winograd.G @ w[k, c].astype(np.float64) @ winograd.G.T
            np.testing.assert_allclose(u[:, k, c].reshape(4, 4), expected, rtol=1e-6, atol=1e-6)


def test_input_transform_exact():
    # x (2, 3, 5, 4): tiles of 4x4 over the input padded by 1 (and by one more row at the bottom)
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4) % 7 - 3
    v = winograd._input_transform()(ms.Tensor(x)).asnumpy()
    th, tw = 3, 2
    assert v.shape == (16, 3, 2 * th * tw)
    padded = np.zeros((2, 3, 2 * th + 2, 2 * tw + 2))
    padded[:, :, 1:6, 1:5] = x
    for n in range(2):
        for c in range(3):
            for ty in range(th):
                for tx in range(tw):
                    d = padded[n, c, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
                    expected = (BT @ d @ BT.T).reshape(16)
                    np.testing.assert_array_equal(v[:, c, n * th * tw + ty * tw + tx], expected)


@pytest.mark.parametrize("n,c,k,h,w,bias", [(1, 16, 8, 8, 8, True), (2, 5, 3, 7, 6, True), (2, 3, 4, 1, 2, False),
                                            (1, 32, 24, 9, 13, False)])
def test_matches_direct_convolution_graph_mode(n, c, k, h, w, bias):
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        rng = np.random.default_rng(n * 100 + c)
        weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32) if bias else None
        x = ms.Tensor(rng.standard_normal((n, c, h, w)).astype(np.float32))
        expected = direct_conv(weight, b)(x).asnumpy()
        got = winograd.WinogradConv2d(weight, b)(x).asnumpy()
        assert got.shape == expected.shape
        assert rel_error(expected, got) < 1e-5
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


class _WeightedSum(nn.Cell):
    def __init__(self, net, r):
        super().__init__()
        self.net, self.r = net, r

    def construct(self, x):
        return (self.net(x) * self.r).sum()


# the last case: 14 channel planes of 60 x 59, more work than one thread takes, split unevenly
@pytest.mark.parametrize("n,c,k,h,w", [(2, 5, 3, 7, 6), (1, 8, 16, 4, 5), (2, 7, 5, 60, 59)])
def test_gradients_match_direct_convolution(n, c, k, h, w):
    rng = np.random.default_rng(7)
    conv = direct_conv(rng.standard_normal((k, c, 3, 3)).astype(np.float32), rng.standard_normal(k).astype(np.float32))
    fast = winograd.WinogradConv2d(conv.weight, conv.bias, trainable=True)
    x = ms.Tensor(rng.standard_normal((n, c, h, w)).astype(np.float32))
    r = ms.Tensor(rng.standard_normal((n, k, h, w)).astype(np.float32))
    results = []
    for net in (conv, fast):
        grad_fn = ms.value_and_grad(_WeightedSum(net, r), grad_position=0, weights=[conv.weight, conv.bias])
        value, (dx, (dw, db)) = grad_fn(x)
        results.append([value.asnumpy(), dx.asnumpy(), dw.asnumpy(), db.asnumpy()])
    for name, a, b in zip(["value", "dx", "dweight", "dbias"], *results):
        assert rel_error(a, b) < 1e-5, name


def test_eligible_convolutions():
    def conv(c=128, k=128, kernel=3, stride=1, dilation=1, group=1, padding=1, pad_mode="pad"):
        return nn.Conv2d(c, k, kernel, stride=stride, dilation=dilation, group=group, pad_mode=pad_mode,
                         padding=padding if pad_mode == "pad" else 0)

    assert winograd.eligible(conv())
    assert winograd.eligible(conv(pad_mode="same"))
    assert not winograd.eligible(conv(c=64))                 # narrow input
    assert not winograd.eligible(conv(k=64))                 # narrow output (e.g. a loc head)
    assert winograd.eligible(conv(c=64, k=64), min_channels=64)
    assert not winograd.eligible(conv(kernel=1, padding=0))
    assert not winograd.eligible(conv(stride=2))
    assert not winograd.eligible(conv(dilation=2, padding=2))
    assert not winograd.eligible(conv(group=2))
    assert not winograd.eligible(conv(padding=0))
    assert not winograd.eligible(nn.Dense(4, 4))


def _tiny_detector():
    cfg = load_config(TINY)
    ms.set_seed(3)
    return cfg, build_detector(cfg)


def test_detector_inference_unchanged():
    cfg, detector = _tiny_detector()
    detector.set_train(False)
    fast = copy.deepcopy(detector)
    replaced = winograd.use_winograd(fast, min_channels=8)
    assert len(replaced) >= 10 and all(isinstance(c, winograd.WinogradConv2d)
                                       for n, c in fast.cells_and_names() if n in replaced)
    size = cfg.model.input_size
    x = ms.Tensor(np.random.default_rng(0).uniform(-100, 100, (2, 3, size, size)).astype(np.float32))
    for a, b in zip(detector(x), fast(x)):
        assert rel_error(a.asnumpy(), b.asnumpy()) < 1e-4


def test_training_step_unchanged_and_checkpoint_names_kept():
    from src.training.optimizer import build_sgd
    from src.training.train_step import DetectorWithLoss, TrainStep
    from bench import harness

    cfg, detector = _tiny_detector()
    fast = copy.deepcopy(detector)
    initial = {p.name: p.asnumpy().copy() for p in detector.get_parameters()}
    names = sorted(initial)
    replaced = winograd.use_winograd(fast, min_channels=8, trainable=True)
    assert replaced
    assert sorted(p.name for p in fast.get_parameters()) == names    # nothing added, nothing renamed
    images = np.random.default_rng(1).uniform(-100, 100, (2, 3, cfg.model.input_size, cfg.model.input_size))
    loc_t, conf_t = harness.synthetic_targets(cfg, 2, seed=1)
    inputs = (ms.Tensor(images.astype(np.float32)), ms.Tensor(loc_t), ms.Tensor(conf_t))
    losses = []
    for net in (detector, fast):
        optimizer = build_sgd(net.trainable_params(), np.full(3, 1e-4, np.float32), 0.9, 5e-4)
        step = TrainStep(DetectorWithLoss(net), optimizer, 4.0)
        step.set_train(True)
        losses.append([float(step(*inputs)[0].asnumpy()) for _ in range(3)])
    # the first loss is before any update; later ones go through train-mode BatchNorm and the
    # discrete hard-negative mining, which may amplify float rounding a little
    np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)
    trained = {p.name: p.asnumpy() for p in fast.trainable_params()}
    moved = [n for n in trained if n.rsplit(".", 1)[0] in replaced and not np.allclose(trained[n], initial[n])]
    assert moved, "the updates did not reach the swapped convolutions' weights"


def test_detector_gradients_unchanged():
    from src.training.train_step import DetectorWithLoss
    from bench import harness

    cfg, detector = _tiny_detector()
    # BatchNorm on its moving statistics: with batch statistics, tiny's 1 x 1 TUM maps normalise
    # two numbers per channel, which turns 1e-7 differences into percent-level gradient changes
    # (direct against direct with inputs changed by 1e-6: up to 12%); this way the comparison
    # measures the convolutions, to 2e-6 here
    for _, cell in detector.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.use_batch_statistics = False
    fast = copy.deepcopy(detector)
    winograd.use_winograd(fast, min_channels=8, trainable=True)
    images = np.random.default_rng(2).uniform(-100, 100, (2, 3, cfg.model.input_size, cfg.model.input_size))
    loc_t, conf_t = harness.synthetic_targets(cfg, 2, seed=2)
    inputs = (ms.Tensor(images.astype(np.float32)), ms.Tensor(loc_t), ms.Tensor(conf_t))
    grads = []
    for net in (detector, fast):
        net.set_train(True)
        loss = DetectorWithLoss(net)
        params = net.trainable_params()
        _, g = ms.value_and_grad(loss, None, params, has_aux=True)(*inputs)
        grads.append({p.name: v.asnumpy() for p, v in zip(params, g)})
    worst = max(rel_error(grads[0][n], grads[1][n]) for n in grads[0])
    assert worst < 2e-5


def test_trainer_uses_winograd_on_cpu_only(caplog):
    from src.training.trainer import _use_winograd_for_training

    caplog.set_level(logging.INFO, logger="m2det.train")
    def network():
        return nn.SequentialCell([nn.Conv2d(128, 128, 3, pad_mode="pad", padding=1), nn.ReLU(),
                                  nn.Conv2d(128, 16, 3, pad_mode="pad", padding=1)])

    def swapped(net):
        return [type(c).__name__ for c in net.cell_list]

    net = network()
    _use_winograd_for_training(net, "GPU", "O0")
    assert swapped(net) == ["Conv2d", "ReLU", "Conv2d"] and "CPU only" in caplog.text
    net = network()
    _use_winograd_for_training(net, "CPU", "O2")
    assert swapped(net) == ["Conv2d", "ReLU", "Conv2d"]
    net = network()
    weight = net.cell_list[0].weight
    _use_winograd_for_training(net, "CPU", "O0")
    assert swapped(net) == ["WinogradConv2d", "ReLU", "Conv2d"]
    assert net.cell_list[0].weight is weight


def test_trainer_takes_the_channel_threshold_from_the_config():
    """train.winograd_min_channels reaches the swap: with the schema's default (16) the narrow
    128 -> 16 convolution is swapped too (its direct backward would keep a oneDNN im2col buffer
    for the whole run), with 128 only the wide one; narrower than the threshold stays direct."""
    from src.training.trainer import _use_winograd_for_training

    def swapped(min_channels):
        net = nn.SequentialCell([nn.Conv2d(128, 128, 3, pad_mode="pad", padding=1),
                                 nn.Conv2d(128, 16, 3, pad_mode="pad", padding=1),
                                 nn.Conv2d(16, 8, 3, pad_mode="pad", padding=1)])
        _use_winograd_for_training(net, "CPU", "O0", min_channels)
        return [type(c).__name__ for c in net.cell_list]

    default = load_config(TINY).train.winograd_min_channels
    assert default == 16
    assert swapped(default) == ["WinogradConv2d", "WinogradConv2d", "Conv2d"]
    assert swapped(128) == ["WinogradConv2d", "Conv2d", "Conv2d"]


def test_custom_op_rejects_other_dtypes():
    x = ms.Tensor(np.zeros((1, 2, 4, 4), np.float16))
    with pytest.raises(Exception):
        winograd._input_transform()(x).asnumpy()


def test_inference_network_options():
    from src.inference.fast_network import inference_network

    def network():
        ms.set_seed(0)
        return nn.SequentialCell([nn.Conv2d(128, 128, 3, pad_mode="pad", padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                                  nn.Conv2d(128, 8, 3, pad_mode="pad", padding=1)])

    def kinds(net):
        return [type(c).__name__ for c in net.cell_list]

    net = network()
    assert inference_network(net, fold_bn=False, use_winograd=False, device_target="CPU") is net
    assert kinds(inference_network(net, fold_bn=True, use_winograd=True, device_target="GPU")) == [
        "Conv2d", "Identity", "ReLU", "Conv2d"]
    fast = inference_network(net, fold_bn=True, use_winograd=True, device_target="CPU")
    assert kinds(fast) == ["WinogradConv2d", "Identity", "ReLU", "Conv2d"]
    assert kinds(net) == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]          # the original is untouched
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 128, 6, 7)).astype(np.float32))
    net.set_train(False)
    assert rel_error(net(x).asnumpy(), fast(x).asnumpy()) < 1e-5


def test_importing_the_project_makes_idle_openmp_threads_sleep():
    # the transforms are OpenMP loops; libgomp's idle threads spin after every parallel region
    # unless OMP_WAIT_POLICY=PASSIVE, read when libgomp starts: next to MindSpore's own thread
    # pool that made a Winograd training step ~3x slower on a busy machine (docs/BENCHMARKS.md,
    # issue 18 item 3). `src` sets it before anything imports MindSpore; a user's value wins.
    code = "import os, src; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True)
    assert run.stdout.strip() == "ACTIVE", run.stderr


def test_usable_only_on_cpu_with_the_library(monkeypatch, caplog):
    assert winograd.usable("CPU", "test.winograd")
    assert not winograd.usable("GPU", "test.winograd")
    monkeypatch.setattr(winograd, "LIBRARY", "/nonexistent/_winograd_f23.so")
    with caplog.at_level(logging.WARNING, logger="m2det.custom_ops"):
        assert not winograd.usable("CPU", "train.winograd")
    assert "train.winograd" in caplog.text and "/nonexistent/_winograd_f23.so" in caplog.text
