"""SSD box coder: hand-computed encodings and exact round trips (REFERENCE 1.8)."""
import math

import numpy as np
import pytest

from heads.box_coder import SSDBoxCoder


def test_encode_hand_computed():
    coder = SSDBoxCoder((0.1, 0.2))
    prior = np.array([[0.5, 0.5, 0.2, 0.4]])            # cx, cy, w, h
    gt = np.array([[0.4, 0.35, 0.7, 0.75]])             # centre (0.55, 0.55), size (0.3, 0.4)
    expected = [(0.55 - 0.5) / (0.1 * 0.2), (0.55 - 0.5) / (0.1 * 0.4),
                math.log(0.3 / 0.2) / 0.2, math.log(0.4 / 0.4) / 0.2]
    np.testing.assert_allclose(coder.encode(gt, prior)[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(expected, [2.5, 1.25, 2.0273255, 0.0], atol=1e-6)


def test_decode_hand_computed():
    coder = SSDBoxCoder((0.1, 0.2))
    prior = np.array([[0.5, 0.5, 0.2, 0.4]])
    loc = np.array([[1.0, -2.0, 0.0, math.log(2) / 0.2]])
    # centre (0.5 + 1 * 0.1 * 0.2, 0.5 - 2 * 0.1 * 0.4) = (0.52, 0.42); size (0.2, 0.8)
    np.testing.assert_allclose(coder.decode(loc, prior)[0], [0.42, 0.02, 0.62, 0.82], atol=1e-6)


def test_round_trip():
    rng = np.random.default_rng(0)
    priors = np.concatenate([rng.uniform(0.1, 0.9, (500, 2)), rng.uniform(0.02, 0.6, (500, 2))], 1)
    centre = rng.uniform(0.1, 0.9, (500, 2))
    size = rng.uniform(0.01, 0.8, (500, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    coder = SSDBoxCoder()
    np.testing.assert_allclose(coder.decode(coder.encode(boxes, priors), priors), boxes, atol=1e-5)
    loc = rng.normal(0, 1, (500, 4)).astype(np.float32)
    np.testing.assert_allclose(coder.encode(coder.decode(loc, priors), priors), loc, atol=1e-4)


def test_decode_ms_matches_numpy():
    import mindspore as ms

    rng = np.random.default_rng(1)
    priors = np.concatenate([rng.uniform(0.1, 0.9, (50, 2)), rng.uniform(0.02, 0.6, (50, 2))], 1).astype(np.float32)
    loc = rng.normal(0, 1, (2, 50, 4)).astype(np.float32)
    coder = SSDBoxCoder()
    out = coder.decode_ms(ms.Tensor(loc), ms.Tensor(priors)).asnumpy()
    np.testing.assert_allclose(out, coder.decode(loc, priors[None]), atol=1e-5)


def test_bad_variances():
    with pytest.raises(ValueError, match=r"\[0.1\]"):
        SSDBoxCoder([0.1])


def test_decode_keeps_diverged_outputs_finite():
    """A diverging network's huge log-scale outputs are capped at log(1000/16), not inf."""
    import math

    from heads.box_coder import SSDBoxCoder

    prior = np.array([[0.5, 0.5, 0.1, 0.2]], np.float32)
    boxes = SSDBoxCoder((0.1, 0.2)).decode(np.array([[0.0, 0.0, 1e4, 1e4]], np.float32), prior)
    assert np.isfinite(boxes).all()
    np.testing.assert_allclose(boxes[0, 2:] - boxes[0, :2], [0.1 * 1000 / 16, 0.2 * 1000 / 16], rtol=1e-5)
    assert math.isclose(float(np.log(1000 / 16)), math.log(62.5))
