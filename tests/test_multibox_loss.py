"""MultiBox loss (REFERENCE 1.8) against a NumPy computation written here, plus the mmdetection-style
empty-GT / one-GT cases."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from heads.losses.multibox_loss import hard_negative_mask, multibox_loss, softmax_cross_entropy


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def np_ce(logits, labels):
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    return lse - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


def np_smooth_l1(d):
    a = np.abs(d)
    return np.where(a < 1, 0.5 * a * a, a - 0.5)


def np_mined_negatives(ce, labels, ratio, empty_negatives):
    """Per image: the num_neg background priors of largest CE (positives ranked as 0)."""
    mask = np.zeros_like(labels, dtype=bool)
    for b in range(labels.shape[0]):
        pos = labels[b] > 0
        num_pos = pos.sum()
        num_neg = min(ratio * num_pos if num_pos else empty_negatives, labels.shape[1] - 1)
        mining = np.where(pos, 0.0, ce[b])
        order = np.argsort(-mining, kind="stable")
        chosen = order[:num_neg]
        mask[b, chosen] = True
        mask[b, pos] = False
    return mask


def np_multibox(loc_p, conf_p, loc_t, conf_t, ratio=3, empty_negatives=0):
    pos = conf_t > 0
    n = max(pos.sum(), 1)
    loc = (np_smooth_l1(loc_p - loc_t).sum(-1) * pos).sum() / n
    ce = np_ce(conf_p, conf_t)
    neg = np_mined_negatives(ce, conf_t, ratio, empty_negatives)
    conf = (ce * (pos | neg)).sum() / n
    return loc, conf


def random_case(rng, batch=2, priors=300, classes=5, positives=(4, 0)):
    loc_p = rng.normal(size=(batch, priors, 4)).astype(np.float32)
    loc_t = rng.normal(size=(batch, priors, 4)).astype(np.float32)
    conf_p = rng.normal(size=(batch, priors, classes)).astype(np.float32) * 2
    conf_t = np.zeros((batch, priors), np.int32)
    for b, k in enumerate(positives):
        idx = rng.choice(priors, size=k, replace=False)
        conf_t[b, idx] = rng.integers(1, classes, size=k)
    return loc_p, conf_p, loc_t, conf_t


def run(loc_p, conf_p, loc_t, conf_t, ratio=3, empty_negatives=0):
    loc, conf = multibox_loss(Tensor(loc_p), Tensor(conf_p), Tensor(loc_t), Tensor(conf_t), ratio, empty_negatives)
    return float(loc.asnumpy()), float(conf.asnumpy())


@pytest.mark.parametrize("positives", [(4, 0), (7, 2), (1, 1), (30, 12)])
@pytest.mark.parametrize("empty_negatives", [0, 8])
def test_matches_numpy_reference(positives, empty_negatives):
    rng = np.random.default_rng(sum(positives) + empty_negatives)
    case = random_case(rng, positives=positives)
    got = run(*case, empty_negatives=empty_negatives)
    want = np_multibox(*case, empty_negatives=empty_negatives)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mined_negatives_are_three_times_positives_and_hardest():
    rng = np.random.default_rng(3)
    loc_p, conf_p, loc_t, conf_t = random_case(rng, positives=(5, 9))
    ce = np_ce(conf_p, conf_t)
    mask = hard_negative_mask(softmax_cross_entropy(Tensor(conf_p), Tensor(conf_t)), Tensor(conf_t > 0), 3).asnumpy()
    for b, k in enumerate((5, 9)):
        assert mask[b].sum() == 3 * k
        assert not (mask[b] & (conf_t[b] > 0)).any()
        background = conf_t[b] == 0
        # every mined negative is at least as hard as every background prior left out
        assert ce[b][mask[b]].min() >= ce[b][background & ~mask[b]].max()
    np.testing.assert_array_equal(mask, np_mined_negatives(ce, conf_t, 3, 0))


def test_negatives_capped_by_available_priors():
    rng = np.random.default_rng(4)
    loc_p, conf_p, loc_t, conf_t = random_case(rng, batch=1, priors=20, positives=(8,))
    mask = hard_negative_mask(softmax_cross_entropy(Tensor(conf_p), Tensor(conf_t)), Tensor(conf_t > 0), 3).asnumpy()
    # min(3 * 8, P - 1) = 19 ranks, of which the 8 positives are removed: all 12 background priors
    assert mask.sum() == 12
    assert (mask[0] == (conf_t[0] == 0)).all()


def test_empty_gt_image_gives_zero_box_loss_and_positive_class_loss():
    rng = np.random.default_rng(5)
    loc_p, conf_p, loc_t, conf_t = random_case(rng, batch=1, positives=(0,))
    loc, conf = run(loc_p, conf_p, loc_t, conf_t, empty_negatives=8)
    assert loc == 0.0
    assert conf > 0.0
    # with the reference's pure 3:1 mining an empty image contributes nothing
    assert run(loc_p, conf_p, loc_t, conf_t, empty_negatives=0) == (0.0, 0.0)


def test_one_gt_image_gives_every_part_positive():
    rng = np.random.default_rng(6)
    loc_p, conf_p, loc_t, conf_t = random_case(rng, batch=1, positives=(1,))
    loc, conf = run(loc_p, conf_p, loc_t, conf_t)
    assert loc > 0 and conf > 0


def test_ignored_priors_are_never_counted():
    rng = np.random.default_rng(7)
    loc_p, conf_p, loc_t, conf_t = random_case(rng, batch=1, priors=50, positives=(3,))
    ignored = conf_t.copy()
    ignored[0, (conf_t[0] == 0).nonzero()[0][:20]] = -1
    got = run(loc_p, conf_p, loc_t, ignored)
    # same as dropping those priors altogether
    keep = ignored[0] >= 0
    want = np_multibox(loc_p[:, keep], conf_p[:, keep], loc_t[:, keep], ignored[:, keep])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_graph_mode_equals_pynative():
    rng = np.random.default_rng(8)
    case = [Tensor(a) for a in random_case(rng)]
    eager = [float(v.asnumpy()) for v in multibox_loss(*case, 3, 8)]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = [float(v.asnumpy()) for v in ms.jit(multibox_loss)(*case, 3, 8)]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, rtol=1e-6)
