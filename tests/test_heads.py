"""Dense one-stage heads (RetinaNet, ATSS, UMOP, GFL, VFNet) on tiny levels, PyNative.

- in-graph anchors equal the data pipeline's `AnchorGenerator.grid_anchors`;
- box coding helpers and the per-level pre-NMS top-k against NumPy;
- every head: an image without GT gives zero box losses and a positive classification loss, an
  image with one GT gives every part positive (STYLE.md);
- every head's loss equals a NumPy re-statement of REFERENCE 2.3 / 2.4 written with boolean
  indexing (tests/reference/dense_heads_numpy.py) on random outputs and real assignments;
- every head's `predict` equals the NumPy decoding;
- a few SGD steps on fixed features lower every head's loss.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from heads.anchors import AnchorGenerator
from heads.atss_head import ATSSHead
from heads.dense_head_utils import (LevelPriors, bbox2distance, delta_decode, delta_encode, distance2bbox,
                                    integral_distances, prior_bias, topk_per_level)
from heads.gfl_head import GFLHead
from heads.retina_head import RetinaHead
from heads.vfnet_head import VFNetHead
from src.data.dense_targets import AnchorLayout, DenseTargetEncoder
from tests.reference import dense_heads_numpy as ref

LEVELS = [(8, 8), (8, 16)]
INPUT = (128, 128)
MAPS = [(16, 16), (8, 8)]
C = 3
HEAD_NAMES = ["retina", "atss", "umop", "gfl", "vfnet"]
BOX_PARTS = {"retina": ["box"], "atss": ["box", "centerness"], "umop": ["box", "centerness"],
             "gfl": ["box", "dfl"], "vfnet": ["box", "box_refine"]}


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)


def make_head(name, nms_pre=1000):
    kw = dict(feat_channels=8, stacked_convs=1, nms_pre=nms_pre)
    if name == "retina":
        return RetinaHead(LEVELS, C, **kw)
    if name in ("atss", "umop"):
        return ATSSHead(LEVELS, C, cls_loss="progressive_focal" if name == "umop" else "focal", **kw)
    if name == "gfl":
        return GFLHead(LEVELS, C, **kw)
    return VFNetHead(LEVELS, C, **kw)


def generator(name):
    strides = [s for _, s in LEVELS]
    return AnchorGenerator.retinanet(strides) if name == "retina" else AnchorGenerator.atss(strides)


def features(batch, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(Tensor(rng.normal(size=(batch, 8, h, w)).astype(np.float32)) for h, w in MAPS)


def encode(name, images):
    """images: list of (boxes (G, 4) pixels, labels (G,)) -> labels (B, N), boxes (B, N, 4)."""
    layout = AnchorLayout(generator(name), {INPUT: MAPS}, "max_iou" if name == "retina" else "atss", INPUT)
    encoder = DenseTargetEncoder(layout, layout.assigner)
    h, w = INPUT
    rows = [encoder(np.asarray(b, np.float32).reshape(-1, 4) / [w, h, w, h], np.asarray(l), INPUT)
            for b, l in images]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


ONE_GT = ([[10, 12, 80, 74]], [1])
TWO_GTS = ([[10, 12, 80, 74], [5, 70, 45, 120]], [2, 0])
EMPTY = (np.zeros((0, 4)), [])


def losses(head, name, images, seed=0):
    labels, boxes = encode(name, images)
    parts = head.loss(head(features(len(images), seed)), Tensor(labels), Tensor(boxes))
    return dict(zip(head.loss_names, (float(p.asnumpy()) for p in parts))), labels


# ----------------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("gen", [AnchorGenerator.atss((8, 16)), AnchorGenerator.retinanet((8, 16))])
def test_in_graph_anchors_equal_the_pipeline_anchors(gen):
    maps = [(3, 5), (2, 3)]
    feats = tuple(Tensor(np.zeros((1, 2, h, w), np.float32)) for h, w in maps)
    levels = LevelPriors(gen)(feats)
    expected, counts = gen.grid_anchors(maps)
    assert [int(a.shape[0]) for a in levels] == counts
    np.testing.assert_allclose(np.concatenate([a.asnumpy() for a in levels]), expected, rtol=0, atol=1e-5)


def test_box_coding_helpers():
    anchors = np.array([[0, 0, 10, 20], [5, 5, 9, 7]], np.float32)
    gt = np.array([[1, 2, 13, 18], [4, 6, 12, 8]], np.float32)
    for stds in [(1, 1, 1, 1), (0.1, 0.1, 0.2, 0.2)]:
        d = delta_encode(Tensor(anchors), Tensor(gt), stds).asnumpy()
        np.testing.assert_allclose(d, ref.delta_encode(anchors, gt, stds), rtol=1e-5)
        np.testing.assert_allclose(delta_decode(Tensor(anchors), Tensor(d), stds).asnumpy(), gt, atol=1e-4)
    # first anchor, stds 1: centre (5, 10) -> (7, 10), size (10, 20) -> (12, 16)
    np.testing.assert_allclose(delta_encode(Tensor(anchors[:1]), Tensor(gt[:1])).asnumpy(),
                               [[0.2, 0.0, np.log(1.2), np.log(0.8)]], rtol=1e-5)
    points = np.array([[4, 5], [10, 10]], np.float32)
    dist = bbox2distance(Tensor(points), Tensor(gt)).asnumpy()
    np.testing.assert_allclose(dist, [[3, 3, 9, 13], [6, 4, 2, -2]])
    np.testing.assert_allclose(bbox2distance(Tensor(points), Tensor(gt), 4.0).asnumpy(), [[3, 3, 4, 4], [4, 4, 2, 0]])
    np.testing.assert_allclose(distance2bbox(Tensor(points), Tensor(dist)).asnumpy(), gt)
    # integral: one-hot bins give the bin index; uniform logits give reg_max / 2
    logits = np.full((1, 4, 17), -1e4, np.float32)
    logits[0, np.arange(4), [0, 3, 16, 7]] = 0
    np.testing.assert_allclose(integral_distances(Tensor(logits.reshape(1, 68)), 16).asnumpy(), [[0, 3, 16, 7]],
                               atol=1e-5)
    np.testing.assert_allclose(integral_distances(Tensor(np.zeros((2, 68), np.float32)), 16).asnumpy(),
                               np.full((2, 4), 8.0), rtol=1e-6)
    assert abs(1 / (1 + np.exp(-prior_bias(0.01))) - 0.01) < 1e-9


def test_topk_per_level_keeps_the_best_of_each_level():
    rng = np.random.default_rng(1)
    scores = rng.permutation(2 * 13 * 3).reshape(2, 13, 3).astype(np.float32)   # distinct values
    boxes = rng.normal(size=(2, 13, 4)).astype(np.float32)
    b, s = topk_per_level(Tensor(scores), Tensor(boxes), [9, 4], 5)
    b, s = b.asnumpy(), s.asnumpy()
    assert b.shape == (2, 9, 4) and s.shape == (2, 9, 3)
    for i in range(2):
        best = np.argsort(-scores[i, :9].max(-1))[:5]
        got = {tuple(r) for r in s[i, :5]}
        assert got == {tuple(r) for r in scores[i, best]}
        np.testing.assert_array_equal(s[i, 5:], scores[i, 9:])                   # level 2: all 4 kept
        for row_s, row_b in zip(s[i], b[i]):                                       # boxes travel along
            j = int(np.flatnonzero((scores[i] == row_s).all(-1))[0])
            np.testing.assert_array_equal(row_b, boxes[i, j])
    same_b, same_s = topk_per_level(Tensor(scores), Tensor(boxes), [9, 4], 0)
    np.testing.assert_array_equal(same_s.asnumpy(), scores)


# ----------------------------------------------------------------------------------- per head

@pytest.mark.parametrize("name", HEAD_NAMES)
def test_empty_image_zero_box_losses_and_one_gt_all_positive(name):
    head = make_head(name)
    empty, _ = losses(head, name, [EMPTY])
    assert empty["cls"] > 0
    for part in BOX_PARTS[name]:
        assert empty[part] == 0.0, (name, empty)
    one, labels = losses(head, name, [ONE_GT])
    assert (labels >= 0).sum() > 0
    assert all(v > 0 for v in one.values()), (name, one)


def random_outputs(head, name, batch, seed):
    """The head's outputs with its anchors, but random predictions (so every term is exercised)."""
    rng = np.random.default_rng(seed)
    out = head(features(batch, seed))
    n = out[0].shape[1]
    cls = rng.normal(-1.0, 1.5, (batch, n, C)).astype(np.float32)
    anchors_per_level = out[-2:]
    if name == "retina":
        pred = (rng.normal(0, 0.3, (batch, n, 4)),)
    elif name in ("atss", "umop"):
        pred = (rng.normal(0, 0.5, (batch, n, 4)), rng.normal(0, 1, (batch, n, 1)))
    elif name == "gfl":
        pred = (rng.normal(0, 2, (batch, n, 68)),)
    else:
        pred = (np.exp(rng.normal(3, 0.5, (batch, n, 4))), np.exp(rng.normal(3, 0.5, (batch, n, 4))))
    return (Tensor(cls),) + tuple(Tensor(p.astype(np.float32)) for p in pred) + tuple(anchors_per_level)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_loss_matches_numpy_reference(name):
    head = make_head(name)
    labels, boxes = encode(name, [TWO_GTS, EMPTY, ONE_GT])
    assert len(np.unique(labels[0][labels[0] >= 0])) == 2 and (labels[1] >= 0).sum() == 0
    if name == "retina":
        assert (labels == -2).any()           # the ignore band is exercised
    outputs = random_outputs(head, name, 3, seed=3)
    got = [float(p.asnumpy()) for p in head.loss(outputs, Tensor(labels), Tensor(boxes))]
    arrays = [o.asnumpy().astype(np.float64) for o in outputs]
    anchors = np.concatenate(arrays[-2:])
    gt = boxes.astype(np.float64)
    if name == "retina":
        want = ref.retina_loss(arrays[0], arrays[1], labels, gt, anchors)
    elif name in ("atss", "umop"):
        level = np.repeat([0, 1], [len(arrays[-2]), len(arrays[-1])])
        want = ref.atss_loss(arrays[0], arrays[1], arrays[2], labels, gt, anchors, level, 2,
                             progressive=name == "umop")
    elif name == "gfl":
        strides = np.repeat([8.0, 16.0], [len(arrays[-2]), len(arrays[-1])])
        want = ref.gfl_loss(arrays[0], arrays[1], labels, gt, anchors, strides)
    else:
        want = ref.vfnet_loss(arrays[0], arrays[1], arrays[2], labels, gt, anchors)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_predict_matches_numpy_decoding(name):
    head = make_head(name, nms_pre=0)
    outputs = random_outputs(head, name, 2, seed=5)
    predicted = [o.asnumpy() for o in head.predict(outputs)]
    boxes, scores = predicted[:2]
    arrays = [o.asnumpy().astype(np.float64) for o in outputs]
    anchors = np.concatenate(arrays[-2:])
    assert len(predicted) == (3 if name in ("atss", "umop") else 2)
    if name == "retina":
        want_b, want_s = ref.delta_decode(anchors, arrays[1], (1, 1, 1, 1)), ref.sigmoid(arrays[0])
    elif name in ("atss", "umop"):
        want_b = ref.delta_decode(anchors, arrays[1], (0.1, 0.1, 0.2, 0.2))
        want_s = ref.sigmoid(arrays[0])
        # the centerness is a separate score factor (detect() multiplies after its threshold)
        np.testing.assert_allclose(predicted[2], ref.sigmoid(arrays[2])[..., 0], rtol=1e-4, atol=1e-6)
    elif name == "gfl":
        strides = np.repeat([8.0, 16.0], [len(arrays[-2]), len(arrays[-1])])[:, None]
        want_b = ref.distance2bbox(ref.centres(anchors), ref.integral(arrays[1], 16) * strides)
        want_s = ref.sigmoid(arrays[0])
    else:
        want_b, want_s = ref.distance2bbox(ref.centres(anchors), arrays[2]), ref.sigmoid(arrays[0])
    np.testing.assert_allclose(boxes, want_b, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-6)
    # with nms_pre the output keeps min(k, n_l) candidates per level
    head_k = make_head(name, nms_pre=10)
    b10, s10 = head_k.predict(outputs)[:2]
    per_cell = 9 if name == "retina" else 1
    assert b10.shape[1] == 10 + min(10, 64 * per_cell) and s10.shape[2] == C


