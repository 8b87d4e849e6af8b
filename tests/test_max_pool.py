"""Max-pooling for CPU training by our C kernel (m2det/max_pool.py, m2det/kernels/max_pool.c).

Outputs and input gradients against a NumPy max-pool written here (first largest value of each
window in row-major order) and against nn.MaxPool2d, bit for bit, on maps full of ties (as after
a ReLU); the output sizes in floor and ceil mode; eligibility; a tiny detector's loss and
gradients; the trainer's setting and its fallbacks; the C entry points' refusals.
"""
import copy
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import max_pool
from src.config import load_config
from src.training import trainer
from tests.reference.kernel_checks import (WeightedSum, batch_norm_on_moving_statistics, call_kernel,
                                           check_missing_library, check_trainer_setting, loss_and_gradients)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "tests/configs/tiny.yaml"


def setup_module():
    assert max_pool.available(), f"{max_pool.LIBRARY} missing: run `bash scripts/make.sh`"
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def reference(x, r, window):
    """float64 y and, for the loss sum(y * r), dx: each window's maximum is its first largest
    value in row-major order; positions outside the input are never chosen."""
    kh, kw, sh, sw, ph, pw, ceil_mode = window
    n, c, h, w = x.shape
    oh = max_pool.pooled_size(h, kh, sh, ph, ceil_mode)
    ow = max_pool.pooled_size(w, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for r0 in range(i * sh - ph, i * sh - ph + kh):
                        for c0 in range(j * sw - pw, j * sw - pw + kw):
                            if 0 <= r0 < h and 0 <= c0 < w and (best is None or x[b, ch, r0, c0] > x[b, ch][best]):
                                best = (r0, c0)
                    y[b, ch, i, j] = x[b, ch][best]
                    dx[b, ch][best] += r[b, ch, i, j]
    return y, dx


def tied_maps(rng, shape):
    """ReLU'd values on a coarse grid: most windows hold ties, many are all zero."""
    return np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(np.float32)


# VGG's pools (floor, ceil on odd sizes), pool5 (3x3, stride 1, padding 1), ResNet's stem pool,
# one window per map
@pytest.mark.parametrize("pool,shape", [
    (nn.MaxPool2d(2, 2), (2, 3, 8, 10)),
    (nn.MaxPool2d(2, 2), (2, 3, 7, 9)),
    (nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="pad", ceil_mode=True), (2, 3, 7, 9)),
    (nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="pad", ceil_mode=True), (1, 2, 6, 6)),
    (nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="pad", padding=1), (2, 3, 6, 5)),
    (nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1), (2, 3, 9, 8)),
    (nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1, ceil_mode=True), (1, 2, 10, 7)),
    (nn.MaxPool2d(2, 2), (3, 2, 2, 2)),
])
def test_outputs_and_gradients_exactly(pool, shape):
    rng = np.random.default_rng(sum(shape))
    x = tied_maps(rng, shape)
    window = max_pool.pool_window(pool)
    fast = max_pool.MaxPoolKernel(window)
    want_y = pool(ms.Tensor(x)).asnumpy()
    r = rng.standard_normal(want_y.shape).astype(np.float32)
    results = []
    for net in (pool, fast):
        y = net(ms.Tensor(x)).asnumpy()
        _, dx = ms.value_and_grad(WeightedSum(net, ms.Tensor(r)), grad_position=0)(ms.Tensor(x))
        results.append((y, dx.asnumpy()))
    ref_y, ref_dx = reference(x, r, window)
    for got, want in zip(results[1], (ref_y, ref_dx)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)        # MindSpore's own pools, bit for bit


def test_all_zero_windows_send_the_gradient_to_their_first_position():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 3, 3] = x[0, 0, 2, 3] = 1.0          # a tie of ones in the last window
    fast = max_pool.MaxPoolKernel(max_pool.pool_window(nn.MaxPool2d(2, 2)))
    _, dx = ms.value_and_grad(WeightedSum(fast, ms.Tensor(np.ones((1, 1, 2, 2), np.float32))), grad_position=0)(
        ms.Tensor(x))
    want = np.zeros((4, 4), np.float32)
    want[0, 0] = want[0, 2] = want[2, 0] = want[2, 3] = 1.0
    np.testing.assert_array_equal(dx.asnumpy()[0, 0], want)


