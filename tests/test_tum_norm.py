"""TUM normalisation option (MLFPN tum_norm): GroupNorm makes every image's output independent
of the rest of its batch, in training as in inference; BatchNorm (the reference) does not."""
import mindspore as ms
import numpy as np
import pytest

from m2det.layers import BasicConv, group_count
from m2det.necks.tum import TUM


def test_group_count_divides_channels():
    assert group_count(48) == 16 and group_count(256) == 16 and group_count(24) == 12
    assert group_count(7) == 7 and group_count(34, 16) == 2 and group_count(1) == 1


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        BasicConv(4, 4, 3, padding=1, norm="ln")


def _outputs(tum, x):
    return [o.asnumpy() for o in tum(ms.Tensor(x))]


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_gn_tum_is_batch_independent_and_bn_is_not(norm):
    ms.set_seed(0)
    tum = TUM(6, planes=8, num_scales=3, norm=norm)
    tum.set_train(True)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 6, 12, 12)).astype(np.float32)
    outlier = (rng.normal(size=(1, 6, 12, 12)) * 5 + 3).astype(np.float32)
    alone = _outputs(tum, np.concatenate([image, image]))             # batch of two copies
    mixed = _outputs(tum, np.concatenate([image, outlier]))           # the same image next to an outlier
    same = all(np.allclose(a[0], m[0], atol=1e-5) for a, m in zip(alone, mixed))
    assert same == (norm == "gn")
    names = [n for n, _ in tum.cells_and_names()]
    assert any(n.endswith(".gn") for n in names) == (norm == "gn")
    assert any(n.endswith(".bn") for n in names) == (norm == "bn")


def test_gn_tum_trains_and_infers_alike():
    ms.set_seed(0)
    tum = TUM(6, planes=8, num_scales=3, norm="gn")
    x = np.random.default_rng(1).normal(size=(2, 6, 12, 12)).astype(np.float32)
    tum.set_train(True)
    train = _outputs(tum, x)
    tum.set_train(False)
    for a, b in zip(train, _outputs(tum, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lite_config_with_gn_tums_builds():
    from src.builder import build_detector
    from src.config import load_config

    cfg = load_config("tests/configs/tiny.yaml", ["model.neck.mlfpn.tum_norm=gn"])
    det = build_detector(cfg)
    names = [p.name for p in det.get_parameters()]
    assert not any(".tums." in n and ".bn." in n for n in names)
    assert any(".tums." in n and ".gn.gamma" in n for n in names)
    assert any(n.startswith("neck.ffm1.") and ".bn." in n for n in names)   # only the TUMs change
