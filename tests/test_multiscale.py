"""Input sizes (src/data/resize.py): square and keep-ratio canvases, the per-batch multi-scale
draw, the sampler tokens that carry the batch position, and the inverse mapping the evaluator
uses."""
import os

import cv2
import numpy as np
import pytest

from src.builder import build_priors, eval_data_settings, input_policy, train_data_settings
from src.config import load_config
from src.data.pipeline import EpochSampler, create_test_dataset, create_train_dataset
from src.data.resize import InputPolicy, KeepRatioTrainTransform, keep_ratio_input
from src.data.synthetic import make_synthetic_coco
from src.postprocess import to_original_pixels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
MEAN = (104.0, 117.0, 123.0)


def test_keep_ratio_canvas_and_scale_like_mmdetection():
    policy = InputPolicy("keep_ratio", 800, (480, 800, 960), 1333, 32)
    assert policy.canvas() == (800, 1344)
    assert policy.canvas(480) == (480, 800)            # long side 1333 * 480 / 800 = 800
    assert policy.canvas(960) == (960, 1344)           # long side capped at 1333
    assert policy.canvases() == [(480, 800), (800, 1344), (960, 1344)]
    assert policy.resized_hw((480, 640)) == (800, 1067)          # short side 800
    assert policy.resized_hw((400, 1000)) == (533, 1333)         # long side 1333
    assert policy.resized_hw((640, 480)) == (800, 600)           # portrait: fitted to the canvas height
    sx, sy = policy.scale((480, 640))
    assert sx == pytest.approx(1067 / 640) and sy == pytest.approx(800 / 480)
    square = InputPolicy("square", 320)
    assert square.canvas() == (320, 320) and square.scale((240, 480)) == (320 / 480, 320 / 240)
    assert not square.multi_scale and policy.multi_scale
    with pytest.raises(ValueError, match="resize_mode"):
        InputPolicy("letterbox", 320)


def test_batch_size_draw_is_deterministic_bounded_and_shared():
    policy = InputPolicy("square", 128, (96, 128, 160))
    draws = [policy.choose_size(1, epoch, b) for epoch in range(3) for b in range(40)]
    assert set(draws) == {96, 128, 160}
    assert draws == [policy.choose_size(1, epoch, b) for epoch in range(3) for b in range(40)]
    assert draws != [policy.choose_size(2, epoch, b) for epoch in range(3) for b in range(40)]
    assert InputPolicy("square", 128).choose_size(5, 0, 0) == 128


@pytest.mark.parametrize("shards", [1, 2])
def test_sampler_tokens_carry_epoch_position_and_index(shards):
    for rank in range(shards):
        sampler = EpochSampler(11, seed=3, num_shards=shards, shard_id=rank, start_epoch=2)
        tokens = list(iter(sampler))
        decoded = [sampler.decode(t) for t in tokens]
        assert [d[0] for d in decoded] == [2] * len(sampler)
        assert [d[1] for d in decoded] == list(range(len(sampler)))
        assert [d[2] for d in decoded] == list(sampler.indices(2))
        assert all(t % 11 == d[2] for t, d in zip(tokens, decoded))        # the test source's index rule


