"""One SSD decoder (issue 14, item 4): a MINDIR exported with --with_decode gives the boxes of the
evaluation path (SSDOutputDecoder, NumPy, clipped to [0, 1] as the export clips) even for offsets
beyond the log-scale clamp (a box at most 1000/16 times its prior)."""
import math

import mindspore as ms
import numpy as np

from heads.box_coder import MAX_LOG_SCALE
from src.builder import build_detector, build_priors
from src.config import load_config
from src.export import export_detector
from src.export.exporter import run_exported
from src.postprocess import SSDOutputDecoder
from tests.test_export import TINY

# Offsets the loc convs will output for every prior: centre 0.1 * 1000 = 100 prior sides off the
# prior, and log-scale 0.2 * 30 = 6 > log(62.5) = 4.135. Clamped, the box (half side 31.25 prior
# sides) lies wholly outside the image and clips to a zero-width edge; unclamped (half side
# exp(6) / 2 = 202 prior sides) it would reach back over the image, so the clip cannot hide it.
DXY, DWH = 1000.0, 30.0


def extreme_detector(cfg):
    detector = build_detector(cfg)
    for conv in detector.head.loc_convs:
        conv.weight.set_data(ms.Tensor(np.zeros(conv.weight.shape, np.float32)))
        bias = np.tile(np.array([DXY, -DXY, DWH, DWH], np.float32), conv.bias.shape[0] // 4)
        conv.bias.set_data(ms.Tensor(bias))
    detector.set_train(False)
    return detector


def test_exported_decode_equals_the_python_path_beyond_the_clamp(tmp_path):
    assert DWH * 0.2 > MAX_LOG_SCALE
    cfg = load_config(TINY)
    detector = extreme_detector(cfg)
    out = tmp_path / "decoded.mindir"
    export_detector(detector, cfg, str(out), "MINDIR", batch_size=1, with_decode=True, verify=False)
    x = np.random.default_rng(3).uniform(-120, 120, (1, 3, 128, 128)).astype(np.float32)
    got_boxes, got_scores = run_exported(str(out), "MINDIR", x)

    loc, scores = (o.asnumpy() for o in detector(ms.Tensor(x)))
    np.testing.assert_allclose(loc[0, :, 2:], DWH, rtol=1e-5)          # the offsets are beyond the clamp
    priors = build_priors(cfg).boxes()
    decoder = SSDOutputDecoder(priors, cfg.priors.variance)
    boxes, want_scores, _, _ = decoder([loc[0], scores[0]])
    want = np.clip(boxes, 0.0, 1.0)
    np.testing.assert_allclose(got_boxes[0], want, atol=1e-5)
    np.testing.assert_allclose(got_scores[0], want_scores, atol=1e-6)

    # the case discriminates: without the clamp the clipped boxes would differ
    v0, v1 = cfg.priors.variance
    centre = priors[:, :2] + loc[0, :, :2] * v0 * priors[:, 2:]
    wh = priors[:, 2:] * np.exp(loc[0, :, 2:] * v1)
    unclamped = np.clip(np.concatenate([centre - wh / 2, centre + wh / 2], 1), 0.0, 1.0)
    assert np.abs(unclamped - want).max() > 0.1


def test_hand_computed_clamped_box():
    """One prior (0.5, 0.5, 0.01, 0.01), offsets (0, 0, 50, 50): side 0.01 * 62.5 = 0.625."""
    decoder = SSDOutputDecoder(np.array([[0.5, 0.5, 0.01, 0.01]], np.float32), (0.1, 0.2))
    boxes = decoder.decode(np.array([[0.0, 0.0, 50.0, 50.0]], np.float32))
    half = 0.01 * math.exp(MAX_LOG_SCALE) / 2
    np.testing.assert_allclose(boxes, [[0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half]], rtol=1e-5)
    np.testing.assert_allclose(half * 2, 0.625, rtol=1e-6)
