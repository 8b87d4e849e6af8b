"""BatchNorm + ReLU as one CPU kernel for training (m2det/batch_norm_relu.py,
m2det/kernels/batch_norm_relu.c).

Outputs, the gradients of input, gamma and beta and the moving statistics against a float64 NumPy
BatchNorm + ReLU written here (the textbook formulas) and against nn.BatchNorm2d then nn.ReLU with
the same Parameters; inference on the moving statistics; a whole tiny detector with a BatchNorm
VGG (loss, every parameter gradient and the moving statistics after the step); the rewrite
keeping Parameter names; the trainer's setting and its fallbacks; the C entry points' refusals.
"""
import copy
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import batch_norm_relu
from m2det.layers import BasicConv
from src.config import load_config
from src.training import trainer
from tests.reference.kernel_checks import (WeightedSum, call_kernel, check_missing_library, check_trainer_setting,
                                           loss_and_gradients, rel_error)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "tests/configs/tiny.yaml"
EPS = 1e-5


def setup_module():
    assert batch_norm_relu.available(), f"{batch_norm_relu.LIBRARY} missing: run `bash scripts/make.sh`"
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def reference(x, gamma, beta, r, eps=EPS):
    """float64: y = relu(BatchNorm(x)) with batch statistics, the batch mean and unbiased variance,
    and, for the loss sum(y * r), dx, dgamma and dbeta by the chain rule through mean and variance."""
    x, gamma, beta, r = (a.astype(np.float64) for a in (x, gamma, beta, r))
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    z = xhat * gamma[None, :, None, None] + beta[None, :, None, None]
    y = np.maximum(z, 0.0)
    dz = np.where(z > 0, r, 0.0)
    dbeta = dz.sum(axis=axes)
    dgamma = (dz * xhat).sum(axis=axes)
    dxhat = dz * gamma[None, :, None, None]
    dx = rstd * (dxhat - dxhat.sum(axis=axes, keepdims=True) / m
                 - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True) / m)
    return y, dx, dgamma, dbeta, mean.ravel(), var.ravel() * m / (m - 1)


class _Unfused(nn.Cell):
    def __init__(self, norm):
        super().__init__()
        self.norm, self.relu = norm, nn.ReLU()

    def construct(self, x):
        return self.relu(self.norm(x))


def _norm(c, rng, momentum=0.9):
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    norm = nn.BatchNorm2d(c, eps=EPS, momentum=momentum, gamma_init=ms.Tensor(gamma), beta_init=ms.Tensor(beta),
                          moving_mean_init=ms.Tensor(rng.uniform(-1, 1, c).astype(np.float32)),
                          moving_var_init=ms.Tensor(rng.uniform(0.5, 2, c).astype(np.float32)))
    return norm, gamma, beta


# odd sizes, batch 1, 1 x W maps, 1 x 1 maps over a batch, a plane shorter than the kernel's
# chunk of 256 and one longer with a remainder, and the lite model's first layer (8 channels at
# 192 px, batch 8)
@pytest.mark.parametrize("n,c,h,w", [(2, 6, 5, 7), (1, 4, 3, 3), (3, 5, 1, 9), (6, 3, 1, 1), (2, 4, 17, 19),
                                     (8, 8, 192, 192)])
def test_outputs_gradients_and_moving_statistics(n, c, h, w):
    rng = np.random.default_rng(n * 1000 + c * 10 + h)
    x = (rng.standard_normal((n, c, h, w)) * 3 + 5).astype(np.float32)      # mean 5: the shifted sums matter
    r = rng.standard_normal((n, c, h, w)).astype(np.float32)
    results = []
    for fused in (False, True):
        norm, gamma, beta = _norm(c, np.random.default_rng(c))
        moving = [norm.moving_mean.asnumpy().copy(), norm.moving_variance.asnumpy().copy()]
        net = batch_norm_relu.BatchNormReLU(norm) if fused else _Unfused(norm)
        net.set_train(True)
        _, (dx, (dgamma, dbeta)) = ms.value_and_grad(WeightedSum(net, ms.Tensor(r)), grad_position=0,
                                                     weights=[norm.gamma, norm.beta])(ms.Tensor(x))
        moved = [norm.moving_mean.asnumpy().copy(), norm.moving_variance.asnumpy().copy()]
        y = net(ms.Tensor(x)).asnumpy()          # a second forward: moves the statistics once more
        results.append([y, dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy(), *moved])
    y, dx, dgamma, dbeta, mean, var = reference(x, gamma, beta, r)
    expected = [y, dx, dgamma, dbeta, 0.9 * moving[0] + 0.1 * mean, 0.9 * moving[1] + 0.1 * var]
    names = ["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"]
    for got, got_ms, want, name in zip(results[1], results[0], expected, names):
        assert got.shape == want.shape, name
        assert rel_error(got, want) < 3e-6, name
        assert rel_error(got, got_ms) < 1e-5, name
    assert (results[1][0] == 0).any() and (results[1][0] > 0).any()     # both sides of the ReLU were taken


