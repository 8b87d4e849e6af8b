"""Sigmoid one-stage losses (REFERENCE 2.3) against the formulas written out here in NumPy / PyTorch."""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Tensor, ops

from heads.losses import (aligned_box_giou, aligned_box_iou, anchor_level_index, centerness_loss,
                          centerness_target, distribution_focal_loss, giou_loss, point_box_distances,
                          progressive_focal_loss, progressive_focal_params, quality_focal_loss,
                          sigmoid_focal_loss, varifocal_loss, weighted_sum)

RTOL = 1e-5


def T(x, dtype=ms.float32):
    return Tensor(np.asarray(x), dtype)


def close(actual, expected, rtol=RTOL, atol=1e-7):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


# ---- NumPy references, straight from the formulas of docs/REFERENCE.md (float64) ----

def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_bce(x, t):
    # -(t log p + (1 - t) log(1 - p))
    return -(t * np_log_sigmoid(x) + (1.0 - t) * np_log_sigmoid(-x))


def np_one_hot(labels, num_classes):
    out = np.zeros((len(labels), num_classes))
    for i, y in enumerate(labels):
        if 0 <= y < num_classes:
            out[i, y] = 1.0
    return out


def np_focal(x, t, alpha=0.25, gamma=2.0):
    p = np_sigmoid(x)
    p_t = np.where(t == 1, p, 1.0 - p)
    alpha_t = np.where(t == 1, alpha, 1.0 - alpha)
    log_p_t = np.where(t == 1, np_log_sigmoid(x), np_log_sigmoid(-x))
    return -alpha_t * (1.0 - p_t) ** gamma * log_p_t


def np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def random_labels(rng, n, num_classes):
    labels = rng.integers(0, num_classes, n)
    labels[rng.random(n) < 0.5] = -1
    labels[0], labels[1] = -1, num_classes      # both background conventions
    labels[2] = 0
    return labels


# ---- focal ----

def test_focal_matches_formula_with_weight_and_avg_factor():
    rng = np.random.default_rng(0)
    n, c = 14, 5
    x = rng.normal(0, 3, (n, c)).astype(np.float32)
    labels = random_labels(rng, n, c)
    w = rng.uniform(0.2, 1.5, n).astype(np.float32)
    ref = np_focal(x.astype(np.float64), np_one_hot(labels, c))
    close(sigmoid_focal_loss(T(x), T(labels, ms.int32), reduction="none").asnumpy(), ref)
    close(sigmoid_focal_loss(T(x), T(labels, ms.int32), T(w), avg_factor=3.0).asnumpy(),
          (ref * w[:, None]).sum() / 3.0)
    # all-negative image: every row background, loss = sum over classes of the negative term
    bg = np.full(n, -1)
    close(sigmoid_focal_loss(T(x), T(bg, ms.int32)).asnumpy(), np_focal(x.astype(np.float64), np.zeros((n, c))).sum())


def test_focal_saturated_logits_finite_and_exact():
    x = np.array([[30.0, -30.0, 0.0], [-30.0, 30.0, 17.0]], np.float32)
    labels = np.array([0, 0])
    ref = np_focal(x.astype(np.float64), np_one_hot(labels, 3))
    got = sigmoid_focal_loss(T(x), T(labels, ms.int32), reduction="none").asnumpy()
    close(got, ref, atol=1e-12)
    grad = ms.grad(lambda z: sigmoid_focal_loss(z, T(labels, ms.int32)))(T(x)).asnumpy()
    assert np.isfinite(grad).all()


# ---- varifocal ----

def np_varifocal(x, q, alpha=0.75, gamma=2.0, iou_weighted=True):
    p = np_sigmoid(x)
    w = np.where(q > 0, q if iou_weighted else 1.0, alpha * p ** gamma)
    return np_bce(x, q) * w


