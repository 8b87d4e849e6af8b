"""GroupNorm + ReLU as one CPU kernel for training (m2det/group_norm_relu.py,
m2det/kernels/group_norm_relu.c).

Outputs and the gradients of input, gamma and beta against a float64 NumPy GroupNorm + ReLU
written here (the textbook formulas) and against nn.GroupNorm then nn.ReLU with the same
Parameters; a whole tiny detector with GroupNorm TUMs (loss and every parameter gradient); the
rewrite keeping Parameter names; the trainer's setting and its fallbacks; the C entry points'
refusals.
"""
import copy
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import group_norm_relu
from m2det.layers import BasicConv
from src.config import load_config
from src.training import trainer
from tests.reference.kernel_checks import (WeightedSum, batch_norm_on_moving_statistics, call_kernel,
                                           check_missing_library, check_trainer_setting, loss_and_gradients,
                                           rel_error)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "tests/configs/tiny.yaml"
EPS = 1e-5


def setup_module():
    assert group_norm_relu.available(), f"{group_norm_relu.LIBRARY} missing: run `bash scripts/make.sh`"
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def reference(x, gamma, beta, groups, r, eps=EPS):
    """float64: y = relu(GroupNorm(x)) and, for the loss sum(y * r), dx, dgamma and dbeta, with
    z = xhat * gamma + beta, dz = r where z > 0, by the chain rule through mean and variance."""
    x, gamma, beta, r = (a.astype(np.float64) for a in (x, gamma, beta, r))
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    xhat = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    z = xhat * gamma[None, :, None, None] + beta[None, :, None, None]
    y = np.maximum(z, 0.0)
    dz = np.where(z > 0, r, 0.0)
    dbeta = dz.sum(axis=(0, 2, 3))
    dgamma = (dz * xhat).sum(axis=(0, 2, 3))
    dxhat = (dz * gamma[None, :, None, None]).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    m = xh.shape[2]
    # d/dx of (x - mean) / sqrt(var + eps) applied to dxhat
    dx = (dxhat - dxhat.sum(axis=2, keepdims=True) / m
          - xh * (dxhat * xh).sum(axis=2, keepdims=True) / m) / np.sqrt(var + eps)
    return y, dx.reshape(x.shape), dgamma, dbeta


class _Unfused(nn.Cell):
    def __init__(self, norm):
        super().__init__()
        self.norm, self.relu = norm, nn.ReLU()

    def construct(self, x):
        return self.relu(self.norm(x))


# G = C (one channel per group), G = 1 (layer norm), 1x1 and 1 x W maps, batch 1, odd sizes,
# and the lite model's TUM shape (48 channels in 16 groups at 24 px, batch 8)
@pytest.mark.parametrize("n,c,groups,h,w", [(2, 6, 3, 5, 7), (1, 4, 4, 3, 3), (3, 8, 1, 2, 5), (4, 6, 2, 1, 1),
                                            (2, 12, 4, 1, 9), (8, 48, 16, 24, 24)])