def test_inference_uses_the_moving_statistics():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    norm, _, _ = _norm(4, rng)
    fused, unfused = batch_norm_relu.BatchNormReLU(norm), _Unfused(norm)
    fused.set_train(False)
    unfused.set_train(False)
    before = norm.moving_mean.asnumpy().copy()
    np.testing.assert_allclose(fused(ms.Tensor(x)).asnumpy(), unfused(ms.Tensor(x)).asnumpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(norm.moving_mean.asnumpy(), before)


def test_a_constant_channel_gives_relu_of_beta():
    # zero variance: xhat = 0, so y = relu(beta), and the shifted sums give exactly 0 (no NaN)
    norm, _, beta = _norm(4, np.random.default_rng(1))
    fused = batch_norm_relu.BatchNormReLU(norm)
    fused.set_train(True)
    x = np.full((2, 4, 3, 3), 7.0, np.float32)
    y = fused(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(y, np.maximum(beta, 0)[None, :, None, None] * np.ones_like(x))


def test_cell_refuses_a_norm_it_does_not_compute():
    with pytest.raises(ValueError, match="not an affine NCHW nn.BatchNorm2d"):
        batch_norm_relu.BatchNormReLU(nn.BatchNorm2d(4, use_batch_statistics=True))
    with pytest.raises(ValueError, match="not an affine NCHW nn.BatchNorm2d"):
        batch_norm_relu.BatchNormReLU(nn.GroupNorm(2, 4))


def _call(name, arrays, dtypes=None):
    return call_kernel(batch_norm_relu.LIBRARY, name, arrays, dtypes)


def test_kernels_refuse_what_they_do_not_compute():
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 3)).astype(np.float32)
    gamma, beta, eps = np.ones(6, np.float32), np.zeros(6, np.float32), np.array([EPS], np.float32)
    moving, weight = [np.zeros(6, np.float32), np.ones(6, np.float32)], np.array([0.1], np.float32)
    inputs = [x, gamma, beta, eps, *moving, weight]
    y, mean, rstd, moved_mean, moved_var = np.empty_like(x), *(np.empty(6, np.float32) for _ in range(4))
    outputs = [y, mean, rstd, moved_mean, moved_var]
    assert _call("BatchNormReLU", inputs + outputs) == 0
    want = reference(x, gamma, beta, x)
    np.testing.assert_allclose(y, want[0], atol=2e-6)
    np.testing.assert_allclose(moved_mean, 0.1 * want[4], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(moved_var, 0.9 + 0.1 * want[5], rtol=1e-6)
    assert _call("BatchNormReLU", inputs + outputs[:-1]) == 1                              # an output missing
    assert _call("BatchNormReLU", inputs + outputs, ["float64"] + [None] * 11) == 2
    assert _call("BatchNormReLU", [x[0]] + inputs[1:] + outputs) == 1                      # not 4-D
    assert _call("BatchNormReLU", [x, gamma[:5]] + inputs[2:] + outputs) == 4              # gamma of 5
    assert _call("BatchNormReLU", inputs[:4] + [moving[0][:5]] + inputs[5:] + outputs) == 4  # moving mean of 5
    assert _call("BatchNormReLU", inputs[:6] + [np.ones(2, np.float32)] + outputs) == 5   # w of 2
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    grad_inputs = [x, gamma, beta, mean, rstd, x, dx, dgamma, dbeta]
    assert _call("BatchNormReLUGrad", grad_inputs) == 0
    assert _call("BatchNormReLUGrad", grad_inputs[:-1]) == 1
    assert _call("BatchNormReLUGrad", grad_inputs, [None] * 5 + ["float16"] + [None] * 3) == 2
    assert _call("BatchNormReLUGrad", [x, gamma, beta, mean, rstd, x[:1], dx, dgamma, dbeta]) == 5  # dy's shape


def _tiny_detector(overrides=()):
    from src.builder import build_detector

    ms.set_seed(0)
    return build_detector(load_config(os.path.join(ROOT, TINY), list(overrides)))


def _fused(detector):
    return [n for n, c in detector.cells_and_names() if isinstance(c, batch_norm_relu.BatchNormReLU)]


def test_rewrite_keeps_parameters_and_names():
    detector = _tiny_detector(["model.backbone.batch_norm=true"])
    before = [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()]
    norms = [n for n, c in detector.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    basic = [n for n, c in detector.cells_and_names() if isinstance(c, BasicConv) and c.use_bn]
    rewritten = batch_norm_relu.use_batch_norm_relu(detector)
    # every BatchNorm that a ReLU follows: the VGG's 15 pairs and every BN BasicConv's; not the
    # MLFPN's lone BatchNorm on the largest scale (no ReLU after it)
    assert sum(".backbone." in f".{p}" for p in rewritten) == 15
    assert {p.rsplit(".", 1)[0] for p in rewritten if p.endswith(".bn")} == set(basic)
    assert set(norms) - set(rewritten) == {"neck.norm"}
    cells = dict(detector.cells_and_names())
    for path in rewritten:
        parent, name = path.rsplit(".", 1)
        relu = "relu" if name == "bn" else str(int(name) + 1)
        assert isinstance(cells[path], batch_norm_relu.BatchNormReLU)
        assert isinstance(cells[f"{parent}.{relu}"], nn.Identity)
    assert [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()] == before
    assert batch_norm_relu.use_batch_norm_relu(detector) == []          # nothing left to rewrite


def test_detector_gradients_and_moving_statistics_unchanged():
    # GroupNorm TUMs: a BatchNorm over the 1 x 1 TUM maps of a batch of 2 turns 1e-7 differences
    # into percent-level gradient changes. The VGG's and the FFMs' BatchNorms stay in batch mode,
    # where float32 rounding alone moves the gradients by ~1e-4 (ReLU masks and batch statistics
    # through 18 layers): the kernels are held to what scaling the input by 1 + 1e-6 does to
    # MindSpore's own gradients (BatchNorm makes the network nearly invariant to that scale)
    overrides = ["model.backbone.batch_norm=true", "model.neck.mlfpn.tum_norm=gn"]
    cfg = load_config(os.path.join(ROOT, TINY), overrides)
    detector = _tiny_detector(overrides)
    fast = copy.deepcopy(detector)
    assert len(batch_norm_relu.use_batch_norm_relu(fast)) == 18      # 15 in the VGG, 3 in the FFMs
    initial = {p.name: p.asnumpy().copy() for p in fast.get_parameters() if "moving_" in p.name}
    reference_run, rounding_run, fast_run = loss_and_gradients((detector, copy.deepcopy(detector), fast), cfg,
                                                               seed=3, input_scales=[1.0, 1.0 + 1e-6, 1.0])
    assert reference_run[1].keys() == fast_run[1].keys()
    np.testing.assert_allclose(fast_run[0], reference_run[0], rtol=1e-5)

    def errors(run):
        return np.array([rel_error(run[1][n], reference_run[1][n]) for n in reference_run[1]])

    rounding, kernel = errors(rounding_run), errors(fast_run)
    assert 0 < rounding.max() < 1e-3
    assert kernel.max() < 3 * rounding.max() and np.median(kernel) < 3 * np.median(rounding)
    moving = [(a, b) for a, b in zip(detector.get_parameters(), fast.get_parameters()) if "moving_" in a.name]
    assert len(moving) > 30
    for a, b in moving:
        assert a.name == b.name
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
    assert all((fast.parameters_dict()[name].asnumpy() != value).any() for name, value in initial.items())


def _kernel_cells(detector):
    return [n for n, c in detector.cells_and_names() if isinstance(c, batch_norm_relu.BatchNormReLU)]


def test_trainer_setting_on_cpu_float32_only(caplog):
    assert load_config(os.path.join(ROOT, TINY)).train.batch_norm_relu_kernel is False          # off by default
    assert load_config(os.path.join(ROOT, "configs/m2det_lite.yaml")).train.batch_norm_relu_kernel is True
    detector = _tiny_detector()
    check_trainer_setting(trainer._use_batch_norm_relu_for_training, detector, _kernel_cells, caplog,
                          "BatchNorm + ReLU pairs use the kernel")


def test_missing_library_keeps_mindspore_batch_norm(monkeypatch, caplog):
    detector = _tiny_detector()
    check_missing_library(batch_norm_relu, "train.batch_norm_relu_kernel", trainer._use_batch_norm_relu_for_training,
                          detector, _kernel_cells, monkeypatch, caplog)
    with pytest.raises(RuntimeError, match="make.sh"):
        batch_norm_relu.use_batch_norm_relu(detector)