@pytest.mark.parametrize("iou_weighted", [True, False])
def test_varifocal_matches_formula(iou_weighted):
    rng = np.random.default_rng(1)
    n, c = 12, 4
    x = rng.normal(0, 2, (n, c)).astype(np.float32)
    labels = random_labels(rng, n, c)
    ious = rng.uniform(0, 1, n).astype(np.float32)
    labels[3], ious[3] = 1, 0.0                 # positive with no overlap: q clamped to 1e-6
    q = np_one_hot(labels, c) * np.maximum(ious.astype(np.float64), 1e-6)[:, None]
    ref = np_varifocal(x.astype(np.float64), q, iou_weighted=iou_weighted)
    got = varifocal_loss(T(x), T(labels, ms.int32), T(ious), iou_weighted=iou_weighted, reduction="none")
    close(got.asnumpy(), ref)
    w = rng.uniform(0.5, 1.0, n).astype(np.float32)
    got = varifocal_loss(T(x), T(labels, ms.int32), T(ious), T(w), avg_factor=5.0, iou_weighted=iou_weighted)
    close(got.asnumpy(), (ref * w[:, None]).sum() / 5.0)
    # q = 0 everywhere (no positive): only the alpha p^gamma BCE(x, 0) term
    got = varifocal_loss(T(x), T(np.full(n, -1), ms.int32), T(ious))
    close(got.asnumpy(), (0.75 * np_sigmoid(x.astype(np.float64)) ** 2 * np_bce(x.astype(np.float64), 0.0)).sum())


# ---- quality focal ----

def test_quality_focal_matches_formula():
    rng = np.random.default_rng(2)
    n, c = 12, 4
    x = rng.normal(0, 2, (n, c)).astype(np.float32)
    labels = random_labels(rng, n, c)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    labels[4], scores[4] = 2, 0.0               # positive with quality 0
    ref = np.zeros(n)
    for i in range(n):
        for k in range(c):
            xi = float(x[i, k])
            p = np_sigmoid(xi)
            if labels[i] == k:
                s = float(scores[i])
                ref[i] += np_bce(xi, s) * abs(s - p) ** 2
            else:
                ref[i] += np_bce(xi, 0.0) * p ** 2
    got = quality_focal_loss(T(x), T(labels, ms.int32), T(scores), reduction="none")
    close(got.asnumpy(), ref)
    w = rng.uniform(0.5, 1.0, n).astype(np.float32)
    close(quality_focal_loss(T(x), T(labels, ms.int32), T(scores), T(w), avg_factor=2.5).asnumpy(),
          (ref * w).sum() / 2.5)


# ---- distribution focal ----

def test_distribution_focal_matches_formula_and_bin_edges():
    rng = np.random.default_rng(3)
    y = np.concatenate([[0.0, 3.0, 15.9, 7.5, 15.0], rng.uniform(0, 15.9, 7)]).astype(np.float32)
    z = rng.normal(0, 2, (len(y), 17)).astype(np.float32)
    logp = np_log_softmax(z.astype(np.float64))
    ref = np.zeros(len(y))
    for i, yi in enumerate(y.astype(np.float64)):
        yl = int(np.floor(yi))
        yr = yl + 1
        ref[i] = -logp[i, yl] * (yr - yi) - logp[i, yr] * (yi - yl)
    got = distribution_focal_loss(T(z), T(y), reduction="none").asnumpy()
    close(got, ref)
    close(got[0], -logp[0, 0])                  # y = 0: all weight on bin 0
    close(got[1], -logp[1, 3])                  # integer y: all weight on that bin
    # y = reg_max exactly is accepted: all weight on the last bin
    close(distribution_focal_loss(T(z[:1]), T([16.0])).asnumpy(), -logp[0, 16])
    w = rng.uniform(0.5, 1, len(y)).astype(np.float32)
    close(distribution_focal_loss(T(z), T(y), T(w), avg_factor=4.0).asnumpy(), (ref * w).sum() / 4.0)
    # (N, 4, 17) layout of the GFL head with per-box weights broadcast over the 4 sides
    z4, y4 = z[:8].reshape(2, 4, 17), y[:8].reshape(2, 4)
    close(distribution_focal_loss(T(z4), T(y4), T(w[:2])).asnumpy(),
          (ref[:8].reshape(2, 4) * w[:2, None]).sum())


# ---- GIoU ----

