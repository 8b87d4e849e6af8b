"""SSD augmentation steps (REFERENCE 1.9), each alone, and the composed transform."""
import copy

import cv2
import numpy as np
import pytest

from heads.box_ops import pairwise_iou
from src.data import transforms as T

MEAN = (104.0, 117.0, 123.0)


def scene(seed=0, height=120, width=160):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 60, 90], [70, 10, 150, 50], [100, 60, 130, 110], [5, 5, 25, 15]],
                     np.float32)
    labels = np.array([0, 3, 1, 4], np.int32)
    return image, boxes, labels


def clone(rng):
    return copy.deepcopy(rng)


def test_mirror_is_exact():
    image, boxes, labels = scene()
    out, b, lab = T.mirror(image, boxes, labels, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(out, image[:, ::-1])
    expected = np.array([[100, 20, 150, 90], [10, 10, 90, 50], [30, 60, 60, 110], [135, 5, 155, 15]])
    np.testing.assert_array_equal(b, expected)
    np.testing.assert_array_equal(lab, labels)
    out, b, _ = T.mirror(image, boxes, labels, np.random.default_rng(0), p=0.0)
    assert out is image and np.array_equal(b, boxes)


def test_apply_crop_hand_case():
    image, boxes, labels = scene()
    out, b, lab = T.apply_crop(image, boxes, labels, np.array([20, 0, 110, 80]))
    assert out.shape == (80, 90, 3)
    np.testing.assert_array_equal(out, image[0:80, 20:110])
    # centres: (35,55) in, (110,30) on the right edge -> out (strict), (115,85) out, (15,10) out
    np.testing.assert_array_equal(b, [[0, 20, 40, 80]])
    np.testing.assert_array_equal(lab, [0])


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_crop_window_respects_min_iou(min_iou):
    rng = np.random.default_rng(int(min_iou * 10))
    width, height = 200, 150
    found = 0
    for _ in range(40):
        boxes = np.array([[4, 4, 196, 146], [6, 5, 194, 144]], np.float32)
        roi = T.find_crop_window(boxes, width, height, rng, min_iou, None)
        if roi is None:
            continue
        found += 1
        iou = pairwise_iou(roi[None].astype(np.float32), boxes)[0]
        assert iou.min() >= min_iou                  # the reference: every GT meets it
        assert 0 <= roi[0] < roi[2] <= width and 0 <= roi[1] < roi[3] <= height
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert np.any(np.all((centres > roi[:2]) & (centres < roi[2:]), axis=1))
    assert found > 0


def test_crop_any_box_semantics():
    rng = np.random.default_rng(5)
    boxes = np.array([[10, 10, 30, 30], [20, 20, 190, 140]], np.float32)
    for _ in range(30):
        roi = T.find_crop_window(boxes, 200, 150, rng, 0.5, None, require_all=False)
        if roi is not None:
            assert pairwise_iou(roi[None].astype(np.float32), boxes)[0].max() >= 0.5


def test_random_crop_keeps_pairs_and_bounds():
    image, boxes, labels = scene(1)
    for seed in range(30):
        out, b, lab = T.random_crop(image, boxes, labels, np.random.default_rng(seed))
        h, w = out.shape[:2]
        assert len(b) == len(lab) >= 1
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= h)
        assert set(lab.tolist()) <= set(labels.tolist())
        if out.shape == image.shape:
            continue
        # each kept box is its original box clipped to the crop: its label came along with it
        for box, label in zip(b, lab):
            original = boxes[list(labels).index(label)]
            assert box[2] - box[0] <= original[2] - original[0] + 1e-4
            assert box[3] - box[1] <= original[3] - original[1] + 1e-4