class _HeadLoss(nn.Cell):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def construct(self, f0, f1, labels, boxes):
        parts = self.head.loss(self.head((f0, f1)), labels, boxes)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total, parts


def sgd_run(name, steps, lr, probe=None):
    """`steps` plain SGD steps of one head on fixed features and targets (GRAPH mode); returns
    the (total, *parts) history and probe(head, features, labels, boxes) before and after."""
    ms.set_context(mode=ms.GRAPH_MODE)
    head = make_head(name, nms_pre=0)
    feats = features(2, seed=7)
    labels, boxes = (Tensor(a) for a in encode(name, [TWO_GTS, ONE_GT]))
    optimizer = nn.SGD(head.trainable_params(), learning_rate=lr)
    grad_fn = ms.value_and_grad(_HeadLoss(head), None, optimizer.parameters, has_aux=True)
    probes = [probe(head, feats, labels, boxes)] if probe else []
    history = []
    for _ in range(steps):
        (total, parts), grads = grad_fn(*feats, labels, boxes)
        optimizer(grads)
        history.append([float(total.asnumpy())] + [float(p.asnumpy()) for p in parts])
    if probe:
        probes.append(probe(head, feats, labels, boxes))
    return np.array(history), probes


@pytest.mark.parametrize("name, lr", [("retina", 0.3), ("atss", 0.1), ("umop", 0.1), ("vfnet", 0.1)])
def test_few_sgd_steps_lower_the_loss(name, lr):
    history, _ = sgd_run(name, 8, lr)
    assert np.all(np.isfinite(history))
    assert history[-1, 0] < 0.9 * history[0, 0], (name, history[:, 0])


