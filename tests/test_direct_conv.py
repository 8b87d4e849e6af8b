"""Narrow convolutions for CPU training: direct 3x3 kernels (m2det/direct_conv.py,
m2det/kernels/direct_conv3x3.c) and unpadded convolutions as MatMuls (m2det/matmul_conv.py).

Outputs and the gradients of input, weight and bias against a float64 NumPy convolution written
here (explicit sums over the window) and against nn.Conv2d with the same Parameters; the
eligibility rules; the swaps keeping Parameter names; the trainer's settings and their fallbacks.
"""
import logging
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import direct_conv, matmul_conv
from src.config import load_config
from src.training import trainer
from tests.reference.kernel_checks import WeightedSum, batch_norm_on_moving_statistics, loss_and_gradients, rel_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "tests/configs/tiny.yaml"


def setup_module():
    assert direct_conv.available(), f"{direct_conv.LIBRARY} missing: run `bash scripts/make.sh`"
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def conv2d(weight, bias=None):
    k, c = weight.shape[:2]
    return nn.Conv2d(c, k, 3, pad_mode="pad", padding=1, has_bias=bias is not None,
                     weight_init=ms.Tensor(weight), bias_init=None if bias is None else ms.Tensor(bias))


def reference(x, w, b, r, pad=1):
    """float64: y = conv(x, w) + b (stride 1, `pad` zeros on every side) and, for the loss
    sum(y * r), dx, dw and db, by explicit sums over the window of the zero-padded input."""
    x, w, r = x.astype(np.float64), w.astype(np.float64), r.astype(np.float64)
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    y = np.zeros((n, w.shape[0], oh, ow))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i:i + oh, j:j + ow]                          # (n, c, oh, ow)
            y += np.einsum("nchw,kc->nkhw", window, w[:, :, i, j])
            dw[:, :, i, j] = np.einsum("nkhw,nchw->kc", r, window)
            dxp[:, :, i:i + oh, j:j + ow] += np.einsum("nkhw,kc->nchw", r, w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y, dxp[:, :, pad:pad + h, pad:pad + wd], dw, r.sum(axis=(0, 2, 3))



# odd sizes, C != K, batches > 1; 1 x 1 maps; K not a multiple of the kernels' 4-channel blocks;
# a case with many 2048-position chunks of the filter gradient (uneven across the threads)
@pytest.mark.parametrize("n,c,k,h,w,bias", [(2, 3, 5, 7, 9, True), (3, 8, 6, 5, 4, False), (2, 4, 3, 1, 1, True),
                                            (2, 16, 9, 12, 13, False), (3, 5, 7, 61, 47, True)])
def test_outputs_and_gradients(n, c, k, h, w, bias):
    rng = np.random.default_rng(n * 100 + c * 10 + k)
    weight = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    r = rng.standard_normal((n, k, h, w)).astype(np.float32)
    conv = conv2d(weight, b)
    fast = direct_conv.DirectConv3x3(conv.weight, conv.bias if bias else None)
    params = [conv.weight, conv.bias] if bias else [conv.weight]
    results = []
    for net in (conv, fast):
        y = net(ms.Tensor(x)).asnumpy()
        _, (dx, dparams) = ms.value_and_grad(WeightedSum(net, ms.Tensor(r)), grad_position=0, weights=params)(
            ms.Tensor(x))
        results.append([y, dx.asnumpy()] + [g.asnumpy() for g in dparams])
    expected = reference(x, weight, b, r)
    names = ["y", "dx", "dweight", "dbias"]
    for got_ours, got_ms, want, name in zip(results[1], results[0], expected, names):
        assert got_ours.shape == want.shape, name
        assert rel_error(got_ours, want) < 2e-6, name       # float32 against float64
        assert rel_error(got_ours, got_ms) < 1e-5, name     # against MindSpore's own convolution


def test_eligible_convolutions():
    def conv(c=32, k=32, kernel=3, stride=1, dilation=1, group=1, padding=1, pad_mode="pad", data_format="NCHW"):
        return nn.Conv2d(c, k, kernel, stride=stride, dilation=dilation, group=group, pad_mode=pad_mode,
                         padding=padding if pad_mode == "pad" else 0, data_format=data_format)

    assert direct_conv.eligible(conv(), 32)
    assert direct_conv.eligible(conv(pad_mode="same"), 32)
    assert direct_conv.eligible(conv(c=3, k=8), 8)
    assert not direct_conv.eligible(conv(c=64), 32)          # wide input
    assert not direct_conv.eligible(conv(k=64), 32)          # wide output
    assert not direct_conv.eligible(conv(), 0)               # the setting's "off"
    assert not direct_conv.eligible(conv(kernel=1, padding=0), 32)
    assert not direct_conv.eligible(conv(stride=2), 32)
    assert not direct_conv.eligible(conv(dilation=2, padding=2), 32)
    assert not direct_conv.eligible(conv(group=2), 32)
    assert not direct_conv.eligible(conv(padding=0), 32)
    assert not direct_conv.eligible(nn.Dense(4, 4), 32)


def _tiny_detector():
    from src.builder import build_detector

    ms.set_seed(0)
    return build_detector(load_config(os.path.join(ROOT, TINY)))


def test_swap_keeps_parameters_and_names():
    detector = _tiny_detector()
    before = [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()]
    replaced = direct_conv.use_direct_conv(detector, 64)
    assert replaced and all(isinstance(c, direct_conv.DirectConv3x3) for n, c in detector.cells_and_names()
                            if n in set(replaced))
    assert [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()] == before


def test_trainer_setting_swaps_on_cpu_only(caplog):
    cfg = load_config(os.path.join(ROOT, TINY), ["train.direct_conv_max_channels=64"])
    assert cfg.train.direct_conv_max_channels == 64
    assert load_config(os.path.join(ROOT, TINY)).train.direct_conv_max_channels == 0     # off by default
    detector = _tiny_detector()
    trainer._use_direct_conv_for_training(detector, "GPU", "O0", 64)
    assert not any(isinstance(c, direct_conv.DirectConv3x3) for _, c in detector.cells_and_names())
    trainer._use_direct_conv_for_training(detector, "CPU", "O2", 64)
    assert not any(isinstance(c, direct_conv.DirectConv3x3) for _, c in detector.cells_and_names())
    assert load_config(os.path.join(ROOT, TINY)).train.direct_conv_threads == 0         # one per core
    try:
        with caplog.at_level(logging.INFO, logger=trainer.log.name):
            trainer._use_direct_conv_for_training(detector, "CPU", "O0", cfg.train.direct_conv_max_channels, threads=2)
        assert "(2 thread(s) per call)" in caplog.text      # what the library reported back
    finally:
        direct_conv.set_threads(0)
    assert any(isinstance(c, direct_conv.DirectConv3x3) for _, c in detector.cells_and_names())


def test_missing_library_keeps_mindspore_convolutions(monkeypatch, caplog):
    monkeypatch.setattr(direct_conv, "LIBRARY", "/nonexistent/_direct_conv3x3.so")
    detector = _tiny_detector()
    with caplog.at_level(logging.WARNING, logger="m2det.custom_ops"):
        trainer._use_direct_conv_for_training(detector, "CPU", "O0", 64)
    assert not any(isinstance(c, direct_conv.DirectConv3x3) for _, c in detector.cells_and_names())
    assert "train.direct_conv_max_channels" in caplog.text and "scripts/make.sh" in caplog.text
    with pytest.raises(RuntimeError, match="make.sh"):
        direct_conv.use_direct_conv(detector, 64)


# 1x1 on maps of 1x1 to 7x5; 3x3 unpadded on a 3x3 input (a 1x1 output); 3x3 unpadded on 5x4
# (larger than the kernel: the original convolution operator); C != K, batches > 1
@pytest.mark.parametrize("n,c,k,kernel,h,w,bias", [(2, 5, 3, 1, 7, 5, True), (3, 8, 6, 1, 1, 1, False),
                                                   (2, 6, 4, 3, 3, 3, True), (2, 4, 5, 3, 5, 4, False)])
def test_matmul_conv_outputs_and_gradients(n, c, k, kernel, h, w, bias):
    rng = np.random.default_rng(n * 100 + c * 10 + k + kernel)
    weight = rng.standard_normal((k, c, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    r = rng.standard_normal((n, k, h - kernel + 1, w - kernel + 1)).astype(np.float32)
    conv = nn.Conv2d(c, k, kernel, pad_mode="valid", has_bias=bias, weight_init=ms.Tensor(weight),
                     bias_init=None if b is None else ms.Tensor(b))
    assert matmul_conv.eligible(conv, 8)
    fast = matmul_conv.MatmulConv2d(conv)
    params = [conv.weight, conv.bias] if bias else [conv.weight]
    results = []
    for net in (conv, fast):
        y = net(ms.Tensor(x)).asnumpy()
        _, (dx, dparams) = ms.value_and_grad(WeightedSum(net, ms.Tensor(r)), grad_position=0, weights=params)(
            ms.Tensor(x))
        results.append([y, dx.asnumpy()] + [g.asnumpy() for g in dparams])
    expected = reference(x, weight, b, r, pad=0)
    for got_ours, got_ms, want, name in zip(results[1], results[0], expected, ["y", "dx", "dweight", "dbias"]):
        assert got_ours.shape == want.shape, name
        assert rel_error(got_ours, want) < 2e-6, name
        assert rel_error(got_ours, got_ms) < 1e-5, name


def test_matmul_conv_eligible():
    def conv(c=16, k=16, kernel=1, stride=1, dilation=1, group=1, padding=0, pad_mode="pad"):
        return nn.Conv2d(c, k, kernel, stride=stride, dilation=dilation, group=group, pad_mode=pad_mode,
                         padding=padding if pad_mode == "pad" else 0)

    assert matmul_conv.eligible(conv(), 16)
    assert matmul_conv.eligible(conv(pad_mode="same"), 16)          # 1x1 "same" pads nothing
    assert matmul_conv.eligible(conv(kernel=3), 16)                 # a matrix product on 3x3 inputs
    assert matmul_conv.eligible(conv(kernel=3, stride=2), 16)
    assert not matmul_conv.eligible(conv(kernel=3, pad_mode="same"), 16)
    assert not matmul_conv.eligible(conv(kernel=3, padding=1), 16)
    assert not matmul_conv.eligible(conv(stride=2), 16)             # a strided 1x1 subsamples first
    assert not matmul_conv.eligible(conv(padding=1), 16)
    assert not matmul_conv.eligible(conv(group=2), 16)
    assert not matmul_conv.eligible(conv(kernel=3, dilation=2), 16)
    assert not matmul_conv.eligible(conv(c=32), 16)
    assert not matmul_conv.eligible(conv(), 0)
    assert not matmul_conv.eligible(nn.Dense(4, 4), 16)


def test_matmul_swap_keeps_parameters_and_setting():
    cfg = load_config(os.path.join(ROOT, TINY), ["train.matmul_conv_max_channels=64"])
    assert cfg.train.matmul_conv_max_channels == 64
    assert load_config(os.path.join(ROOT, TINY)).train.matmul_conv_max_channels == 0     # off by default
    detector = _tiny_detector()
    before = [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()]
    trainer._use_matmul_conv_for_training(detector, "O2", 64)
    assert not any(isinstance(c, matmul_conv.MatmulConv2d) for _, c in detector.cells_and_names())
    trainer._use_matmul_conv_for_training(detector, "O0", cfg.train.matmul_conv_max_channels)
    assert any(isinstance(c, matmul_conv.MatmulConv2d) for _, c in detector.cells_and_names())
    assert [(p.name, tuple(p.shape), id(p)) for p in detector.get_parameters()] == before


def test_detector_gradients_unchanged():
    import copy

    cfg = load_config(os.path.join(ROOT, TINY))
    detector = _tiny_detector()
    # BatchNorm on its moving statistics, as in tests/test_winograd.py
    batch_norm_on_moving_statistics(detector)
    fast = copy.deepcopy(detector)
    assert direct_conv.use_direct_conv(fast, 1024) and matmul_conv.use_matmul_conv(fast, 1024)
    results = loss_and_gradients((detector, fast), cfg, seed=2)
    assert results[0][1].keys() == results[1][1].keys()
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    worst = max(rel_error(results[1][1][n], results[0][1][n]) for n in results[0][1])
    assert worst < 2e-5


def test_results_do_not_depend_on_the_kernel_threads():
    # the filter gradient adds its per-chunk partial sums in chunk order, whichever thread made them
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    x = ms.Tensor(rng.standard_normal((3, 5, 61, 47)).astype(np.float32))
    r = ms.Tensor(rng.standard_normal((3, 6, 61, 47)).astype(np.float32))
    conv = conv2d(weight)
    fast = direct_conv.DirectConv3x3(conv.weight)
    grad_fn = ms.value_and_grad(WeightedSum(fast, r), grad_position=0, weights=[conv.weight])
    results = []
    try:
        for threads in (1, 2, 3):
            assert direct_conv.set_threads(threads) == threads
            _, (dx, (dw,)) = grad_fn(x)
            results.append((fast(x).asnumpy(), dx.asnumpy(), dw.asnumpy()))
    finally:
        direct_conv.set_threads(0)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_default_is_one_thread_per_core_even_under_omp_num_threads_1():
    # `import mindspore` sets OMP_NUM_THREADS=1 in the process environment, so every process
    # started from one that imported it (multiprocessing workers, test subprocesses, launchers)
    # has it; OpenMP's own default there is one thread, which made the kernels single-threaded
    import subprocess
    import sys

    code = ("import ctypes, os, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "print(lib.DirectConv3x3SetThreads(0), len(os.sched_getaffinity(0)))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, direct_conv.LIBRARY], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[0]) == int(out[1])
    inherited = subprocess.run([sys.executable, "-c", "import mindspore, os; os.system('echo $OMP_NUM_THREADS')"],
                               env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
                               capture_output=True, text=True, check=True).stdout.split()
    assert inherited[-1:] == ["1"]        # why the default matters (MindSpore 2.8)


@pytest.mark.parametrize("n,c,k,h,w", [(2, 5, 7, 9, 11), (3, 4, 3, 1, 1), (2, 6, 8, 40, 37)])
def test_filter_gradient_without_avx512(n, c, k, h, w):
    # CPUs without AVX-512 take the 8-float version of the filter gradient; force it here and
    # hold both versions to the float64 reference (K = 7 and 8: not multiples of the 3-channel block)
    import ctypes

    lib = ctypes.CDLL(direct_conv.LIBRARY)      # the file MindSpore's operators loaded: one switch
    rng = np.random.default_rng(n + c + k + h)
    weight = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    r = rng.standard_normal((n, k, h, w)).astype(np.float32)
    conv = conv2d(weight)
    grad_fn = ms.value_and_grad(WeightedSum(direct_conv.DirectConv3x3(conv.weight), ms.Tensor(r)), None,
                                weights=[conv.weight])
    want = reference(x, weight, None, r)[2]
    results = []
    try:
        for narrow in (0, 1):
            assert lib.DirectConv3x3ForceNarrowFilterGrad(narrow) == narrow
            results.append(grad_fn(ms.Tensor(x))[1][0].asnumpy())
    finally:
        lib.DirectConv3x3ForceNarrowFilterGrad(0)
    for got in results:
        assert rel_error(got, want) < 2e-6
