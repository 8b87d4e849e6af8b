"""Mixed precision (dynamic loss scaling, O2 casting) and the EMA of weights, through the real
TrainStep in GRAPH mode on CPU."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.training.amp import DynamicLossScale, apply_o2, resolve_amp_level
from src.training.checkpoint import (load_detector_weights, read_checkpoint, restore_training_state,
                                     save_checkpoint)
from src.training.ema import ModelEMA
from src.training.optimizer import build_sgd
from src.training.train_step import DetectorWithLoss, TrainStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class SmallNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, has_bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Dense(4 * 6 * 6, 2)

    def construct(self, x):
        return self.fc(self.bn(self.conv(x)).reshape(x.shape[0], -1))


class WithLoss(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, y):
        mse = ((self.net(x).astype(ms.float32) - y) ** 2).mean()
        return mse, mse


def batch(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (Tensor(rng.normal(size=(4, 3, 6, 6)).astype(np.float32) * scale),
            Tensor(rng.normal(size=(4, 2)).astype(np.float32)))


def make(seed=0, steps=20, lr=0.05, **kwargs):
    ms.set_seed(seed)
    net = SmallNet()
    opt = build_sgd(net.trainable_params(), np.full(steps, lr, np.float32), 0.9, 1e-4)
    step = TrainStep(WithLoss(net), opt, clip_grad_norm=1.0, **kwargs)
    step.set_train(True)
    return net, opt, step


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def test_power_of_two_loss_scale_is_exact_in_float32():
    plain_net, _, plain = make()
    scaled_net, _, scaled = make(loss_scale=DynamicLossScale(2.0 ** 10, 2.0, 1000))
    for i in range(3):
        x, y = batch(i)
        loss_a = plain(x, y)[0].asnumpy()
        *outs, overflow = scaled(x, y)
        assert not bool(overflow.asnumpy())
        np.testing.assert_array_equal(outs[0].asnumpy(), loss_a)     # the reported loss is unscaled
    a, b = weights(plain_net), weights(scaled_net)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_overflow_skips_the_step_lowers_the_scale_and_regrows_it():
    scale = DynamicLossScale(2.0 ** 127, 2.0 ** 100, window=2)
    net, opt, step = make(loss_scale=scale)
    before = weights(net)
    x, y = batch(0, scale=1e3)
    *_, overflow = step(x, y)                       # loss * 2^127 overflows float32
    assert bool(overflow.asnumpy())
    for p in net.trainable_params():         # no update (BN running statistics move in the forward)
        np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 0             # lr position unchanged
    assert float(scale.value.asnumpy()) == 2.0 ** 27
    for expected in (2.0 ** 27, 2.0 ** 127):        # 2 finite steps = window: grows again
        *_, overflow = step(*batch(1))
        assert not bool(overflow.asnumpy())
        assert float(scale.value.asnumpy()) == expected
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 2
    assert not np.array_equal(weights(net)["conv.weight"], before["conv.weight"])


def test_ema_follows_its_formula_after_each_update():
    net, _, _ = make()
    ema = ModelEMA(net, decay=0.9, warmup=3.0)
    opt = build_sgd(net.trainable_params(), np.full(10, 0.05, np.float32), 0.9, 0.0)
    step = TrainStep(WithLoss(net), opt, clip_grad_norm=0.0, ema=ema)
    step.set_train(True)
    expected = weights(net)
    for t in range(1, 4):
        step(*batch(t))
        d = 0.9 * (1 - np.exp(-t / 3.0))
        assert abs(ema.decay_at(t) - d) < 1e-12
        current = weights(net)      # the EMA must see the weights *after* this update
        expected = {k: d * expected[k] + (1 - d) * current[k] for k in expected}
    shadows = ema.shadow_dict()
    assert set(shadows) == set(expected)            # BN running statistics are averaged too
    for name in expected:
        np.testing.assert_allclose(shadows[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(ema.updates.asnumpy()) == 3.0


def test_ema_checkpoint_has_averages_under_the_normal_names(tmp_path):
    net, opt, _ = make()
    ema = ModelEMA(net, decay=0.5, warmup=0.0)
    raw = weights(net)
    ema.load_shadows({k: v + 1.0 for k, v in raw.items()}, updates=7)
    scale = DynamicLossScale(512.0)
    path = save_checkpoint(str(tmp_path / "e.ckpt"), net, opt, ema=ema, extra=[scale], epoch=1, step=3)
    params = read_checkpoint(path)
    for name, value in raw.items():
        np.testing.assert_array_equal(params[name].asnumpy(), value + 1.0)    # eval/export get the EMA
        np.testing.assert_array_equal(params["raw." + name].asnumpy(), value)
    plain = SmallNet()
    load_detector_weights(plain, params)            # what eval.py does: no flag needed
    np.testing.assert_array_equal(plain.conv.weight.asnumpy(), raw["conv.weight"] + 1.0)

    net2, opt2, _ = make(seed=5)
    ema2 = ModelEMA(net2, decay=0.5, warmup=0.0)
    scale2 = DynamicLossScale(2.0)
    restore_training_state(params, net2, opt2, ema=ema2, extra=[scale2])
    for name, value in weights(net2).items():
        np.testing.assert_array_equal(value, raw[name])                     # training continues on raw
        np.testing.assert_array_equal(ema2.shadow_dict()[name], raw[name] + 1.0)
    assert float(ema2.updates.asnumpy()) == 7.0 and float(scale2.value.asnumpy()) == 512.0


def test_amp_level_resolution():
    assert resolve_amp_level("auto", "CPU") == "O0"
    assert resolve_amp_level("auto", "GPU") == "O2" and resolve_amp_level("auto", "Ascend") == "O2"
    with pytest.raises(ValueError, match="O0 or O2"):
        resolve_amp_level("O3", "GPU")


def test_o2_tiny_m2det_computes_in_float16_with_float32_norms_and_loss():
    """No GPU here: O2 runs on CPU float16 kernels, which checks the casts of the real network."""
    from mindspore._c_expression import MixedPrecisionType

    from src.builder import build_detector
    from src.config import load_config

    cfg = load_config(os.path.join(ROOT, "tests", "configs", "tiny.yaml"))
    ms.set_seed(0)
    detector = apply_o2(build_detector(cfg))
    norms = [c for _, c in detector.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    convs = [c for _, c in detector.cells_and_names() if isinstance(c, nn.Conv2d)]
    assert norms and all(c.mixed_precision_type == MixedPrecisionType.FP32 for c in norms)
    assert convs and all(c.mixed_precision_type == MixedPrecisionType.FP16 for c in convs)
    assert all(p.dtype == ms.float32 for p in detector.get_parameters())          # master weights
    detector.set_train(True)
    images = Tensor(np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32))
    loc, conf = detector(images)
    assert loc.dtype == ms.float16 and conf.dtype == ms.float16
    num_priors = loc.shape[1]
    loc_t = Tensor(np.zeros((2, num_priors, 4), np.float32))
    conf_t = np.zeros((2, num_priors), np.int32)
    conf_t[:, :5] = 1
    opt = build_sgd(detector.trainable_params(), np.full(20, 0.01, np.float32), 0.9, 5e-4)
    scale = DynamicLossScale(2.0 ** 16)
    step = TrainStep(DetectorWithLoss(detector, float32_loss=True), opt, 4.0, loss_scale=scale)
    step.set_train(True)
    history = []
    for _ in range(16):         # float16 weight gradients overflow at 2^16: the scale comes down
        total, loc_loss, conf_loss, overflow = step(images, loc_t, Tensor(conf_t))
        assert total.dtype == ms.float32 and np.isfinite(total.asnumpy())
        history.append(bool(overflow.asnumpy()))
        if not history[-1]:
            break
    assert history[0] and not history[-1], history
    skipped = sum(history)
    assert float(scale.value.asnumpy()) == 2.0 ** (16 - skipped)
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 1          # only the finite step updated
