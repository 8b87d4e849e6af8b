"""The optimizers against PyTorch's: AdamW updates equal torch.optim.AdamW step by step."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from src.training.optimizer import adam_bias_corrected_lr, build_optimizer

torch = pytest.importorskip("torch")


def test_bias_correction_factor_by_hand():
    lr = adam_bias_corrected_lr(np.full(3, 0.01, np.float32), (0.9, 0.999))
    want = [0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) for t in (1, 2, 3)]
    np.testing.assert_allclose(lr, want, rtol=1e-6)
    assert lr[0] == pytest.approx(0.01 * np.sqrt(0.001) / 0.1, rel=1e-6)   # 0.316 x lr at step 1


class _Quadratic(nn.Cell):
    def __init__(self, w0, b0):
        super().__init__()
        self.w = Parameter(Tensor(w0), name="w")
        self.b = Parameter(Tensor(b0), name="b")

    def construct(self, x, y):
        return ops.reduce_sum((ops.matmul(x, self.w) + self.b - y) ** 2)


@pytest.mark.parametrize("schedule", ["constant", "warmup"])
def test_adamw_matches_torch_adamw(schedule):
    """Without weight decay the whole update is Adam's: 30 steps equal torch.optim.AdamW."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    steps = 30
    lr = np.full(steps, 0.05, np.float32) if schedule == "constant" else np.linspace(0.005, 0.05, steps, dtype=np.float32)

    net = _Quadratic(w0, b0)
    opt = build_optimizer("adamw", net.trainable_params(), lr, momentum=0.9, weight_decay=0.0)
    grad_fn = ms.value_and_grad(net, None, opt.parameters)

    tw = torch.tensor(w0, requires_grad=True)
    tb = torch.tensor(b0, requires_grad=True)
    topt = torch.optim.AdamW([tw, tb], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for i in range(steps):
        _, grads = grad_fn(Tensor(x), Tensor(y))
        opt(grads)
        for g in topt.param_groups:
            g["lr"] = float(lr[i])
        topt.zero_grad()
        ((tx @ tw + tb - ty) ** 2).sum().backward()
        topt.step()
    np.testing.assert_allclose(net.w.asnumpy(), tw.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.b.asnumpy(), tb.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_uncorrected_adam_would_differ():
    """The check above can fail: MindSpore's AdamWeightDecay with the raw rate is 3x off at step 1."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    w = Parameter(Tensor(np.ones((2, 2), np.float32)), name="w")
    raw = nn.AdamWeightDecay([w], learning_rate=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    raw((Tensor(np.full((2, 2), 0.5, np.float32)),))
    # torch AdamW's first step moves every weight by exactly lr (m_hat / sqrt(v_hat) = sign(g))
    moved = 1.0 - w.asnumpy()
    np.testing.assert_allclose(moved, 0.1 * 0.1 / np.sqrt(0.001), rtol=1e-4)   # 0.316, not 0.1
