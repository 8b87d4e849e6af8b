"""MaxIoUAssigner (SSD matching), pairwise IoU and SSD target encoding."""
import numpy as np
import pytest

from heads.assigners.max_iou import BACKGROUND, IGNORE, MaxIoUAssigner
from heads.box_coder import SSDBoxCoder
from heads.box_ops import pairwise_iou
from heads.priors import center_to_corner
from src.data.targets import SSDTargetEncoder


def loop_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def loop_match(iou, threshold):
    """The reference matcher written as plain loops (ssd.pytorch `match` semantics)."""
    num_gt, num_priors = iou.shape
    best_truth_idx = [int(np.argmax(iou[:, p])) for p in range(num_priors)]
    best_truth_overlap = [float(iou[best_truth_idx[p], p]) for p in range(num_priors)]
    best_prior_idx = [int(np.argmax(iou[g])) for g in range(num_gt)]
    for g in range(num_gt):
        best_truth_overlap[best_prior_idx[g]] = 2.0
    for j in range(num_gt):          # later GT overwrites: the tie rule
        best_truth_idx[best_prior_idx[j]] = j
    return np.array([best_truth_idx[p] if best_truth_overlap[p] >= threshold else -1
                     for p in range(num_priors)])


def random_boxes(rng, n, lo=0.0, hi=1.0, min_side=0.02):
    xy = rng.uniform(lo, hi - min_side, (n, 2))
    wh = rng.uniform(min_side, 0.5, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, hi)], axis=1).astype(np.float32)


def test_pairwise_iou_matches_loop():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 11)
    np.testing.assert_allclose(pairwise_iou(a, b), loop_iou(a, b), rtol=1e-5, atol=1e-6)
    assert pairwise_iou(a[:0], b).shape == (0, 11)
    degenerate = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
    assert pairwise_iou(degenerate, degenerate)[0, 0] == 0.0


def test_hand_case_forces_best_prior():
    priors = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 6], [10, 10, 11, 11]], np.float32)
    gts = np.array([[0, 0, 2, 2],        # IoU 1 with prior 1, 0.25 with prior 0
                    [5, 5, 7, 7]],       # best prior 2 with IoU 0.25 < 0.5: forced
                   np.float32)
    res = MaxIoUAssigner(0.5).assign(gts, priors)
    np.testing.assert_array_equal(res.gt_index, [BACKGROUND, 0, 1, BACKGROUND])
    np.testing.assert_allclose(res.max_iou, [0.25, 1.0, 0.25, 0.0])
    assert res.num_pos == 2


def test_shared_best_prior_later_gt_wins():
    priors = np.array([[0, 0, 1, 1], [3, 3, 4, 4]], np.float32)
    gts = np.array([[0, 0, 1, 1], [0, 0, 1, 1.2], [0, 0, 1.1, 1]], np.float32)  # all best on prior 0
    res = MaxIoUAssigner(0.5).assign(gts, priors)
    assert res.gt_index[0] == 2          # the reference's loop leaves the last GT
    assert res.gt_index[1] == BACKGROUND


def test_agrees_with_loop_reference_on_random_boxes():
    rng = np.random.default_rng(1)
    assigner = MaxIoUAssigner(0.5)
    for trial in range(20):
        priors = random_boxes(rng, 60)
        gts = random_boxes(rng, int(rng.integers(1, 9)))
        if trial % 3 == 0:   # duplicate GTs: identical best priors exercise the tie rule
            gts = np.concatenate([gts, gts[:2]], axis=0)
        iou = pairwise_iou(gts, priors)
        np.testing.assert_array_equal(assigner.assign(gts, priors).gt_index, loop_match(iou, 0.5))


def test_every_gt_keeps_a_prior():
    rng = np.random.default_rng(2)
    priors = random_boxes(rng, 200)
    gts = random_boxes(rng, 12, min_side=0.005)
    res = MaxIoUAssigner(0.5).assign(gts, priors)
    iou = pairwise_iou(gts, priors)
    best = iou.argmax(axis=1)
    # each GT's best prior is positive; it belongs to that GT unless a later GT shares it
    for g, p in enumerate(best):
        later = [j for j in range(g + 1, len(gts)) if best[j] == p]
        assert res.gt_index[p] == (later[-1] if later else g)


def test_no_gt_is_all_background():
    priors = np.array([[0, 0, 1, 1], [1, 1, 2, 2]], np.float32)
    res = MaxIoUAssigner(0.5).assign(np.zeros((0, 4), np.float32), priors)
    np.testing.assert_array_equal(res.gt_index, [BACKGROUND, BACKGROUND])


def test_ignore_band():
    priors = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 3], [0, 0, 10, 10.5]], np.float32)
    gts = np.array([[0, 0, 10, 10]], np.float32)      # IoUs 1.0, 0.6, 0.3, 0.952
    res = MaxIoUAssigner(pos_threshold=0.7, neg_threshold=0.4).assign(gts, priors)
    np.testing.assert_array_equal(res.gt_index, [0, IGNORE, BACKGROUND, 0])
    with pytest.raises(ValueError):
        MaxIoUAssigner(pos_threshold=0.4, neg_threshold=0.5)