def reference_distort(image, rng):
    """The release's float arithmetic, drawing numbers in the same order as ours."""
    do_b, do_c, do_h, do_s = rng.random(4) < 0.5
    img = image.copy()
    if do_b:
        img[:] = np.clip(img.astype(float) + rng.uniform(-32, 32), 0, 255)
    if do_c:
        img[:] = np.clip(img.astype(float) * rng.uniform(0.5, 1.5), 0, 255)
    if not (do_h or do_s):
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if do_h:
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rng.integers(-18, 19)) % 180
    if do_s:
        hsv[:, :, 1] = np.clip(hsv[:, :, 1].astype(float) * rng.uniform(0.5, 1.5), 0, 255)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_photometric_matches_float_reference_and_keeps_shape():
    image, boxes, labels = scene(2)
    for seed in range(16):
        rng = np.random.default_rng(seed)
        expected = reference_distort(image, clone(rng))
        out, b, lab = T.photometric_distort(image, boxes, labels, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)
        assert b is boxes and lab is labels


def test_expand_places_image_on_mean_canvas():
    image, boxes, labels = scene(3)
    for seed in range(10):
        out, b, lab = T.expand(image, boxes, labels, np.random.default_rng(seed), MEAN, p=1.0)
        h, w = out.shape[:2]
        assert 1 <= w / image.shape[1] <= 4 * np.sqrt(2) and 1 <= h / image.shape[0] <= 4 * np.sqrt(2)
        left, top = int(b[0, 0] - boxes[0, 0]), int(b[0, 1] - boxes[0, 1])
        np.testing.assert_array_equal(b, boxes + [left, top, left, top])
        np.testing.assert_array_equal(out[top:top + image.shape[0], left:left + image.shape[1]], image)
        fill = np.ones((h, w), bool)
        fill[top:top + image.shape[0], left:left + image.shape[1]] = False
        np.testing.assert_array_equal(out[fill], np.broadcast_to(np.array(MEAN, np.uint8), (fill.sum(), 3)))
    out, b, _ = T.expand(image, boxes, labels, np.random.default_rng(0), MEAN, p=0.0)
    assert out is image


def test_resize_normalises_boxes():
    image, boxes, labels = scene()
    out, b, lab = T.resize(image, boxes, labels, np.random.default_rng(0), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(b, boxes / [160, 120, 160, 120], rtol=1e-6)


def test_filter_small_boxes_is_strict():
    boxes = np.array([[0, 0, 0.5, 0.01], [0, 0, 0.5, 0.0101], [0.1, 0.1, 0.2, 0.2]], np.float32)
    kept, lab = T.filter_small_boxes(boxes, np.array([0, 1, 2]))
    np.testing.assert_array_equal(lab, [1, 2])


def test_train_transform_outputs():
    image, boxes, labels = scene(4)
    transform = T.SSDTrainTransform(96, MEAN)
    for seed in range(25):
        out, b, lab = transform(image, boxes, labels, np.random.default_rng(seed))
        assert out.shape == (3, 96, 96) and out.dtype == np.float32
        assert len(b) == len(lab) >= 1
        assert np.all(b >= 0) and np.all(b <= 1)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert set(lab.tolist()) <= set(labels.tolist())
        assert out.min() >= -max(MEAN) and out.max() <= 255 - min(MEAN)
    # reproducible from the seed
    a = transform(image, boxes, labels, np.random.default_rng(7))
    b = transform(image, boxes, labels, np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_fallback_when_every_box_is_too_small():
    image = np.full((1000, 1000, 3), 128, np.uint8)
    boxes = np.array([[500, 500, 505, 505]], np.float32)     # 0.005 of the side: always dropped
    out, b, lab = T.SSDTrainTransform(32, MEAN)(image, boxes, np.array([2]), np.random.default_rng(0))
    np.testing.assert_allclose(b, boxes / 1000)
    np.testing.assert_array_equal(lab, [2])
    np.testing.assert_allclose(out, 128 - np.array(MEAN)[:, None, None] * np.ones((3, 32, 32)))


def test_image_without_boxes():
    image, _, _ = scene()
    transform = T.SSDTrainTransform(32, MEAN)
    out, b, lab = transform(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0))
    assert out.shape == (3, 32, 32) and b.shape == (0, 4) and lab.shape == (0,)


def test_preprocess_for_test():
    image, _, _ = scene()
    out = T.preprocess_for_test(image, 48, MEAN)
    resized = cv2.resize(image, (48, 48), interpolation=cv2.INTER_LINEAR)
    expected = resized.astype(np.float32) - np.float32(MEAN)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    assert out.flags.c_contiguous and out.dtype == np.float32
