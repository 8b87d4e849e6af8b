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