def test_outputs_and_gradients(n, c, groups, h, w):
    rng = np.random.default_rng(n * 1000 + c * 10 + groups + h)
    x = (rng.standard_normal((n, c, h, w)) * 3 + 1).astype(np.float32)
    r = rng.standard_normal((n, c, h, w)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    norm = nn.GroupNorm(groups, c, eps=EPS, gamma_init=ms.Tensor(gamma), beta_init=ms.Tensor(beta))
    fused = group_norm_relu.GroupNormReLU(norm.gamma, norm.beta, groups, EPS)
    results = []
    for net in (_Unfused(norm), fused):
        y = net(ms.Tensor(x)).asnumpy()
        _, (dx, (dgamma, dbeta)) = ms.value_and_grad(WeightedSum(net, ms.Tensor(r)), grad_position=0,
                                                     weights=[norm.gamma, norm.beta])(ms.Tensor(x))
        results.append([y, dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()])
    expected = reference(x, gamma, beta, groups, r)
    for got, got_ms, want, name in zip(results[1], results[0], expected, ["y", "dx", "dgamma", "dbeta"]):
        assert got.shape == want.shape, name
        assert rel_error(got, want) < 2e-6, name
        assert rel_error(got, got_ms) < 1e-5, name
    assert (results[1][0] == 0).any() and (results[1][0] > 0).any()     # both sides of the ReLU were taken


def test_a_constant_group_gives_beta():
    # zero variance: xhat = 0, so y = relu(beta) and no NaN from 0 / sqrt(0 + eps)
    x = np.full((1, 4, 3, 3), 7.0, np.float32)
    beta = np.array([0.5, -0.5, 1.0, 0.0], np.float32)
    fused = group_norm_relu.GroupNormReLU(ms.Parameter(ms.Tensor(np.ones(4, np.float32)), name="g"),
                                          ms.Parameter(ms.Tensor(beta), name="b"), 2, EPS)
    y = fused(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(y, np.maximum(beta, 0)[None, :, None, None] * np.ones_like(x))


def test_cell_refuses_groups_that_do_not_divide():
    gamma = ms.Parameter(ms.Tensor(np.ones(6, np.float32)), name="g")
    beta = ms.Parameter(ms.Tensor(np.zeros(6, np.float32)), name="b")
    with pytest.raises(ValueError, match="6 channels do not split into 4 groups"):
        group_norm_relu.GroupNormReLU(gamma, beta, 4, EPS)


def _call(name, arrays, dtypes=None):
    return call_kernel(group_norm_relu.LIBRARY, name, arrays, dtypes)


def test_kernels_refuse_what_they_do_not_compute():
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 3)).astype(np.float32)
    gamma, beta, eps = np.ones(6, np.float32), np.zeros(6, np.float32), np.array([EPS], np.float32)
    y, mean, rstd = np.empty_like(x), np.empty((2, 3), np.float32), np.empty((2, 3), np.float32)
    assert _call("GroupNormReLU", [x, gamma, beta, eps, y, mean, rstd]) == 0
    np.testing.assert_allclose(y, reference(x, gamma, beta, 3, x)[0], atol=2e-6)
    assert _call("GroupNormReLU", [x, gamma, beta, eps, y, mean]) == 1                     # an output missing
    assert _call("GroupNormReLU", [x, gamma, beta, eps, y, mean, rstd], ["float64"] + [None] * 6) == 2
    bad = np.empty((2, 4), np.float32)                                                     # 6 channels, 4 groups
    assert _call("GroupNormReLU", [x, gamma, beta, eps, y, bad, bad.copy()]) == 3
    assert _call("GroupNormReLU", [x, gamma[:5], beta, eps, y, mean, rstd]) == 3           # gamma of 5
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    grad_inputs = [x, gamma, mean, rstd, y, x, dx, dgamma, dbeta]
    assert _call("GroupNormReLUGrad", grad_inputs) == 0
    assert _call("GroupNormReLUGrad", grad_inputs[:-1]) == 1
    assert _call("GroupNormReLUGrad", grad_inputs, [None] * 5 + ["float16"] + [None] * 3) == 2


def _tiny_detector(norm="gn"):
    from src.builder import build_detector

    ms.set_seed(0)
    return build_detector(load_config(os.path.join(ROOT, TINY), [f"model.neck.mlfpn.tum_norm={norm}"]))


def test_rewrite_keeps_parameters_and_names():
    detector = _tiny_detector()
    before = [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()]
    gn_convs = [n for n, c in detector.cells_and_names() if isinstance(c, BasicConv) and not c.use_bn]
    rewritten = group_norm_relu.use_group_norm_relu(detector)
    assert gn_convs and rewritten == gn_convs
    cells = dict(detector.cells_and_names())
    for path in rewritten:
        assert isinstance(cells[path].gn, group_norm_relu.GroupNormReLU) and isinstance(cells[path].relu, nn.Identity)
    assert [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()] == before
    assert group_norm_relu.use_group_norm_relu(detector) == []          # nothing left to rewrite
    assert group_norm_relu.use_group_norm_relu(_tiny_detector("bn")) == []


def test_detector_gradients_unchanged():
    cfg = load_config(os.path.join(ROOT, TINY), ["model.neck.mlfpn.tum_norm=gn"])
    detector = _tiny_detector()
    batch_norm_on_moving_statistics(detector)        # the VGG's BatchNorm
    fast = copy.deepcopy(detector)
    assert group_norm_relu.use_group_norm_relu(fast)
    results = loss_and_gradients((detector, fast), cfg, seed=3)
    assert results[0][1].keys() == results[1][1].keys()
    assert any(".gn." in name for name in results[0][1])
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    worst = max(rel_error(results[1][1][n], results[0][1][n]) for n in results[0][1])
    assert worst < 2e-5


def _kernel_cells(detector):
    return [n for n, c in detector.cells_and_names() if isinstance(c, group_norm_relu.GroupNormReLU)]


def test_trainer_setting_on_cpu_float32_only(caplog):
    assert load_config(os.path.join(ROOT, TINY)).train.group_norm_relu_kernel is False          # off by default
    assert load_config(os.path.join(ROOT, "configs/m2det_lite.yaml")).train.group_norm_relu_kernel is True
    detector = _tiny_detector()
    check_trainer_setting(trainer._use_group_norm_relu_for_training, detector, _kernel_cells, caplog,
                          "GroupNorm + ReLU pairs use the kernel")


def test_missing_library_keeps_mindspore_group_norm(monkeypatch, caplog):
    detector = _tiny_detector()
    check_missing_library(group_norm_relu, "train.group_norm_relu_kernel", trainer._use_group_norm_relu_for_training,
                          detector, _kernel_cells, monkeypatch, caplog)
    with pytest.raises(RuntimeError, match="make.sh"):
        group_norm_relu.use_group_norm_relu(detector)