def np_giou(a, b, eps=1e-6):
    out = []
    for p, q in zip(a, b):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        union = max((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter, eps)
        cw = max(p[2], q[2]) - min(p[0], q[0])
        ch = max(p[3], q[3]) - min(p[1], q[1])
        enclose = max(cw * ch, eps)
        out.append((inter / union, inter / union - (enclose - union) / enclose))
    return np.array(out)


def test_giou_loss_cases_and_random():
    boxes_a = np.array([[10, 10, 50, 40],       # identical
                        [0, 0, 10, 10],         # disjoint
                        [0, 0, 100, 80],        # nested (b inside a)
                        [5, 5, 25, 45]], np.float32)
    boxes_b = np.array([[10, 10, 50, 40],
                        [20, 30, 40, 35],
                        [20, 10, 50, 30],
                        [15, 0, 35, 20]], np.float32)
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 100, (10, 2, 2))
    wh = rng.uniform(1, 60, (10, 2, 2))
    rand = np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)
    a = np.concatenate([boxes_a, rand[:, 0]])
    b = np.concatenate([boxes_b, rand[:, 1]])
    ref = np_giou(a.astype(np.float64), b.astype(np.float64))
    loss = giou_loss(T(a), T(b), reduction="none").asnumpy()
    close(loss, 1.0 - ref[:, 1], atol=1e-6)
    close(aligned_box_iou(T(a), T(b)).asnumpy(), ref[:, 0], atol=1e-7)
    close(aligned_box_giou(T(a), T(b)).asnumpy(), ref[:, 1], atol=1e-6)
    assert abs(loss[0]) < 1e-6                               # identical: 0
    assert loss[1] > 1.0                                     # disjoint: 1 + (C - U) / C
    close(loss[2], 1.0 - (30 * 20) / (100 * 80))             # nested: C = U, so 1 - IoU
    w = rng.uniform(0.5, 2, len(a)).astype(np.float32)
    close(giou_loss(T(a), T(b), T(w), avg_factor=7.0).asnumpy(), ((1 - ref[:, 1]) * w).sum() / 7.0)


# ---- centerness ----

def test_centerness_target_and_loss():
    points = np.array([[30, 25], [12, 11], [49, 39], [30, 25]], np.float32)
    boxes = np.array([[10, 10, 50, 40], [10, 10, 50, 40], [10, 10, 50, 40], [30, 25, 30, 25]], np.float32)
    d = point_box_distances(T(points), T(boxes)).asnumpy()
    np.testing.assert_array_equal(d[0], [20, 15, 20, 15])
    ref = []
    for l, t, r, b in d[:3].astype(np.float64):
        ref.append(np.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)))
    tgt = centerness_target(T(d)).asnumpy()
    close(tgt[:3], ref)
    assert tgt[0] == pytest.approx(1.0)
    assert tgt[3] == 0.0                                      # zero distances: 0, not NaN
    x = np.array([0.3, -1.2, 2.0, 0.0], np.float32)
    w = np.array([1, 1, 1, 0], np.float32)
    ref_loss = np_bce(x[:3].astype(np.float64), np.array(ref))
    close(centerness_loss(T(x), T(tgt), T(w), avg_factor=3.0).asnumpy(), ref_loss.sum() / 3.0)


# ---- UMOP progressive focal ----

def np_progressive(x, labels, level, num_levels):
    c = x.shape[1]
    t = np_one_hot(labels, c)
    gammas, alphas = np.zeros(num_levels), np.zeros(num_levels)
    for lv in range(num_levels):
        nll = [-np_log_sigmoid(x[i, labels[i]]) for i in range(len(labels))
               if level[i] == lv and 0 <= labels[i] < c]
        c_l = np.mean(nll) if nll else 2.0
        gammas[lv] = min(max(c_l, 1.5), 2.5)
        alphas[lv] = 0.5 / gammas[lv]
    loss = np.stack([np_focal(x[i], t[i], alphas[level[i]], gammas[level[i]]) for i in range(len(labels))])
    return gammas, alphas, loss


def umop_case():
    # level 0: confident positives (c ~ 0.05 -> gamma 1.5); level 1: hopeless positives (c ~ 6 ->
    # gamma 2.5); level 2: no positive (c = 2 -> gamma 2, alpha .25); level 3: c inside the range
    rng = np.random.default_rng(5)
    counts = [6, 5, 4, 3]
    num_classes = 3
    level = np.repeat(np.arange(4), counts)
    x = rng.normal(-2, 1, (sum(counts), num_classes))
    labels = np.full(sum(counts), -1)
    labels[[0, 2]] = [1, 0]
    x[0, 1], x[2, 0] = 3.0, 2.5
    labels[[6, 9]] = [2, 2]
    x[6, 2], x[9, 2] = -6.0, -5.5
    labels[[15, 16]] = [0, 1]
    x[15, 0], x[16, 1] = -1.0, -2.0            # c = (1.313 + 2.127) / 2 = 1.72
    return x.astype(np.float32), labels, level, counts