@pytest.mark.parametrize("size", [1, 2, 7, 12, 25])
def test_output_sizes_match_mindspore(size):
    pools = [nn.MaxPool2d(2, 2), nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="pad", ceil_mode=True),
             nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="pad", padding=1),
             nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1, ceil_mode=True)]
    x = ms.Tensor(np.ones((1, 1, size, size + 1), np.float32))
    for pool in pools:
        if size < 2 and pool.kernel_size == 2 and not pool.use_pad:
            continue                                  # no complete window
        want = pool(x).shape
        assert max_pool.MaxPoolKernel(max_pool.pool_window(pool))(x).shape == want


def test_eligible_pools():
    assert max_pool.pool_window(nn.MaxPool2d(2, 2)) == (2, 2, 2, 2, 0, 0, False)
    assert max_pool.pool_window(nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="pad", padding=1)) == (
        3, 3, 1, 1, 1, 1, False)
    assert max_pool.pool_window(nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="pad", ceil_mode=True))[-1] is True
    assert not max_pool.eligible(nn.MaxPool2d(3, 2, pad_mode="same"))
    assert not max_pool.eligible(nn.MaxPool2d(2, 2, pad_mode="pad", return_indices=True))
    assert not max_pool.eligible(nn.MaxPool2d(3, 1, pad_mode="pad", padding=2, dilation=2))
    assert not max_pool.eligible(nn.AvgPool2d(2, 2))
    assert not max_pool.eligible(nn.Conv2d(3, 3, 2))


def _tiny_detector():
    from src.builder import build_detector

    return build_detector(load_config(os.path.join(ROOT, TINY)))


def test_detector_loss_and_gradients_unchanged():
    cfg = load_config(os.path.join(ROOT, TINY))
    detector = _tiny_detector()
    batch_norm_on_moving_statistics(detector)
    fast = copy.deepcopy(detector)
    before = [(p.name, tuple(p.shape)) for p in fast.get_parameters()]
    replaced = max_pool.use_max_pool_kernel(fast)
    assert len(replaced) == 5                      # pool1-4 and pool5 of the VGG
    assert [(p.name, tuple(p.shape)) for p in fast.get_parameters()] == before
    assert max_pool.use_max_pool_kernel(fast) == []
    results = loss_and_gradients((detector, fast), cfg, seed=4)
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        np.testing.assert_array_equal(results[1][1][name], grad, err_msg=name)


def _kernel_cells(detector):
    return [n for n, c in detector.cells_and_names() if isinstance(c, max_pool.MaxPoolKernel)]


def test_trainer_setting_on_cpu_float32_only(caplog):
    assert load_config(os.path.join(ROOT, TINY)).train.max_pool_kernel is False          # off by default
    assert load_config(os.path.join(ROOT, "configs/m2det_lite.yaml")).train.max_pool_kernel is True
    detector = _tiny_detector()
    check_trainer_setting(trainer._use_max_pool_kernel_for_training, detector, _kernel_cells, caplog,
                          "max-pools use the kernel")
    assert len(_kernel_cells(detector)) == 5


def test_missing_library_keeps_mindspore_pools(monkeypatch, caplog):
    detector = _tiny_detector()
    check_missing_library(max_pool, "train.max_pool_kernel", trainer._use_max_pool_kernel_for_training,
                          detector, _kernel_cells, monkeypatch, caplog)
    with pytest.raises(RuntimeError, match="make.sh"):
        max_pool.use_max_pool_kernel(detector)


def _call(name, arrays, dtypes=None):
    return call_kernel(max_pool.LIBRARY, name, arrays, dtypes)


def test_c_entry_points_refuse_what_they_do_not_compute():
    x = np.zeros((1, 2, 4, 4), np.float32)
    window = np.array([2, 2, 2, 2, 0, 0], np.int32)
    y = np.zeros((1, 2, 2, 2), np.float32)
    assert _call("MaxPool", [x, window, y]) == 0
    assert _call("MaxPoolGrad", [x, y, window, np.zeros_like(x)]) == 0
    assert _call("MaxPool", [x.astype(np.float64), window, y]) != 0                   # dtype
    assert _call("MaxPool", [x, window.astype(np.int64), y]) != 0                     # window dtype
    assert _call("MaxPool", [x, window[:4], y]) != 0                                  # window length
    assert _call("MaxPool", [x, window, np.zeros((1, 3, 2, 2), np.float32)]) != 0     # channels
    assert _call("MaxPool", [x, np.array([2, 2, 0, 2, 0, 0], np.int32), y]) != 0      # stride 0
    assert _call("MaxPool", [x, window, np.zeros((1, 2, 4, 4), np.float32)]) != 0     # windows past the input
    assert _call("MaxPoolGrad", [x, y, window, np.zeros((1, 2, 4, 5), np.float32)]) != 0
