"""soft_nms / nms against a plain NumPy transcription of REFERENCE 1.10, plus edge cases."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nms
from nms import nms as hard_nms
from nms import soft_nms, soft_nms_classic

METHODS = ("linear", "gaussian", "hard")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- NumPy oracles

def _iou_to(i: int, rest: np.ndarray, x1, y1, x2, y2, area, off: np.float32) -> np.ndarray:
    """IoU (float32, the "+off" convention) of box i with boxes ``rest``; 0 if disjoint."""
    iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + off
    ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + off
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((area[i] + area[rest]) - inter)
    return np.where((iw > 0) & (ih > 0), iou, np.float32(0)).astype(np.float32)


def ref_soft_nms(dets, method="linear", nt=0.3, sigma=0.5, thr=0.001, pixel_offset=True):
    """REFERENCE 1.10, one step at a time: select the highest current score (np.argmax over
    the remaining boxes in input order: ties go to the lowest input index), re-weight
    the others, drop those below thr (inputs below thr are dropped first)."""
    d = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
    d = d[d[:, 4] >= np.float32(thr)]
    x1, y1, x2, y2, s = (d[:, j].copy() for j in range(5))
    off = np.float32(1 if pixel_offset else 0)
    area = (x2 - x1 + off) * (y2 - y1 + off)
    alive = np.ones(len(d), dtype=bool)
    out = []
    while alive.any():
        cand = np.flatnonzero(alive)
        i = cand[np.argmax(s[cand])]
        out.append([x1[i], y1[i], x2[i], y2[i], s[i]])
        alive[i] = False
        rest = np.flatnonzero(alive)
        iou = _iou_to(i, rest, x1, y1, x2, y2, area, off)
        if method == "linear":
            w = np.where(iou > np.float32(nt), np.float32(1) - iou, np.float32(1))
        elif method == "gaussian":
            w = np.exp((-(iou * iou) / np.float32(sigma)).astype(np.float64))
        else:
            w = np.where(iou > np.float32(nt), np.float32(0), np.float32(1))
        s[rest] = s[rest] * w.astype(np.float32)
        alive[rest[s[rest] < np.float32(thr)]] = False
    return np.array(out, dtype=np.float32).reshape(-1, 5)


def ref_nms(dets, thr=0.45, pixel_offset=False):
    d = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
    order = np.argsort(-d[:, 4], kind="stable")
    x1, y1, x2, y2 = (d[:, j] for j in range(4))
    off = np.float32(1 if pixel_offset else 0)
    area = (x2 - x1 + off) * (y2 - y1 + off)
    suppressed = np.zeros(len(d), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= _iou_to(i, np.arange(len(d)), x1, y1, x2, y2, area, off) > np.float32(thr)
    return d[keep]


# --------------------------------------------------------------------------- random cases

def random_dets(rng: np.random.Generator, n: int, integer: bool, tied_scores: bool) -> np.ndarray:
    """n boxes around a few centres in a 100x100 image (so that many overlap), with
    integer pixel corners or continuous ones, and distinct or coarsely quantised scores."""
    centres = rng.uniform(0, 100, size=(rng.integers(1, 5), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(2, 40, (n, 2))
    xy = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    if integer:
        xy = np.round(xy)
    scores = rng.integers(1, 6, n) / 5.0 if tied_scores else rng.uniform(0.05, 1.0, n)
    return np.concatenate([xy, scores[:, None]], axis=1).astype(np.float32)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got[:, :4], want[:, :4])  # same boxes in the same order
    np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pixel_offset", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_soft_nms_matches_numpy_reference(method, pixel_offset):
    rng = np.random.default_rng(2 * METHODS.index(method) + pixel_offset)
    for case in range(50):
        dets = random_dets(rng, int(rng.integers(0, 60)), integer=case % 2 == 0,
                           tied_scores=case % 3 == 0)
        nt, thr = [(0.3, 0.001), (0.3, 0.001), (0.5, 0.25), (0.0, 0.001)][case % 4]
        got = soft_nms(dets, method=method, iou_threshold=nt, sigma=0.5,
                       score_threshold=thr, pixel_offset=pixel_offset)
        assert_same(got, ref_soft_nms(dets, method, nt, 0.5, thr, pixel_offset))


@pytest.mark.parametrize("pixel_offset", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_optimized_is_identical_to_classic(method, pixel_offset):
    # distinct scores, all above the threshold: the two agree to the bit (see soft_nms)
    rng = np.random.default_rng(7 + len(method) + pixel_offset)
    for case in range(40):
        dets = random_dets(rng, int(rng.integers(1, 120)), integer=case % 2 == 0,
                           tied_scores=False)
        assert len(np.unique(dets[:, 4])) == len(dets)
        for nt, thr in [(0.3, 0.001), (0.5, 0.2)]:
            kw = dict(method=method, iou_threshold=nt, sigma=0.5, score_threshold=thr,
                      pixel_offset=pixel_offset)
            above = dets[dets[:, 4] >= thr]
            np.testing.assert_array_equal(soft_nms(above, **kw), soft_nms_classic(above, **kw))


@pytest.mark.parametrize("pixel_offset", [True, False])
def test_nms_matches_numpy_reference(pixel_offset):
    rng = np.random.default_rng(11 + pixel_offset)
    for case in range(60):
        dets = random_dets(rng, int(rng.integers(0, 80)), integer=case % 2 == 0,
                           tied_scores=case % 3 == 0)
        for thr in (0.3, 0.45, 0.7):
            want = ref_nms(dets, thr, pixel_offset)
            np.testing.assert_array_equal(hard_nms(dets, thr, pixel_offset=pixel_offset), want)


# --------------------------------------------------------------------------- hand-made cases

def test_empty_input():
    for dets in (np.zeros((0, 5), np.float32), np.zeros((0, 5)), [], np.zeros(0)):
        for fn in (soft_nms, soft_nms_classic, hard_nms):
            out = fn(dets)
            assert out.shape == (0, 5) and out.dtype == np.float32


def test_one_box_is_returned_unchanged():
    dets = np.array([[10, 20, 30, 40, 0.7]], np.float32)
    for fn in (soft_nms, soft_nms_classic, hard_nms):
        np.testing.assert_array_equal(fn(dets), dets)


def test_identical_boxes():
    box = [0, 0, 9, 9]
    dets = np.array([box + [0.9], box + [0.8], box + [0.7]], np.float32)
    # IoU 1: linear weight 1 - 1 = 0 and hard weight 0 remove the copies
    np.testing.assert_array_equal(soft_nms(dets, "linear"), dets[:1])
    np.testing.assert_array_equal(soft_nms(dets, "hard"), dets[:1])
    np.testing.assert_array_equal(hard_nms(dets), dets[:1])
    # gaussian (sigma 0.5): every selection multiplies the others by exp(-1 / 0.5)
    e = np.exp(-2.0)
    got = soft_nms(dets, "gaussian", sigma=0.5)
    np.testing.assert_allclose(got[:, 4], [0.9, 0.8 * e, 0.7 * e * e], rtol=1e-6)
    np.testing.assert_array_equal(got[:, :4], dets[:, :4])


def test_linear_weight_only_above_nt_and_pixel_convention():
    # 10x10 boxes (pixels 0..9) shifted by 5 px: +1 convention IoU = 50 / 150 = 1/3
    a = [0, 0, 9, 9, 0.9]
    b = [5, 0, 14, 9, 0.8]
    got = soft_nms(np.array([a, b], np.float32), "linear", iou_threshold=0.3)
    np.testing.assert_allclose(got[:, 4], [0.9, 0.8 * (1 - 1 / 3)], rtol=1e-6)
    # continuous convention: 4 x 9 / (81 + 81 - 36) = 2/7 < Nt: untouched
    got = soft_nms(np.array([a, b], np.float32), "linear", iou_threshold=0.3, pixel_offset=False)
    np.testing.assert_allclose(got[:, 4], [0.9, 0.8], rtol=1e-7)
    # boxes touching on one pixel column overlap only in the +1 convention
    c = [9, 0, 18, 9, 0.8]
    got = soft_nms(np.array([a, c], np.float32), "hard", iou_threshold=0.0)
    assert len(got) == 1
    got = soft_nms(np.array([a, c], np.float32), "hard", iou_threshold=0.0, pixel_offset=False)
    assert len(got) == 2


def test_ties_go_to_the_lower_input_index():
    far = np.array([[0, 0, 9, 9, 0.5], [50, 50, 59, 59, 0.5], [100, 0, 109, 9, 0.5]], np.float32)
    for fn in (soft_nms, hard_nms):
        np.testing.assert_array_equal(fn(far), far)
        np.testing.assert_array_equal(fn(far[::-1]), far[::-1])
    # equal scores on overlapping boxes: the first one in the input survives
    dup = np.array([[0, 0, 9, 9, 0.5], [0, 0, 9, 9, 0.5]], np.float32)
    dup[1, 2] = 9.5  # nearly identical, distinguishable
    np.testing.assert_array_equal(soft_nms(dup, "hard"), dup[:1])
    np.testing.assert_array_equal(soft_nms(dup[::-1], "hard"), dup[1:])
    np.testing.assert_array_equal(hard_nms(dup), dup[:1])


def test_scores_below_threshold_are_dropped_up_front():
    dets = np.array([[0, 0, 9, 9, 0.9], [50, 50, 59, 59, 0.0005]], np.float32)
    np.testing.assert_array_equal(soft_nms(dets), dets[:1])
    # the reference's loop keeps a low box that never overlaps a selected one
    np.testing.assert_array_equal(soft_nms_classic(dets), dets)


def test_conversion_and_input_untouched():
    rng = np.random.default_rng(3)
    dets = random_dets(rng, 40, integer=True, tied_scores=False)
    want = soft_nms(dets)
    f64 = dets.astype(np.float64)
    np.testing.assert_array_equal(soft_nms(f64), want)
    fortran = np.asfortranarray(dets)
    np.testing.assert_array_equal(soft_nms(fortran), want)
    strided = np.zeros((40, 10), np.float32)
    strided[:, ::2] = dets
    np.testing.assert_array_equal(soft_nms(strided[:, ::2]), want)
    before = dets.copy()
    soft_nms(dets)
    soft_nms_classic(dets)
    hard_nms(dets)
    np.testing.assert_array_equal(dets, before)


@pytest.mark.parametrize("fn", [soft_nms, soft_nms_classic, hard_nms])
def test_bad_input_raises_value_error(fn):
    ok = np.array([[0, 0, 9, 9, 0.9]], np.float32)
    for bad in (np.zeros((3, 4)), np.zeros((2, 5, 1)), np.zeros(5), [[0, 0, 1, 1]]):
        with pytest.raises(ValueError, match="shape"):
            fn(bad)
    for value in (np.nan, np.inf, -np.inf, 1e300):
        bad = ok.astype(np.float64)
        bad[0, 1] = value
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad)
    with pytest.raises(ValueError, match="iou_threshold"):
        fn(ok, iou_threshold=1.5)


def test_bad_soft_nms_parameters():
    ok = np.array([[0, 0, 9, 9, 0.9]], np.float32)
    for fn in (soft_nms, soft_nms_classic):
        for method in ("Linear", "soft", 1, None):
            with pytest.raises(ValueError, match="method"):
                fn(ok, method=method)
        with pytest.raises(ValueError, match="sigma"):
            fn(ok, method="gaussian", sigma=0.0)
        with pytest.raises(ValueError, match="score_threshold"):
            fn(ok, score_threshold=float("nan"))


def test_missing_extension_says_how_to_build(tmp_path):
    # a copy of the package without the compiled module
    pkg = tmp_path / "nms"
    pkg.mkdir()
    for name in ("__init__.py", "api.py"):
        shutil.copy(os.path.join(REPO, "nms", name), pkg / name)
    proc = subprocess.run([sys.executable, "-c", "import nms"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "bash scripts/make.sh" in proc.stderr


def test_package_exports():
    assert set(nms.__all__) == {"soft_nms", "nms", "soft_nms_classic"}