def test_target_encoding_hand_case():
    priors = np.array([[0.25, 0.25, 0.5, 0.5],      # (cx, cy, w, h)
                       [0.75, 0.75, 0.5, 0.5],
                       [0.5, 0.5, 0.2, 0.2]], np.float32)
    encoder = SSDTargetEncoder(priors, SSDBoxCoder((0.1, 0.2)), MaxIoUAssigner(0.5))
    boxes = np.array([[0.0, 0.0, 0.6, 0.4]], np.float32)   # centre (0.3, 0.2), size (0.6, 0.4)
    loc_t, conf_t = encoder(boxes, np.array([3]))
    np.testing.assert_array_equal(conf_t, [4, 0, 0])         # label 3 -> class 4; 0 = background
    expected = [(0.3 - 0.25) / (0.1 * 0.5), (0.2 - 0.25) / (0.1 * 0.5),
                np.log(0.6 / 0.5) / 0.2, np.log(0.4 / 0.5) / 0.2]
    np.testing.assert_allclose(loc_t[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loc_t[1:], 0)
    assert loc_t.dtype == np.float32 and conf_t.dtype == np.int32

    loc_t, conf_t = encoder(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert loc_t.shape == (3, 4) and not loc_t.any() and not conf_t.any()


def test_encoder_round_trips_through_decode():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0.1, 0.9, (300, 2))
    priors = np.concatenate([centres, rng.uniform(0.05, 0.4, (300, 2))], axis=1).astype(np.float32)
    coder = SSDBoxCoder((0.1, 0.2))
    encoder = SSDTargetEncoder(priors, coder, MaxIoUAssigner(0.5))
    boxes = random_boxes(rng, 5, min_side=0.05)
    loc_t, conf_t = encoder(boxes, np.arange(5))
    pos = conf_t > 0
    matched = MaxIoUAssigner(0.5).assign(boxes, center_to_corner(priors)).gt_index[pos]
    np.testing.assert_allclose(coder.decode(loc_t[pos], priors[pos]), boxes[matched], atol=1e-5)
    np.testing.assert_array_equal(conf_t[pos], matched + 1)


def _mmdet_loop(iou, pos, neg):
    """mmdetection's MaxIoUAssigner (gt_max_assign_all=True, min_pos_iou=0) as a plain loop:
    thresholds first, then for every GT in order, every anchor at that GT's best IoU."""
    num_gts, num_priors = iou.shape
    best_gt = iou.argmax(axis=0)
    best = iou.max(axis=0)
    out = np.full(num_priors, IGNORE, dtype=np.int64)
    out[best < neg] = BACKGROUND
    out[best >= pos] = best_gt[best >= pos]
    for g in range(num_gts):
        gmax = iou[g].max()
        if gmax > 0:
            for p in range(num_priors):
                if iou[g, p] == gmax:
                    out[p] = g
    return out


def test_force_all_ties_hand_case():
    """GT 0's best IoU 0.3 is shared by priors 1 and 3: both forced (SSD forcing takes prior 1 only)."""
    iou = np.array([[0.1, 0.3, 0.0, 0.3, 0.2],
                    [0.0, 0.0, 0.6, 0.1, 0.45]], dtype=np.float32)
    ties = MaxIoUAssigner(0.5, 0.4, force_all_ties=True).assign_from_iou(iou).gt_index
    first = MaxIoUAssigner(0.5, 0.4).assign_from_iou(iou).gt_index
    np.testing.assert_array_equal(ties, [BACKGROUND, 0, 1, 0, IGNORE])
    np.testing.assert_array_equal(first, [BACKGROUND, 0, 1, BACKGROUND, IGNORE])


def test_force_all_ties_matches_mmdetection_loop():
    """Quantised IoUs make ties frequent; later GTs win shared anchors, as in mmdetection."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        g, p = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        iou = (rng.integers(0, 8, (g, p)) / 8.0).astype(np.float32)
        got = MaxIoUAssigner(0.5, 0.4, force_all_ties=True).assign_from_iou(iou).gt_index
        np.testing.assert_array_equal(got, _mmdet_loop(iou, 0.5, 0.4))


def test_both_assigners_return_one_assignment_type():
    """Max-IoU and ATSS results share the Assignment masks (heads/assigners/assignment.py)."""
    from heads.assigners import ATSSAssigner
    from heads.assigners.assignment import Assignment

    gt = np.array([[10.0, 10.0, 50.0, 50.0]])
    anchors = np.array([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0], [12.0, 12.0, 48.0, 48.0]])
    max_iou = MaxIoUAssigner(pos_threshold=0.5, neg_threshold=0.4).assign(gt, anchors)
    atss = ATSSAssigner(topk=3).assign(anchors, [3], gt, np.array([2]))
    for result in (max_iou, atss):
        assert isinstance(result, Assignment)
        np.testing.assert_array_equal(result.pos_mask, result.gt_index >= 0)
        np.testing.assert_array_equal(result.neg_mask, result.gt_index == -1)
        assert result.num_pos == int((result.gt_index >= 0).sum())
    np.testing.assert_array_equal(max_iou.gt_index, [0, -1, 0])
