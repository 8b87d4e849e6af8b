"""mindspore.dataset pipelines: shapes, sharding, determinism, skip reporting."""
import os
import shutil

import cv2
import numpy as np
import pytest

from heads.priors import SSDPriors
from src.builder import eval_data_settings, train_data_settings
from src.config import CONFIG_DIR, load_config
from src.data.pipeline import EpochSampler, create_test_dataset, create_train_dataset
from src.data import resize          # (its TestInput, imported by name, would look like a test class)
from src.data.settings import Augmentation, EvalDataSettings, ReaderSettings, TrainDataSettings
from src.data.synthetic import make_synthetic_coco
from src.data.transforms import preprocess_for_test

SIZE = 64
PRIORS = SSDPriors(SIZE, feature_maps=[8, 4, 2, 1], steps=[8, 16, 32, 64],
                   size_pattern=[0.1, 0.3, 0.5, 0.7, 0.9], aspect_ratios=[[2]] * 4)
NUM_PRIORS = PRIORS.num_priors()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipe"))
    make_synthetic_coco(root, num_train=10, num_val=5, seed=7)
    return root


def config(root, *overrides):
    return load_config(os.path.join(os.path.dirname(CONFIG_DIR), "tests", "configs", "lite256.yaml"),
                       [f"data.root={root}", f"model.input_size={SIZE}", "data.num_workers=1", *overrides])


def epochs(dataset, num_epochs=1):
    it = dataset.create_tuple_iterator(num_epochs=num_epochs, output_numpy=True)
    return [[tuple(np.copy(x) for x in row) for row in it] for _ in range(num_epochs)]


def assert_same(a, b):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for x, y in zip(row_a, row_b):
            np.testing.assert_array_equal(x, y)


def test_data_settings_are_read_from_the_config_once(root):
    cfg = config(root, "data.std=[2, 3, 4]", "data.rgb=true", "data.augment=false", "data.expand_prob=0.3",
                 "data.expand_max_ratio=2.5", "data.crop_require_all=false", "model.head.multibox.match_threshold=0.4",
                 "data.min_box_size=2.0", "data.pixel_offset=false", "priors.variance=[0.2, 0.3]", "train.seed=9",
                 "data.num_workers=3", "data.train_sizes=[48, 64]")
    policy = resize.InputPolicy(mode="square", test_size=SIZE, train_sizes=(48, 64))

    def reader(split):
        return ReaderSettings(split, os.path.join(root, "annotations", f"instances_{split}.json"),
                              os.path.join(root, split), num_classes=cfg.model.num_classes, min_box_size=2.0,
                              pixel_offset=False)

    assert train_data_settings(cfg) == TrainDataSettings(
        reader("train"), policy, mean=(104.0, 117.0, 123.0), std=(2.0, 3.0, 4.0), rgb=True,
        augmentation=Augmentation(enabled=False, expand_prob=0.3, expand_max_ratio=2.5, crop_require_all=False),
        match_threshold=0.4, variance=(0.2, 0.3), seed=9, num_workers=3)
    assert eval_data_settings(cfg, "val") == EvalDataSettings(
        reader("val"), resize.TestInput(policy, (104.0, 117.0, 123.0), (2.0, 3.0, 4.0), rgb=True), num_workers=3)
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        eval_data_settings(cfg, "test")


def test_train_batches(root):
    dataset = create_train_dataset(train_data_settings(config(root)), PRIORS, batch_size=4, seed=1)
    info = dataset.data_info
    assert info.steps_per_epoch == 2 == dataset.get_dataset_size()     # 10 images, drop remainder
    assert info.label_to_cat_id == [1, 2, 4, 5, 7] and info.num_classes == 5
    (batches,) = epochs(dataset)
    assert len(batches) == 2
    image, loc_t, conf_t = batches[0]
    assert image.shape == (4, 3, SIZE, SIZE) and image.dtype == np.float32
    assert loc_t.shape == (4, NUM_PRIORS, 4) and loc_t.dtype == np.float32
    assert conf_t.shape == (4, NUM_PRIORS) and conf_t.dtype == np.int32
    assert conf_t.max() > 0 and conf_t.min() >= 0 and conf_t.max() <= 5
    assert np.all(loc_t[conf_t == 0] == 0)


