"""Warmup + multi-step schedule against hand-computed values (REFERENCE 1.11)."""
import numpy as np
import pytest

from src.training.lr_schedule import step_lr_schedule


def test_hand_computed_values():
    lr = step_lr_schedule(lr=0.004, epochs=6, steps_per_epoch=2, warmup_epochs=2, warmup_start_lr=0.0,
                          lr_steps=[3, 5], lr_multipliers=[0.5, 0.1])
    # warmup over 4 steps from 0: 0, 1e-3, 2e-3, 3e-3; epochs 2: 4e-3; 3-4: 2e-3; 5: 4e-4
    want = [0.0, 0.001, 0.002, 0.003, 0.004, 0.004, 0.002, 0.002, 0.002, 0.002, 0.0004, 0.0004]
    np.testing.assert_allclose(lr, want, rtol=1e-6)


def test_reference_pytorch_schedule_boundaries():
    lr = step_lr_schedule(lr=0.004, epochs=160, steps_per_epoch=1, warmup_epochs=5, warmup_start_lr=1e-6,
                          lr_steps=[90, 110, 130, 150], lr_multipliers=[0.5, 0.1, 0.01, 0.001])
    assert lr[0] == pytest.approx(1e-6)
    assert lr[5] == pytest.approx(4e-3) and lr[89] == pytest.approx(4e-3)
    assert lr[90] == pytest.approx(2e-3) and lr[110] == pytest.approx(4e-4)
    assert lr[130] == pytest.approx(4e-5) and lr[159] == pytest.approx(4e-6)


def test_bad_schedule_is_reported():
    with pytest.raises(ValueError, match="same length"):
        step_lr_schedule(lr=0.1, epochs=2, steps_per_epoch=1, lr_steps=[1], lr_multipliers=[])
    with pytest.raises(ValueError, match="increasing"):
        step_lr_schedule(lr=0.1, epochs=2, steps_per_epoch=1, lr_steps=[2, 1], lr_multipliers=[1, 1])


def test_fractional_epoch_boundary_from_config():
    """lr_steps may fall inside an epoch (short schedules such as the quickstart's [2.5])."""
    from src.config import load_config

    cfg = load_config("configs/m2det_lite.yaml", ["train.lr_steps=[1.5]", "train.lr_multipliers=[0.1]"])
    assert cfg.train.lr_steps == [1.5]
    lr = step_lr_schedule(lr=0.01, epochs=2, steps_per_epoch=4, lr_steps=cfg.train.lr_steps,
                          lr_multipliers=cfg.train.lr_multipliers)
    # steps 0-5 are epochs 0 .. 1.25, steps 6-7 are epochs 1.5 and 1.75
    np.testing.assert_allclose(lr, [0.01] * 6 + [0.001] * 2, rtol=1e-6)


def test_cosine_and_linear_hand_computed():
    from src.training.lr_schedule import annealed_lr_schedule

    cos = annealed_lr_schedule(lr=1.0, epochs=1, steps_per_epoch=5, shape="cosine")
    # p = 0, 1/4, 1/2, 3/4, 1: (1 + cos(pi p)) / 2
    np.testing.assert_allclose(cos, [1.0, 0.8535534, 0.5, 0.1464466, 0.0], atol=1e-6)
    lin = annealed_lr_schedule(lr=1.0, epochs=1, steps_per_epoch=5, shape="linear", min_lr_ratio=0.2)
    np.testing.assert_allclose(lin, [1.0, 0.8, 0.6, 0.4, 0.2], atol=1e-6)
    # 2 warmup steps from 0, then cosine over the remaining 3 (p = 0, 1/2, 1)
    warm = annealed_lr_schedule(lr=2.0, epochs=1, steps_per_epoch=5, shape="cosine", warmup_epochs=0.4,
                                warmup_start_lr=0.0)
    np.testing.assert_allclose(warm, [0.0, 1.0, 2.0, 1.0, 0.0], atol=1e-6)


def test_schedule_kind_from_config():
    from src.config import load_config
    from src.training.trainer import learning_rates

    cfg = load_config("configs/m2det_lite.yaml", ["train.lr_schedule=cosine", "train.min_lr_ratio=0.1",
                                                  "train.scale_lr=true", "train.base_batch_size=32",
                                                  "train.warmup_epochs=0", "train.epochs=2"])
    lr, _ = learning_rates(cfg.train, steps_per_epoch=3, global_batch=64)
    peak = 2.0 * cfg.train.lr
    assert len(lr) == 6 and lr[0] == pytest.approx(peak) and lr[-1] == pytest.approx(0.1 * peak)
    assert np.all(np.diff(lr) < 0)
    bad = load_config("configs/m2det_lite.yaml", ["train.lr_schedule=poly"])
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rates(bad.train, steps_per_epoch=3, global_batch=8)