def test_progressive_focal_params_per_level():
    x, labels, level, counts = umop_case()
    gamma, alpha = progressive_focal_params(T(x), T(labels, ms.int32), anchor_level_index(counts), 4)
    ref_gamma, ref_alpha, _ = np_progressive(x.astype(np.float64), labels, level, 4)
    assert ref_gamma[0] == 1.5 and ref_gamma[1] == 2.5 and ref_gamma[2] == 2.0
    assert 1.5 < ref_gamma[3] < 2.5
    close(gamma.asnumpy(), ref_gamma)
    close(alpha.asnumpy(), ref_alpha)
    close(alpha.asnumpy()[2], 0.25)
    # the cross-device hook sees the raw c_l (before the clamp)
    gamma, _ = progressive_focal_params(T(x), T(labels, ms.int32), anchor_level_index(counts), 4,
                                        reduce_levels=lambda c: c * 0.0 + 1.7)
    close(gamma.asnumpy(), [1.7] * 4)


def test_progressive_focal_loss_value_and_gradient():
    x, labels, level, counts = umop_case()
    ref_gamma, ref_alpha, ref = np_progressive(x.astype(np.float64), labels, level, 4)
    lv = anchor_level_index(counts)
    lab = T(labels, ms.int32)
    close(progressive_focal_loss(T(x), lab, lv, 4, reduction="none").asnumpy(), ref)
    close(progressive_focal_loss(T(x), lab, lv, 4, avg_factor=6.0).asnumpy(), ref.sum() / 6.0)
    # batched (B, A, C) logits with a per-anchor (A,) level index
    xb = np.stack([x, x[::-1].copy()])
    lb = np.stack([labels, labels[::-1].copy()])
    _, _, ref_b = np_progressive(xb.reshape(-1, 3).astype(np.float64), lb.reshape(-1),
                                 np.concatenate([level, level]), 4)
    close(progressive_focal_loss(T(xb), T(lb, ms.int32), lv, 4).asnumpy(), ref_b.sum())
    # the gradient treats (gamma_l, alpha_l) as constants (c_l detached)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.eye(4)[:, :3][np.where(labels >= 0, labels, 3)])
    g = torch.tensor(ref_gamma[level])[:, None]
    a = torch.tensor(ref_alpha[level])[:, None]
    p = torch.sigmoid(xt)
    p_t = t * p + (1 - t) * (1 - p)
    a_t = t * a + (1 - t) * (1 - a)
    (-(a_t * (1 - p_t) ** g * torch.log(p_t))).sum().backward()
    grad = ms.grad(lambda z: progressive_focal_loss(z, lab, lv, 4))(T(x)).asnumpy()
    close(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-6)


# ---- reduction, GRAPH mode ----

def test_weighted_sum_rejects_avg_factor_without_sum():
    with pytest.raises(ValueError):
        weighted_sum(T(np.ones(3)), avg_factor=2.0, reduction="none")


def test_losses_compile_in_graph_mode():
    rng = np.random.default_rng(6)
    n, c = 10, 3
    x = T(rng.normal(0, 2, (n, c)).astype(np.float32))
    labels = T(random_labels(rng, n, c), ms.int32)
    ious = T(rng.uniform(0, 1, n).astype(np.float32))
    z = T(rng.normal(0, 1, (n, 17)).astype(np.float32))
    y = T(rng.uniform(0, 15.9, n).astype(np.float32))
    boxes = T(np.array([[0, 0, 10, 10]] * n, np.float32) + rng.uniform(0, 3, (n, 4)).astype(np.float32))
    level = anchor_level_index([5, 3, 2])
    w = T(rng.uniform(0.5, 1, n).astype(np.float32))

    def all_losses(x, labels, ious, z, y, boxes, level, w):
        return ops.stack([
            sigmoid_focal_loss(x, labels, w, 2.0),
            varifocal_loss(x, labels, ious, w, 2.0),
            quality_focal_loss(x, labels, ious, w, 2.0),
            distribution_focal_loss(z, y, w, 2.0),
            giou_loss(boxes, ops.flip(boxes, (0,)), w, 2.0),
            centerness_loss(x[:, 0], centerness_target(point_box_distances(boxes[:, :2] + 1.0, boxes)), w, 2.0),
            progressive_focal_loss(x, labels, level, 3, w, 2.0),
        ])

    args = (x, labels, ious, z, y, boxes, level, w)
    eager = all_losses(*args).asnumpy()
    graph = ms.jit(all_losses)(*args).asnumpy()
    assert np.isfinite(eager).all()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-7)
