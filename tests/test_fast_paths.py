"""Every speed-up of issue 8 against the path it replaces: the outputs must not change.

    post-processing  candidate extraction (postprocess._candidates) == np.nonzero((fg > t).T);
                     SSDOutputDecoder.decode == SSDBoxCoder.decode, bit for bit;
                     detect() == the release's per-class loop (tests/reference/detect_loop.py),
                     for every NMS method
    inference        the BN-folded network the benchmarks time (bench/harness.folded_copy)
                     == the Detector in GRAPH mode, to its own float32 rounding (see the test)
"""
import os

import mindspore as ms
import numpy as np
import pytest

from heads.box_coder import SSDBoxCoder
from src.builder import build_detector, build_priors
from src import postprocess
from src.config import load_config
from src.postprocess import SSDOutputDecoder, detect
from tests.reference.detect_loop import per_class_loop_detect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def score_field(rng, num_priors, num_classes, hot=300, dtype=np.float32):
    """Softmax-like scores: mostly background, `hot` (prior, class) pairs well above 0.1."""
    logits = rng.normal(0, 1, (num_priors, num_classes))
    logits[:, 0] += 4.0
    rows = rng.integers(0, num_priors, hot)
    logits[rows, rng.integers(1, num_classes, hot)] += rng.uniform(2, 7, hot)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(dtype)


def random_boxes(rng, n, size=300.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    return np.hstack([xy, xy + wh]).astype(np.float32)


@pytest.mark.parametrize("case", range(8))
def test_candidates_equal_transposed_nonzero(case):
    rng = np.random.default_rng(case)
    shape = [(500, 20), (1, 5), (40, 1), (0, 7), (300, 80), (64, 3), (1000, 12), (7, 7)][case]
    fg = rng.uniform(0, 0.3, shape).astype(np.float32 if case % 2 else np.float64)
    if fg.size:
        fg.flat[rng.integers(0, fg.size, 5)] = 0.1           # ties: not strictly above
        fg.flat[rng.integers(0, fg.size, 3)] = np.nan         # a diverged network
    for threshold in (0.1, 0.0, 0.29, 1.0, -1.0):
        cls, rows = postprocess._candidates(fg, threshold)
        ref_cls, ref_rows = np.nonzero((fg > threshold).T)
        np.testing.assert_array_equal(cls, ref_cls)
        np.testing.assert_array_equal(rows, ref_rows)


def test_candidates_on_a_strided_view():
    scores = score_field(np.random.default_rng(0), 2000, 81)
    fg = scores[:, 1:]                                       # what detect() passes: a column slice
    cls, rows = postprocess._candidates(fg, 0.1)
    ref_cls, ref_rows = np.nonzero((fg > 0.1).T)
    assert cls.size > 100
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_array_equal(rows, ref_rows)


@pytest.mark.parametrize("config", ["configs/m2det320_vgg.yaml", TINY])
def test_decoder_is_bitwise_the_box_coder(config):
    cfg = load_config(config)
    priors = build_priors(cfg).boxes()
    rng = np.random.default_rng(1)
    loc = rng.normal(0, 1.0, priors.shape).astype(np.float32)
    loc[:5, 2:] = [[30.0, -30.0], [50.0, 50.0], [-80.0, 0.0], [0.0, 0.0], [25.0, 1e-7]]  # clamped / tiny
    decoder = SSDOutputDecoder(priors, cfg.priors.variance)
    expected = SSDBoxCoder(cfg.priors.variance).decode(loc, priors)
    boxes, scores, has_background, factors = decoder((loc, "scores"))
    assert boxes.dtype == expected.dtype == np.float32 and has_background and scores == "scores" and factors is None
    np.testing.assert_array_equal(boxes, expected)
    # float64 offsets are decoded in float32, as before
    np.testing.assert_array_equal(decoder.decode(loc.astype(np.float64)), expected)


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard", "nms"])
@pytest.mark.parametrize("has_background", [True, False])
def test_detect_unchanged(method, has_background):
    rng = np.random.default_rng(3)
    for num_priors, num_classes, hot in ((3000, 21, 400), (500, 81, 2000), (50, 6, 0), (200, 2, 150)):
        scores = score_field(rng, num_priors, num_classes, hot)
        if not has_background:
            scores = scores[:, 1:]
        boxes = random_boxes(rng, num_priors)
        kwargs = dict(nms_method=method, has_background=has_background,
                      nms_threshold=0.5 if method == "nms" else 0.3)
        for extra in ({}, {"keep_per_class": 0, "max_per_image": 0}, {"score_threshold": 0.02}):
            got = detect(boxes, scores, **kwargs, **extra)
            expected = per_class_loop_detect(boxes, scores, **kwargs, **extra)
            for a, b in zip(got, expected):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_folded_inference_network_matches_in_graph_mode():
    """Folding only reorders float32 arithmetic. The unfolded network itself is ~1.4e-5 (relative)
    away from exact arithmetic on this calibrated tiny network (the PyTorch twin in float64 is the
    exact reference), so "equal" means: within 1e-4 of the unfolded outputs, and no farther from
    the exact result than twice the unfolded network's own rounding error."""
    import torch

    from bench.harness import build_reference, copy_weights_to_reference, folded_copy
    from tests.test_export import calibrate

    previous = ms.get_context("mode")
    try:
        ms.set_context(mode=ms.PYNATIVE_MODE)    # calibration runs BN pre-hooks: PyNative only
        ms.set_seed(0)
        cfg = load_config(TINY)
        x = np.random.default_rng(1).uniform(-120, 120, (2, 3, 128, 128)).astype(np.float32)
        detector = calibrate(build_detector(cfg), x)
        ms.set_context(mode=ms.GRAPH_MODE)
        folded = folded_copy(detector)
        assert not any(type(c).__name__ == "BatchNorm2d" and name != "neck.norm"
                       for name, c in folded.cells_and_names())
        unfolded_out = [o.asnumpy() for o in detector(ms.Tensor(x))]
        folded_out = [o.asnumpy() for o in folded(ms.Tensor(x))]
    finally:
        ms.set_context(mode=previous)
    exact_net = build_reference(cfg, build_priors(cfg).num_anchors(), "test").eval()
    copy_weights_to_reference(detector, exact_net)
    with torch.no_grad():
        exact = [o.numpy() for o in exact_net.double()(torch.from_numpy(x).double())]
    for a, b, e in zip(unfolded_out, folded_out, exact):
        assert a.shape == b.shape == e.shape
        scale = max(1.0, float(np.abs(e).max()))
        assert float(np.abs(a - b).max()) <= 1e-4 * scale
        own_error = float(np.abs(a - e).max()) / scale
        assert float(np.abs(b - e).max()) / scale <= 2 * own_error + 1e-6