def _positive_box_iou(head, feats, labels, boxes):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    pred = head.predict(head(feats))[0]
    pos = labels.asnumpy() >= 0
    iou, _ = ref.iou_giou(pred.asnumpy()[pos].astype(np.float64), boxes.asnumpy()[pos].astype(np.float64))
    ms.set_context(mode=ms.GRAPH_MODE)
    return float(iou.mean())


def test_few_sgd_steps_improve_gfl():
    """GFL's total is not a fixed objective at the start of training: the box and DFL terms are
    weighted by the predicted class score itself (normalised by max(sum, 1), i.e. not at all
    while the scores are ~0.01) and the QFL target is the IoU of the predicted box, so as
    scores and boxes improve those terms first grow (mmdetection's early logs show the same).
    What the steps must improve is the regression: the positives' predicted boxes get closer
    to their GT. The GFL detector's total does drop over a few steps
    (tests/test_heads_e2e.py)."""
    history, (before, after) = sgd_run("gfl", 8, 0.3, probe=_positive_box_iou)
    assert np.all(np.isfinite(history))
    assert after > before + 0.05, (before, after, history)


def test_head_level_and_class_checks():
    with pytest.raises(ValueError, match="same channel count"):
        GFLHead([(8, 8), (16, 16)], 3)
    with pytest.raises(ValueError, match="cls_loss"):
        ATSSHead(LEVELS, 3, cls_loss="softmax")
    head = make_head("gfl")
    assert sum(p.size for p in head.scales.get_parameters()) == 2     # one Scale per level
    # the classification bias starts at -log(99) (REFERENCE 2.1)
    np.testing.assert_allclose(head.gfl_cls.bias.asnumpy(), np.full(C, -np.log(99)), rtol=1e-6)


def test_dense_decoder_and_sigmoid_detect():
    """Dense outputs: pixel boxes of the input -> [0, 1]; sigmoid scores without a background
    column give the same detections as with an all-zero background column prepended."""
    from src.postprocess import DenseOutputDecoder, detect

    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (40, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 0.3, (40, 3)).astype(np.float32)
    norm, same, has_background, factors = DenseOutputDecoder((128, 256))((boxes, scores))
    assert has_background is False and same is scores and factors is None
    np.testing.assert_allclose(norm * [256, 128, 256, 128], boxes, rtol=1e-6)
    kwargs = dict(score_threshold=0.05, nms_method="nms", nms_threshold=0.6, keep_per_class=0, max_per_image=100,
                  pixel_offset=False)
    got = detect(boxes, scores, has_background=False, **kwargs)
    want = detect(boxes, np.concatenate([np.zeros((40, 1), np.float32), scores], 1), **kwargs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert set(got.labels.tolist()) <= {0, 1, 2}           # class labels, 0-based, as for the softmax head
