"""Fixed-shape per-anchor targets of the dense heads (src/data/dense_targets.py) and the dense
training pipeline's batches."""
import os
import pickle

import numpy as np
import pytest

from heads.anchors import AnchorGenerator
from heads.assigners.atss import ATSSAssigner
from heads.box_ops import pairwise_iou
from src.builder import build_priors, train_data_settings
from src.config import load_config
from src.data.dense_targets import AnchorLayout, DenseTargetEncoder
from src.data.pipeline import create_train_dataset
from src.data.synthetic import make_synthetic_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
HW = (48, 80)
MAPS = [(6, 10), (3, 5)]


def layout(kind="atss"):
    gen = AnchorGenerator.retinanet((8, 16)) if kind == "max_iou" else AnchorGenerator.atss((8, 16))
    return AnchorLayout(gen, {HW: MAPS}, kind, HW)


def test_layout_anchors_cache_and_pickle():
    lay = layout()
    anchors, counts = lay.anchors(HW)
    expected, expected_counts = AnchorGenerator.atss((8, 16)).grid_anchors(MAPS)
    np.testing.assert_array_equal(anchors, expected)
    assert counts == expected_counts == [60, 15] and lay.num_priors() == 75
    assert lay.anchors(HW)[0] is anchors                        # cached
    clone = pickle.loads(pickle.dumps(lay))                     # data workers get no cache copy
    assert clone._cache == {} and clone.num_anchors(HW) == 75
    with pytest.raises(ValueError, match="no anchor layout for a 64x64 input"):
        lay.anchors((64, 64))


def test_atss_targets_equal_the_assigner():
    lay = layout()
    boxes_px = np.array([[4, 3, 40, 30], [30, 10, 78, 46], [2, 20, 20, 44]], np.float32)
    labels = np.array([4, 0, 2])
    norm = boxes_px / np.array([HW[1], HW[0], HW[1], HW[0]], np.float32)    # non-square input
    out_labels, out_boxes = DenseTargetEncoder(lay, "atss")(norm, labels, HW)
    anchors, counts = lay.anchors(HW)
    result = ATSSAssigner(9).assign(anchors, counts, boxes_px, labels)
    assert out_labels.dtype == np.int32 and out_boxes.dtype == np.float32
    assert out_labels.shape == (75,) and out_boxes.shape == (75, 4)
    pos = result.gt_index >= 0
    assert pos.sum() >= 3
    np.testing.assert_array_equal(out_labels, np.where(pos, labels[np.maximum(result.gt_index, 0)], -1))
    np.testing.assert_allclose(out_boxes[pos], boxes_px[result.gt_index[pos]], rtol=1e-6)
    assert np.all(out_boxes[~pos] == 0)


def test_max_iou_targets_positive_ignore_background_and_forced():
    lay = layout("max_iou")
    boxes_px = np.array([[8, 8, 40, 40], [60, 30, 66, 36]], np.float32)     # the second is tiny: forced
    labels = np.array([1, 3])
    norm = boxes_px / np.array([HW[1], HW[0], HW[1], HW[0]], np.float32)
    out_labels, out_boxes = DenseTargetEncoder(lay, "max_iou")(norm, labels, HW)
    anchors, _ = lay.anchors(HW)
    iou = pairwise_iou(boxes_px, anchors)                                    # (2, N)
    best = iou.max(0)
    assert set(np.flatnonzero(out_labels == 1)) >= set(np.flatnonzero((best >= 0.5) & (iou.argmax(0) == 0)))
    assert np.all(out_labels[(best >= 0.4) & (best < 0.5)] == -2)            # ignore band
    # every anchor tied at the tiny GT's best IoU is forced (mmdetection's gt_max_assign_all): it lies
    # inside several anchors of one size, which all have IoU = its area / theirs
    forced = np.flatnonzero(iou[1] == iou[1].max())
    assert len(forced) > 1
    assert np.all(iou[1, forced] < 0.4) and np.all(out_labels[forced] == 3)  # best anchors of each GT
    np.testing.assert_allclose(out_boxes[forced], np.repeat(boxes_px[1:], len(forced), 0), rtol=1e-6)
    background = (best < 0.4)
    background[forced] = False
    assert np.all(out_labels[background] == -1) and np.all(out_boxes[background] == 0)


@pytest.mark.parametrize("kind", ["atss", "max_iou"])
def test_no_ground_truth_is_all_background(kind):
    out_labels, out_boxes = DenseTargetEncoder(layout(kind), kind)(np.zeros((0, 4)), np.zeros(0), HW)
    assert np.all(out_labels == -1) and np.all(out_boxes == 0)


def test_encoder_rejects_bad_input():
    with pytest.raises(ValueError, match="assigner"):
        DenseTargetEncoder(layout(), "fcos")
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        DenseTargetEncoder(layout(), "atss")(np.zeros((2, 4)), np.zeros(1), HW)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dense"))
    make_synthetic_coco(out, num_train=8, num_val=2, seed=3)
    return out


@pytest.mark.parametrize("head, assigner", [("gfl", "atss"), ("retina", "max_iou")])
def test_dense_train_batches(data_dir, head, assigner):
    cfg = load_config(TINY, [f"data.root={data_dir}", f"model.head.name={head}", "data.num_workers=1"])
    priors = build_priors(cfg)
    assert isinstance(priors, AnchorLayout) and priors.assigner == assigner
    assert list(priors.feature_sizes) == [(128, 128)]
    assert priors.feature_sizes[(128, 128)] == [(16, 16), (8, 8), (4, 4), (2, 2)]    # tiny MLFPN maps
    per_cell = 9 if head == "retina" else 1
    n = (256 + 64 + 16 + 4) * per_cell
    dataset = create_train_dataset(train_data_settings(cfg), priors, batch_size=4, seed=0)
    assert dataset.get_col_names() == ["image", "labels", "boxes"]
    batches = list(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(batches) == 2
    for image, labels, boxes in batches:
        assert image.shape == (4, 3, 128, 128) and image.dtype == np.float32
        assert labels.shape == (4, n) and labels.dtype == np.int32
        assert boxes.shape == (4, n, 4) and boxes.dtype == np.float32
        assert labels.max() < 5 and labels.min() >= (-2 if head == "retina" else -1)
        assert (labels >= 0).any()
        assert np.all(boxes[labels < 0] == 0)
        pos = boxes[labels >= 0]
        assert np.all(pos[:, 2] > pos[:, 0]) and np.all(pos[:, 3] > pos[:, 1])
        assert pos.min() >= -1e-3 and pos.max() <= 128 + 1e-3                 # input pixels