def test_deterministic_for_a_seed_and_across_workers(root):
    data = train_data_settings(config(root))
    one = epochs(create_train_dataset(data, PRIORS, batch_size=2, seed=3, num_workers=1))
    two = epochs(create_train_dataset(data, PRIORS, batch_size=2, seed=3, num_workers=2))
    assert_same(one[0], two[0])
    other = epochs(create_train_dataset(data, PRIORS, batch_size=2, seed=4))
    assert not np.array_equal(one[0][0][0], other[0][0][0])


def test_epochs_differ_and_resume(root):
    data = train_data_settings(config(root))
    first, second = epochs(create_train_dataset(data, PRIORS, batch_size=5, seed=2), num_epochs=2)
    assert not np.array_equal(first[0][0], second[0][0])
    (resumed,) = epochs(create_train_dataset(data, PRIORS, batch_size=5, seed=2, start_epoch=1))
    assert_same(resumed, second)


@pytest.mark.parametrize("num_items", [10, 11])
def test_two_train_shards_cover_every_image(num_items):
    shards = [EpochSampler(num_items, seed=0, num_shards=2, shard_id=r) for r in range(2)]
    for epoch in range(3):
        parts = [s.indices(epoch) for s in shards]
        assert len(parts[0]) == len(parts[1]) == len(shards[0])    # equal steps on every rank
        together = np.concatenate(parts)
        assert set(together.tolist()) == set(range(num_items))
        assert len(together) == num_items + (num_items % 2)         # padding only when uneven
    assert not np.array_equal(shards[0].indices(0), shards[0].indices(1))


def test_sharded_train_pipeline(root):
    data = train_data_settings(config(root))
    sizes = [create_train_dataset(data, PRIORS, batch_size=5, num_shards=2, shard_id=r).data_info
             for r in range(2)]
    assert [s.samples_per_epoch for s in sizes] == [5, 5] and [s.steps_per_epoch for s in sizes] == [1, 1]
    with pytest.raises(ValueError):
        create_train_dataset(data, PRIORS, batch_size=5, num_shards=2)


def test_two_eval_shards_cover_every_image_once(root):
    settings = eval_data_settings(config(root))
    seen = []
    for r in range(2):
        for image, image_id, orig_hw in epochs(create_test_dataset(settings, num_shards=2, shard_id=r))[0]:
            seen.extend(image_id.tolist())
    assert sorted(seen) == [1, 2, 3, 4, 5]


def test_test_dataset_content(root):
    cfg = config(root)
    dataset = create_test_dataset(eval_data_settings(cfg), batch_size=2)
    assert dataset.data_info.steps_per_epoch == 3
    rows = epochs(dataset)[0]
    assert [len(r[1]) for r in rows] == [2, 2, 1]
    image, image_id, orig_hw = rows[0]
    path = os.path.join(root, "val", f"{int(image_id[0]):06d}.jpg")
    raw = cv2.imread(path)
    np.testing.assert_array_equal(orig_hw[0], raw.shape[:2])
    np.testing.assert_array_equal(image[0], preprocess_for_test(raw, SIZE, cfg.data.mean))
    assert image_id.dtype == np.int64 and orig_hw.dtype == np.int32


def test_unreadable_image_is_substituted_and_reported(root, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(root, broken)
    with open(os.path.join(broken, "train", "000003.jpg"), "wb") as f:
        f.write(b"garbage")
    dataset = create_train_dataset(train_data_settings(config(broken)), PRIORS, batch_size=5, seed=0, num_workers=2)
    result = epochs(dataset, num_epochs=2)
    assert all(len(e) == 2 for e in result)
    # flagged in a worker process, visible here through shared memory (the trainer reports it)
    assert dataset.data_info.skipped_images() == 1
    assert "(1 undecodable or truncated): 000003.jpg" in dataset.data_info.skip_summary()
