"""Dense heads' detections equal mmdetection 2.14's `get_bboxes` + `multiclass_nms` for the same raw
outputs (issue 14, item 1).

The reference below is written from mmdetection's documented behaviour, in NumPy, float64:
per level keep the `nms_pre` anchors with the highest max-over-classes score (ATSS/UMOP: score x
sigmoid(centerness)); candidates are (anchor, class) pairs whose *class* score is > score_thr;
their score is then multiplied by the centerness (`score_factors`); per-class greedy NMS
(continuous IoU > 0.6 suppresses); all classes sorted by score; the first `max_per_img`.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from heads.atss_head import ATSSHead
from src.postprocess import DenseOutputDecoder, detect
from tests.reference import dense_heads_numpy as ref
from tests.test_heads import C, INPUT, make_head, random_outputs

DENSE_TEST = dict(score_threshold=0.05, nms_method="nms", nms_threshold=0.6, keep_per_class=0,
                  max_per_image=100, pixel_offset=False)


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)


def ours(head, outputs, image=0):
    """head.predict -> DenseOutputDecoder -> detect, in input pixels (what evaluation runs)."""
    predicted = [o.asnumpy()[image] for o in head.predict(outputs)]
    boxes, scores, has_background, factors = DenseOutputDecoder(INPUT)(predicted)
    h, w = INPUT
    return detect(boxes * np.array([w, h, w, h], np.float32), scores, has_background=has_background,
                  score_factors=factors, **DENSE_TEST)


def greedy_nms(boxes, scores, thr):
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / (area(boxes[i]) + area(boxes[rest]) - inter)
        order = rest[iou <= thr]
    return np.array(keep, dtype=np.int64)


def mmdet_reference(cls_logits, boxes, ctr_logits, counts, nms_pre, score_thr=0.05, iou_thr=0.6, max_num=100):
    """(boxes (K, 4), scores (K,), labels (K,) = class) of one image, mmdetection 2.14's way."""
    scores = ref.sigmoid(cls_logits.astype(np.float64))
    factors = None if ctr_logits is None else ref.sigmoid(ctr_logits.astype(np.float64)).reshape(-1)
    kept, start = [], 0
    for n in counts:
        rows = np.arange(start, start + n)
        rank = scores[rows] if factors is None else scores[rows] * factors[rows, None]
        if 0 < nms_pre < n:
            rows = rows[np.argsort(-rank.max(1), kind="stable")[:nms_pre]]
        kept.append(rows)
        start += n
    rows = np.concatenate(kept)
    b, s = boxes[rows], scores[rows]
    f = None if factors is None else factors[rows]
    out_b, out_s, out_l = [], [], []
    for c in range(s.shape[1]):
        valid = s[:, c] > score_thr                         # the class score, before the factor
        cand_s = s[valid, c] * (1.0 if f is None else f[valid])
        cand_b = b[valid]
        keep = greedy_nms(cand_b, cand_s, iou_thr)
        out_b.append(cand_b[keep])
        out_s.append(cand_s[keep])
        out_l.append(np.full(keep.size, c))
    out_b, out_s, out_l = (np.concatenate(x) for x in (out_b, out_s, out_l))
    order = np.argsort(-out_s, kind="stable")[:max_num]
    return out_b[order], out_s[order], out_l[order]


def test_centerness_multiplies_after_the_threshold():
    """sigmoid(cls) = 0.08, sigmoid(centerness) = 0.5, threshold 0.05: mmdetection keeps one box
    scored 0.04 (a product thresholded first would lose it)."""
    head = make_head("atss", nms_pre=1000)
    outputs = random_outputs(head, "atss", 1, seed=0)
    n = outputs[0].shape[1]
    cls = np.full((1, n, C), -20.0, np.float32)             # sigmoid ~ 2e-9: never a candidate
    cls[0, 37, 1] = np.log(0.08 / 0.92)
    ctr = np.zeros((1, n, 1), np.float32)                   # sigmoid 0.5
    deltas = np.zeros((1, n, 4), np.float32)                # the anchor itself
    outputs = (Tensor(cls), Tensor(deltas), Tensor(ctr)) + tuple(outputs[3:])
    dets = ours(head, outputs)
    assert len(dets.scores) == 1
    np.testing.assert_allclose(dets.scores, [0.04], rtol=1e-5)
    assert dets.labels.tolist() == [1]                      # class column 1 of a sigmoid head = label 1
    anchors = np.concatenate([a.asnumpy() for a in outputs[3:]])
    np.testing.assert_allclose(dets.boxes[0], anchors[37], atol=1e-4)


def test_detect_score_factor_by_hand():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9]], np.float32)
    scores = np.array([[0.08], [0.04], [0.5]], np.float32)
    factors = np.array([0.5, 1.0, 0.1], np.float32)
    out = detect(boxes, scores, has_background=False, score_factors=factors, **DENSE_TEST)
    # row 1 fails the class threshold despite factor 1; row 2 (0.5 -> 0.05) outranks row 0 (0.04)
    # and suppresses it (IoU 0.9)
    np.testing.assert_allclose(out.scores, [0.05], rtol=1e-6)
    np.testing.assert_array_equal(out.boxes, boxes[2:])
    with pytest.raises(ValueError, match="score_factors"):
        detect(boxes, scores, has_background=False, score_factors=factors[:2], **DENSE_TEST)


@pytest.mark.parametrize("name", ["atss", "umop", "retina", "gfl"])
def test_detections_equal_mmdetection_reference(name):
    """Random raw outputs of two images, nms_pre 20 (below each level's count, so the ranking
    matters): same detections as the reference, box for box."""
    head = make_head(name, nms_pre=20)
    outputs = random_outputs(head, name, 2, seed=11)
    arrays = [o.asnumpy().astype(np.float64) for o in outputs]
    level_anchors = arrays[-2:]
    anchors = np.concatenate(level_anchors)
    counts = [len(a) for a in level_anchors]
    total = 0
    for image in range(2):
        if name == "retina":
            boxes, ctr = ref.delta_decode(anchors, arrays[1][image], (1, 1, 1, 1)), None
        elif name in ("atss", "umop"):
            boxes = ref.delta_decode(anchors, arrays[1][image], (0.1, 0.1, 0.2, 0.2))
            ctr = arrays[2][image]
        else:
            strides = np.repeat([8.0, 16.0], counts)[:, None]
            boxes, ctr = ref.distance2bbox(ref.centres(anchors), ref.integral(arrays[1][image], 16) * strides), None
        want_b, want_s, want_l = mmdet_reference(arrays[0][image], boxes, ctr, counts, nms_pre=20)
        got = ours(head, outputs, image)
        assert len(got.scores) == len(want_s), (name, image, len(got.scores), len(want_s))
        np.testing.assert_array_equal(got.labels, want_l)
        np.testing.assert_allclose(got.scores, want_s, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.boxes, want_b, rtol=1e-4, atol=1e-3)
        total += len(want_s)
    assert total > 20                                        # the case is not trivially empty


def test_atss_head_outputs_centerness_apart():
    head = ATSSHead([(8, 8), (8, 16)], C, feat_channels=8, stacked_convs=1, nms_pre=0)
    outputs = random_outputs(head, "atss", 1, seed=2)
    predicted = head.predict(outputs)
    assert len(predicted) == 3 and predicted[2].shape == predicted[1].shape[:2]
