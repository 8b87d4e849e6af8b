"""ATSSAssigner (REFERENCE 2.2) against a plain-loop implementation of the rule written here."""
from math import inf, sqrt

import numpy as np
import pytest

from heads.anchors import AnchorGenerator
from heads.assigners.atss import BACKGROUND, ATSSAssigner
from heads.box_ops import pairwise_iou


def loop_atss(anchors, level_counts, gts, labels, topk=9):
    """REFERENCE 2.2 with loops over GTs, levels and anchors; no vectorisation."""
    anchors = [[float(v) for v in a] for a in anchors]
    gts = [[float(v) for v in g] for g in gts]
    n, num_gts = len(anchors), len(gts)
    if num_gts == 0:
        return [-1] * n, [-1] * n

    def iou(a, g):
        iw = max(0.0, min(a[2], g[2]) - max(a[0], g[0]))
        ih = max(0.0, min(a[3], g[3]) - max(a[1], g[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        return inter / union if union > 0 else 0.0

    def centre(b):
        return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0

    positive = [[False] * num_gts for _ in range(n)]
    for g in range(num_gts):
        gx, gy = centre(gts[g])
        candidates = []
        start = 0
        for count in level_counts:
            by_distance = []
            for i in range(start, start + count):
                ax, ay = centre(anchors[i])
                by_distance.append((sqrt((ax - gx) * (ax - gx) + (ay - gy) * (ay - gy)), i))
            by_distance.sort()                      # ties: lower anchor index first
            candidates += [i for _, i in by_distance[:min(topk, count)]]
            start += count
        values = [iou(anchors[i], gts[g]) for i in candidates]
        mean = sum(values) / len(values)
        std = sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))   # unbiased
        threshold = mean + std
        x1, y1, x2, y2 = gts[g]
        for i in candidates:
            ax, ay = centre(anchors[i])
            inside = min(ax - x1, ay - y1, x2 - ax, y2 - ay) > 0.01
            if iou(anchors[i], gts[g]) >= threshold - 1e-9 and inside:
                positive[i][g] = True
    gt_index, gt_label = [], []
    for i in range(n):
        best, best_iou = -1, -inf
        for g in range(num_gts):
            if positive[i][g] and iou(anchors[i], gts[g]) > best_iou:   # strict: lowest GT on ties
                best, best_iou = g, iou(anchors[i], gts[g])
        gt_index.append(best)
        gt_label.append(int(labels[best]) if best >= 0 else -1)
    return gt_index, gt_label


def check(anchors, counts, gts, labels):
    result = ATSSAssigner(topk=9).assign(anchors, counts, gts, labels)
    ref_index, ref_label = loop_atss(anchors, counts, gts, labels)
    np.testing.assert_array_equal(result.gt_index, ref_index)
    np.testing.assert_array_equal(result.labels, ref_label)
    return result


def random_gts(rng, g, width, height, min_side=2.0, max_side=60.0):
    wh = rng.uniform(min_side, max_side, (g, 2))
    xy = rng.uniform(0, 1, (g, 2)) * (np.array([width, height]) - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


GRID = AnchorGenerator(strides=(4, 8, 16), octave_base_scale=4.0)     # 16/32/64 px squares
GRID_SIZES = [(12, 16), (6, 8), (3, 4)]                               # a 64 x 48 image
RETINA = AnchorGenerator(strides=(8, 16), octave_base_scale=4.0, scales_per_octave=3, ratios=(0.5, 1.0, 2.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loops_on_grid_anchors(seed):
    rng = np.random.default_rng(seed)
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    gts = random_gts(rng, 6, 64, 48)
    labels = rng.integers(0, 80, len(gts))
    result = check(anchors, counts, gts, labels)
    assert result.num_pos > 0
    pos = result.pos_mask
    # iou is the IoU with the assigned GT, 0 for background
    full = pairwise_iou(anchors.astype(np.float64), gts.astype(np.float64))
    np.testing.assert_allclose(result.iou[pos], full[pos, result.gt_index[pos]], rtol=1e-6)
    assert (result.iou[~pos] == 0).all()


def test_matches_loops_on_random_anchors_and_a_short_level():
    rng = np.random.default_rng(3)
    counts = [30, 12, 5]                       # the last level has fewer than topk anchors
    anchors = random_gts(rng, sum(counts), 80, 80, 4.0, 40.0)
    gts = random_gts(rng, 5, 80, 80, 5.0, 50.0)
    check(anchors, counts, gts, rng.integers(0, 3, 5))


def test_distance_ties_on_grid_points_and_nine_anchors_per_cell():
    anchors, counts = RETINA.grid_anchors([(4, 5), (2, 3)])
    gts = np.array([[4, 4, 28, 20],            # centre (16, 12): on a level-0 grid point
                    [0, 0, 24, 24],            # centre (12, 12): midway between grid points
                    [8, 0, 40, 16]], np.float32)   # centre (24, 8): edges through anchor centres
    result = check(anchors, counts, gts, np.array([3, 4, 5]))
    assert result.num_pos > 0


def test_boundaries_small_and_overlapping_gts():
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    gts = np.array([
        [8, 8, 24, 24],                        # edges exactly at anchor centres: those are outside
        [8.005, 8.005, 23.995, 23.995],        # margin 0.005 < 0.01 at the edge centres
        [9, 9, 11, 11],                        # smaller than a stride-4 cell, no centre inside
        [30, 20, 50, 40],                      # two overlapping GTs ...
        [32, 22, 52, 42],
        [30, 20, 50, 40],                      # ... and an exact duplicate (ties: lower index)
        [0, 0, 64, 48],                        # the whole image
    ], np.float32)
    result = check(anchors, counts, gts, np.arange(7))
    assert not np.isin(result.gt_index, [2, 5]).any()     # tiny GT: none; duplicate: loses to GT 3
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    on_edge = (result.gt_index == 0) & np.isclose(centres, 8).any(axis=1)
    assert not on_edge.any()


def test_centre_margin_is_strict():
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    # the (0, 0) anchor's centre is exactly 0.01 from the left and top edges (float64 GT):
    # not strictly inside, although its IoU equals the best candidates'
    gts = np.array([[-0.01, -0.01, 6.0, 6.0]], np.float64)
    result = check(anchors, counts, gts, np.array([1]))
    assert result.gt_index[0] == BACKGROUND and result.gt_index[1 + 16] == 0   # (4, 4) is positive


def test_all_candidates_tied_are_positive():
    # 9 identical anchors on one level: every candidate IoU equals mean + std (std 0) exactly;
    # rounding in the mean must not drop them (about 1 value in 25 would be dropped otherwise)
    anchors = np.tile(np.array([[0, 0, 10, 10]], np.float32), (9, 1))
    for h in np.linspace(5.5, 9.9, 45):
        result = ATSSAssigner().assign(anchors, [9], np.array([[0, 0, 10, h]]), np.array([0]))
        assert result.num_pos == 9, h


def test_gt_equal_to_an_anchor_gets_it():
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    k = 5 * 16 + 7                             # a level-0 anchor
    result = check(anchors, counts, anchors[k:k + 1].copy(), np.array([11]))
    assert result.gt_index[k] == 0 and result.labels[k] == 11
    assert result.iou[k] == pytest.approx(1.0)


def test_no_gt_is_all_background():
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    result = check(anchors, counts, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert (result.gt_index == BACKGROUND).all() and (result.labels == BACKGROUND).all()
    assert result.num_pos == 0 and (result.iou == 0).all()


def test_level_counts_must_add_up():
    anchors, counts = GRID.grid_anchors(GRID_SIZES)
    with pytest.raises(ValueError):
        ATSSAssigner().assign(anchors, counts[:-1], anchors[:1], np.array([0]))
