"""detect(): per-class threshold -> (soft-)NMS -> top-k, on hand-made and random inputs."""
from __future__ import annotations

import numpy as np
import pytest

import src.postprocess as postprocess
from src.postprocess import Detections, detect, scale_boxes
from tests.reference.detect_loop import per_class_loop_detect

# Four distinct boxes and a copy of the first; pixel corners.
BOXES = np.array([
    [0, 0, 9, 9],        # 0
    [1, 0, 10, 9],       # 1: IoU with 0 (+1 pixel) = 90 / 110
    [50, 50, 59, 59],    # 2
    [100, 100, 119, 119],  # 3
    [0, 0, 9, 9],        # 4
], dtype=np.float32)
# columns: background, class 1, class 2, class 3
SCORES = np.array([
    [0.05, 0.90, 0.05, 0.00],
    [0.10, 0.80, 0.05, 0.05],
    [0.30, 0.05, 0.60, 0.05],
    [0.60, 0.30, 0.05, 0.05],
    [0.80, 0.00, 0.05, 0.10],  # class 3 at exactly the threshold: not a candidate
], dtype=np.float32)
B1_LINEAR = 0.8 * (1 - 90 / 110)  # box 1 after linear soft-NMS against box 0


def test_hand_made_case():
    out = detect(BOXES, SCORES)
    assert isinstance(out, Detections)
    boxes, scores, labels = out
    np.testing.assert_array_equal(boxes, BOXES[[0, 2, 3, 1]])
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.3, B1_LINEAR], rtol=1e-6)
    np.testing.assert_array_equal(labels, [0, 1, 0, 0])
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64


def test_plain_nms_removes_the_overlapping_box():
    out = detect(BOXES, SCORES, nms_method="nms", nms_threshold=0.45)
    np.testing.assert_array_equal(out.boxes, BOXES[[0, 2, 3]])
    np.testing.assert_array_equal(out.labels, [0, 1, 0])


def test_max_per_image_and_keep_per_class():
    out = detect(BOXES, SCORES, max_per_image=2)
    np.testing.assert_array_equal(out.boxes, BOXES[[0, 2]])
    out = detect(BOXES, SCORES, keep_per_class=1)
    np.testing.assert_array_equal(out.boxes, BOXES[[0, 2]])
    np.testing.assert_array_equal(out.labels, [0, 1])
    for no_limit in (None, 0, -1):
        assert len(detect(BOXES, SCORES, max_per_image=no_limit, keep_per_class=no_limit)) == 3
        assert len(detect(BOXES, SCORES, max_per_image=no_limit).scores) == 4


def test_score_threshold_is_strict_and_per_class():
    out = detect(BOXES, SCORES, score_threshold=0.3)
    # class 1 keeps boxes 0 and 1 (0.3 is not > 0.3), class 2 box 2
    np.testing.assert_array_equal(out.boxes, BOXES[[0, 2, 1]])
    np.testing.assert_array_equal(out.labels, [0, 1, 0])
    out = detect(BOXES, SCORES, score_threshold=0.09)
    assert 2 in out.labels.tolist()  # box 4 of class label 2 (column 3, 0.1) now passes


def test_classes_without_candidates_are_skipped(monkeypatch):
    calls = []
    real = postprocess._suppress

    def spy(dets, *args):
        calls.append(len(dets))
        return real(dets, *args)

    monkeypatch.setattr(postprocess, "_suppress", spy)
    detect(BOXES, SCORES)
    assert calls == [3, 1]  # class 1 (3 candidates), class 2 (1); class 3 never suppressed


def test_nothing_above_threshold_gives_empty_arrays():
    boxes, scores, labels = detect(BOXES, SCORES, score_threshold=0.95)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    assert len(detect(np.zeros((0, 4)), np.zeros((0, 4))).boxes) == 0


def test_background_column_is_ignored():
    scores = np.zeros_like(SCORES)
    scores[:, 0] = 1.0
    assert len(detect(BOXES, scores).boxes) == 0


def test_soft_nms_options_are_passed_through():
    gauss = detect(BOXES, SCORES, nms_method="gaussian", soft_sigma=0.5)
    iou = 90 / 110
    np.testing.assert_allclose(np.sort(gauss.scores)[::-1],
                               [0.9, 0.6, 0.3, 0.8 * np.exp(-iou ** 2 / 0.5)], rtol=1e-6)
    # a minimum score above box 1's re-weighted score drops it
    out = detect(BOXES, SCORES, soft_min_score=0.2)
    assert len(out.boxes) == 3
    # continuous IoU: 8 * 9 / (81 + 81 - 72) = 0.8 instead of 90/110
    out = detect(BOXES, SCORES, pixel_offset=False)
    np.testing.assert_allclose(out.scores[-1], 0.8 * (1 - 0.8), rtol=1e-6)


def test_matches_a_naive_per_class_loop():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, c = 300, 8
        xy = rng.uniform(0, 200, (p, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 60, (p, 2))]).astype(np.float32)
        logits = rng.normal(0, 2, (p, c))
        scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        got = detect(boxes, scores)
        want = per_class_loop_detect(boxes, scores)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        assert len(got.boxes) == 100


def test_bad_arguments():
    with pytest.raises(ValueError, match="nms_method"):
        detect(BOXES, SCORES, nms_method="soft")
    with pytest.raises(ValueError, match="boxes"):
        detect(BOXES[:, :3], SCORES)
    with pytest.raises(ValueError, match="scores"):
        detect(BOXES, SCORES[:3])


def test_scale_boxes():
    out = scale_boxes(np.array([[0.1, 0.2, 0.5, 1.0]]), width=200, height=100)
    np.testing.assert_allclose(out, [[20, 20, 100, 100]], rtol=1e-6)
    assert out.dtype == np.float32