def test_keep_ratio_transform_boxes_follow_the_pixels():
    policy = InputPolicy("keep_ratio", 64, (), 96, 32)
    image = np.full((60, 100, 3), 40, np.uint8)                            # h 60, w 100: long side limits
    cv2.rectangle(image, (10, 20), (29, 49), (250, 250, 250), -1)          # x 10..29, y 20..49
    box = np.array([[10, 20, 30, 50]], np.float32)
    for flip in (0.0, 1.0):
        out, boxes, labels = KeepRatioTrainTransform(policy, MEAN, flip_p=flip)(
            image, box, np.array([2]), np.random.default_rng(0))
        assert out.shape == (3, 64, 96) and labels.tolist() == [2]
        h, w = policy.resized_hw((60, 100))
        assert (h, w) == (58, 96)
        assert np.all(out[:, h:, :] == 0)                                  # padding after normalisation
        ys, xs = np.nonzero(out[0] > 100)
        px = boxes[0] * np.array([96, 64, 96, 64])
        np.testing.assert_allclose(px, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)
        if flip:
            assert px[0] > 96 / 2
    back = to_original_pixels(boxes, policy, 60, 100)
    np.testing.assert_allclose(back, [[100 - 30, 20, 100 - 10, 50]], atol=1e-3)     # the flipped box
    # test-time input: the same resize without flip
    np.testing.assert_array_equal(keep_ratio_input(image, policy, None, MEAN),
                                  KeepRatioTrainTransform(policy, MEAN, flip_p=0.0)(
                                      image, box, np.array([2]), np.random.default_rng(0))[0])


def test_square_inverse_mapping_is_the_reference_scaling():
    boxes = np.array([[0.1, 0.2, 0.5, 0.9]], np.float32)
    np.testing.assert_allclose(to_original_pixels(boxes, InputPolicy("square", 320), 240, 480),
                               [[48, 48, 240, 216]], rtol=1e-6)
    clipped = to_original_pixels(np.array([[-0.1, 0.2, 1.3, 0.9]], np.float32), InputPolicy("square", 320), 240,
                                 480, clip=True)
    np.testing.assert_allclose(clipped, [[0, 48, 480, 216]], rtol=1e-6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ms"))
    make_synthetic_coco(out, num_train=12, num_val=3, seed=5)
    return out


def _batches(cfg, workers, seed=4):
    dataset = create_train_dataset(train_data_settings(cfg), build_priors(cfg), batch_size=3, seed=seed,
                                   num_workers=workers)
    return [[np.copy(x) for x in row] for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def test_multi_scale_square_pipeline(data_dir):
    cfg = load_config(TINY, [f"data.root={data_dir}", "model.head.name=atss", "data.train_sizes=[96, 128]"])
    layout = build_priors(cfg)
    assert sorted(layout.feature_sizes) == [(96, 96), (128, 128)]
    one = _batches(cfg, 1)
    policy = input_policy(cfg)
    sizes = [policy.choose_size(4, 0, b) for b in range(len(one))]
    assert len(one) == 4 and set(sizes) == {96, 128}
    for (image, labels, boxes), size in zip(one, sizes):
        assert image.shape == (3, 3, size, size)                     # one size per batch
        assert labels.shape == (3, layout.num_anchors((size, size)))
        assert boxes.shape == labels.shape + (4,)
    two = _batches(cfg, 2)                                           # independent of the worker count
    for a, b in zip(one, two):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_multibox_refuses_multi_scale(data_dir):
    cfg = load_config(TINY, [f"data.root={data_dir}", "data.train_sizes=[96, 128]"])
    with pytest.raises(ValueError, match="multibox head has one fixed prior set"):
        create_train_dataset(train_data_settings(cfg), build_priors(cfg), batch_size=3)


def test_keep_ratio_fpn_pipeline(data_dir):
    cfg = load_config(TINY, [f"data.root={data_dir}", "model.backbone.name=resnet50", "model.neck.name=fpn",
                             "model.neck.fpn.out_channels=16", "model.head.name=gfl", "data.resize_mode=keep_ratio",
                             "model.input_size=64", "data.max_size=96", "data.train_sizes=[32, 64]"])
    layout = build_priors(cfg)
    assert sorted(layout.feature_sizes) == [(32, 64), (64, 96)]
    assert layout.feature_sizes[(64, 96)] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]   # P3-P7
    shapes = {b[0].shape[2:] for b in _batches(cfg, 1)}
    assert shapes <= {(32, 64), (64, 96)} and len(shapes) >= 1
    test = create_test_dataset(eval_data_settings(cfg), batch_size=3)
    image, image_id, orig_hw = next(test.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert image.shape == (3, 3, 64, 96)
