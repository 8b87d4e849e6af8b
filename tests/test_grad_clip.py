"""Global-norm clipping (src/training/grad_clip.py) against PyTorch's clip_grad_norm_ and
MindSpore's own ops.clip_by_global_norm."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.training.grad_clip import clip_by_global_norm, global_norm


def _grads(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    # conv-, bias- and dense-shaped, a scalar-like one and two large ones
    shapes = [(8, 3, 3, 3), (8,), (16, 8, 1, 1), (1,), (1 << 16,), (300, 256)]
    return [(rng.normal(size=s) * scale).astype(np.float32) for s in shapes]


class _Clip(nn.Cell):
    def __init__(self, max_norm, builtin=False):
        super().__init__()
        self.max_norm = max_norm
        self.builtin = builtin

    def construct(self, grads):
        if self.builtin:
            return ops.clip_by_global_norm(grads, self.max_norm)
        return clip_by_global_norm(grads, self.max_norm)


@pytest.mark.parametrize("scale", [1e-3, 1.0])     # global norm below and above max_norm
def test_matches_torch_clip_grad_norm(scale):
    torch = pytest.importorskip("torch")
    grads = _grads(scale=scale)
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    want_norm = torch.nn.utils.clip_grad_norm_(params, 4.0)
    got = clip_by_global_norm(tuple(ms.Tensor(g) for g in grads), 4.0)
    assert float(global_norm(tuple(ms.Tensor(g) for g in grads)).asnumpy()) == pytest.approx(float(want_norm), rel=1e-5)
    for p, g in zip(params, got):
        # torch divides by (norm + 1e-6); the difference is far below float32 noise at these norms
        np.testing.assert_allclose(g.asnumpy(), p.grad.numpy(), rtol=2e-5, atol=1e-9)
    if scale < 1:   # below the threshold nothing changes, bit for bit
        for g, raw in zip(got, grads):
            np.testing.assert_array_equal(g.asnumpy(), raw)


def test_matches_mindspore_builtin_in_graph_mode():
    grads = tuple(ms.Tensor(g) for g in _grads(seed=1))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = _Clip(4.0)(grads)
        want = _Clip(4.0, builtin=True)(grads)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=1e-5, atol=1e-9)
    total = np.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in got))
    assert total == pytest.approx(4.0, rel=1e-5)


class _Chain(nn.Cell):
    """40 tiny Dense layers: 80 parameters, as many gradients as a small detector has."""

    def __init__(self, depth=40):
        super().__init__()
        self.layers = nn.CellList([nn.Dense(4, 4) for _ in range(depth)])

    def construct(self, x, y):
        for layer in self.layers:
            x = layer(x)
        loss = ((x - y) ** 2).mean()
        return loss, loss


def _train_step_compile_seconds(clip_grad_norm):
    import time

    from src.training.train_step import TrainStep

    net = _Chain()
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.01), clip_grad_norm)
    step.set_train(True)
    x, y = ms.Tensor(np.ones((2, 4), np.float32)), ms.Tensor(np.zeros((2, 4), np.float32))
    start = time.perf_counter()
    step.compile(x, y)
    return time.perf_counter() - start


def test_clip_adds_little_to_the_training_graph_compile():
    """The clip must not dominate compilation: the former concatenation of every small gradient
    made this 80-gradient step compile 5.9x as long as without the clip (M2Det-320: 4-6x, GiBs
    of compile state); mapped per gradient it is ~1.2x."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        plain = _train_step_compile_seconds(0.0)
        clipped = _train_step_compile_seconds(4.0)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert clipped < 3.0 * plain, (plain, clipped)


# ---- the squared sum as one C operator (train.grad_norm_kernel) ----

def _float64_squared_sum(grads):
    return sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_squared_sum_operator_against_float64(mode):
    from src.training.grad_clip import squared_sum_operator

    # 65,536 + 5 and 76,800 entries: chunks that end inside a tensor; a (1,) gradient; an empty one
    grads = _grads(seed=2) + [np.full((65541,), 0.5, np.float32), np.zeros((0, 3), np.float32)]

    class _Sum(nn.Cell):
        def __init__(self):
            super().__init__()
            self.squared_sum = squared_sum_operator()

        def construct(self, tensors):
            return self.squared_sum(*tensors)

    ms.set_context(mode=mode)
    try:
        got = _Sum()(tuple(ms.Tensor(g) for g in grads))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert got.shape == () and got.dtype == ms.float32
    assert float(got.asnumpy()) == pytest.approx(_float64_squared_sum(grads), rel=1e-7)


def test_clip_with_the_kernel_matches_the_mapped_clip():
    from src.training.grad_clip import squared_sum_operator

    for scale in (1e-3, 1.0):
        grads = tuple(ms.Tensor(g) for g in _grads(seed=3, scale=scale))
        mapped = clip_by_global_norm(grads, 4.0)
        fused = clip_by_global_norm(grads, 4.0, squared_sum_operator())
        assert float(global_norm(grads, squared_sum_operator()).asnumpy()) == pytest.approx(
            float(global_norm(grads).asnumpy()), rel=1e-6)
        for a, b in zip(mapped, fused):
            np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-6, atol=0)


def test_squared_sum_refuses_other_dtypes():
    from src.training.grad_clip import squared_sum_operator

    with pytest.raises(RuntimeError):
        squared_sum_operator()(ms.Tensor(np.ones(4, np.float64)), ms.Tensor(np.ones(3, np.float64))).asnumpy()


def test_train_step_with_the_kernel_makes_the_same_update():
    from src.training.train_step import TrainStep

    ms.set_context(mode=ms.GRAPH_MODE)
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32))
    y = ms.Tensor(np.full((2, 4), 5.0, np.float32))
    results = []
    try:
        for kernel in (False, True):
            ms.set_seed(0)
            net = _Chain(depth=6)
            step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), 0.05, clip_kernel=kernel)
            assert (step.squared_sum is not None) == kernel
            step.set_train(True)
            for _ in range(3):
                step(x, y)
            results.append([p.asnumpy().copy() for p in net.trainable_params()])
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    moved = max(float(np.abs(a).max()) for a in results[0])
    assert moved > 0
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_trainer_setting_on_cpu_float32_only(monkeypatch, caplog):
    import logging
    import os

    from src.config import load_config
    from src.training import grad_clip, trainer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert load_config(os.path.join(root, "tests/configs/tiny.yaml")).train.grad_norm_kernel is False
    lite = load_config(os.path.join(root, "configs/m2det_lite.yaml")).train
    assert lite.grad_norm_kernel is True and lite.clip_grad_norm > 0
    assert not trainer._clip_kernel_usable(lite, "GPU", "O0")
    assert not trainer._clip_kernel_usable(lite, "CPU", "O2")
    with caplog.at_level(logging.INFO, logger=trainer.log.name):
        assert trainer._clip_kernel_usable(lite, "CPU", "O0")
    assert "train.grad_norm_kernel" in caplog.text
    unclipped = load_config(os.path.join(root, "configs/m2det_lite.yaml"), ["train.clip_grad_norm=0"]).train
    assert not trainer._clip_kernel_usable(unclipped, "CPU", "O0")
    monkeypatch.setattr(grad_clip, "LIBRARY", "/nonexistent/_squared_sum.so")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m2det.custom_ops"):
        assert not trainer._clip_kernel_usable(lite, "CPU", "O0")
    assert "train.grad_norm_kernel" in caplog.text and "scripts/make.sh" in caplog.text
