"""mindspore.dataset pipelines for training and evaluation.

    train = create_train_dataset(cfg, priors, batch_size=16, seed=1)
    for image, loc_t, conf_t in train.create_tuple_iterator(num_epochs=E): ...
        # image (B, 3, S, S) float32, loc_t (B, P, 4) float32, conf_t (B, P) int32
    train.data_info.steps_per_epoch, train.data_info.label_to_cat_id

    val = create_test_dataset(cfg, split="val")
    for image, image_id, orig_hw in val.create_tuple_iterator(): ...
        # image (B, 3, S, S), image_id (B,) int64, orig_hw (B, 2) int32 (height, width)

Determinism. Shuffling and sharding are done by `EpochSampler`, not by MindSpore: each
epoch's order is a permutation drawn from (seed, epoch), and every sample's augmentation
uses its own generator `default_rng([seed, epoch, index])`. The sampler hands the worker
the token `epoch * N + index`, so the result does not depend on which worker process
handles a sample or how many there are; the same seed gives the same batches.

Sharding (distributed training): the epoch's permutation is the same on every rank; rank
r takes positions r, r + n, r + 2n, ... . For training, the permutation is padded by
wrapping around so that every rank has the same number of samples (an all-reduce needs
equal step counts); each image is then seen once per epoch, plus at most n - 1 repeats.
Evaluation shards are not padded (each image exactly once over all ranks).

Unreadable images: the training source substitutes the next readable image (index + 1,
...), deterministic too; the evaluation source yields a blank (mean) image with the real
id, so the evaluator still sees every id. Either way the reader's shared skip flags
record it and the sampler logs a one-line summary at the start of every epoch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import mindspore.dataset as ds
import numpy as np

from heads.assigners.max_iou import MaxIoUAssigner
from heads.box_coder import SSDBoxCoder
from src.data.coco import CocoDetection
from src.data.targets import SSDTargetEncoder
from src.data.transforms import SSDPlainTransform, SSDTrainTransform, preprocess_for_test

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ["image", "loc_t", "conf_t"]
TEST_COLUMNS = ["image", "image_id", "orig_hw"]


# ---------------------------------------------------------------------- reader

def build_reader(cfg, split: str = "train") -> CocoDetection:
    """The COCO reader for `split` ('train' or 'val') from cfg.data (root + relative paths)."""
    data = cfg.data
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got '{split}'")
    ann = os.path.join(data.root, data[f"{split}_ann"])
    images = os.path.join(data.root, data[f"{split}_images"])
    return CocoDetection(ann, images, min_box_size=float(data.get("min_box_size", 1.0)))


# ---------------------------------------------------------------------- sampler

class EpochSampler(ds.Sampler):
    """Per-epoch order for one shard, as tokens `epoch * N + index`.

    MindSpore calls `__iter__` once per epoch on its own copy of the sampler, so the
    epoch number is the count of those calls (plus `start_epoch` when resuming).
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True, num_shards: int = 1,
                 shard_id: int = 0, pad: bool = True, start_epoch: int = 0,
                 on_epoch: Optional[Callable[[int], None]] = None):
        if num_items <= 0:
            raise ValueError("dataset is empty")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.pad = pad
        self.start_epoch = start_epoch
        self.on_epoch = on_epoch
        self._epochs_started = 0
        super().__init__()   # reads len(self): the fields above must exist first

    def __len__(self) -> int:
        if self.pad:
            return -(-self.num_items // self.num_shards)
        return len(range(self.shard_id, self.num_items, self.num_shards))

    def indices(self, epoch: int) -> np.ndarray:
        """Image indices (0..N-1) of this shard in `epoch`."""
        n = self.num_items
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        if self.pad:
            total = len(self) * self.num_shards
            order = np.resize(order, total)      # wraps around: repeats the first few
        return order[self.shard_id::self.num_shards]

    def is_shuffled(self) -> bool:
        return self.shuffle

    def is_sharded(self) -> bool:
        return self.num_shards > 1

    def __iter__(self):
        epoch = self.start_epoch + self._epochs_started
        self._epochs_started += 1
        if self.on_epoch is not None:
            self.on_epoch(epoch)
        for index in self.indices(epoch):
            yield int(epoch * self.num_items + index)


class _SkipReporter:
    """At the start of each epoch (in the main process), logs one line summarising the
    unreadable images met so far, if any."""

    def __init__(self, reader: CocoDetection):
        self.reader = reader

    def __call__(self, epoch: int) -> None:
        if self.reader.skipped.count():
            logger.warning("before epoch %d: %s", epoch, self.reader.skip_summary())

    def __deepcopy__(self, memo):
        return self   # holds the reader; MindSpore's pipeline copies must not clone it


# ---------------------------------------------------------------------- sources

def _limit_cv2_threads() -> None:
    # each data worker is one process; OpenCV's own thread pool would oversubscribe cores
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class TrainSource:
    """Random-access source: token -> (image CHW float32, loc_t (P, 4), conf_t (P,))."""

    def __init__(self, reader: CocoDetection, transform: Callable, encoder: SSDTargetEncoder,
                 seed: int):
        self.reader = reader
        self.transform = transform
        self.encoder = encoder
        self.seed = seed

    def __len__(self) -> int:
        return len(self.reader)

    def load(self, token: int):
        """(image, boxes, labels, rng) for a sampler token, substituting unreadable images."""
        n = len(self.reader)
        epoch, index = divmod(int(token), n)
        rng = np.random.default_rng([self.seed, epoch, index])
        for step in range(n):
            record = self.reader[(index + step) % n]
            if record is not None:
                return record.image, record.boxes, record.labels, rng
        raise RuntimeError(f"no readable image in {self.reader.image_dir}")

    def __getitem__(self, token: int):
        _limit_cv2_threads()
        image, boxes, labels, rng = self.load(token)
        image, boxes, labels = self.transform(image, boxes, labels, rng)
        loc_t, conf_t = self.encoder(boxes, labels)
        return image, loc_t, conf_t


class TestSource:
    """Random-access source: token -> (image CHW float32, image_id int64, orig_hw (2,) int32)."""

    def __init__(self, reader: CocoDetection, size: int, mean):
        self.reader = reader
        self.size = size
        self.mean = tuple(float(v) for v in mean)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, token: int):
        _limit_cv2_threads()
        index = int(token) % len(self.reader)
        record = self.reader[index]
        image_id = np.array(self.reader.image_ids[index], dtype=np.int64)
        if record is None:
            # blank input (zeros after mean subtraction): the id still reaches the evaluator
            h, w = self.reader.image_sizes[index]
            return (np.zeros((3, self.size, self.size), np.float32), image_id,
                    np.array([h, w], dtype=np.int32))
        image = preprocess_for_test(record.image, self.size, self.mean)
        return image, image_id, np.array(record.orig_size, dtype=np.int32)


# ---------------------------------------------------------------------- datasets

@dataclass
class DataInfo:
    """What the training / evaluation loops need to know about a pipeline."""

    reader: CocoDetection
    num_images: int                 # images in the split
    samples_per_epoch: int          # on this shard (padded for training)
    batch_size: int
    steps_per_epoch: int
    label_to_cat_id: list = field(default_factory=list)
    cat_names: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    def skipped_images(self) -> int:
        return self.reader.skipped.count()

    def skip_summary(self) -> str:
        return self.reader.skip_summary()

    @property
    def box_stats(self) -> dict:
        return dict(self.reader.stats)

    def __deepcopy__(self, memo):
        return self


def _workers(cfg, num_workers: Optional[int]) -> int:
    return max(1, int(cfg.data.num_workers if num_workers is None else num_workers))


def _generator(source, columns, sampler: EpochSampler, workers: int):
    return ds.GeneratorDataset(source, column_names=columns, sampler=sampler,
                               num_parallel_workers=workers, python_multiprocessing=workers > 1)


def _priors_array(priors) -> np.ndarray:
    return np.asarray(priors.boxes() if hasattr(priors, "boxes") else priors, dtype=np.float32)


def create_train_dataset(cfg, priors, batch_size: int, num_shards: Optional[int] = None,
                         shard_id: Optional[int] = None, seed: Optional[int] = None,
                         start_epoch: int = 0, num_workers: Optional[int] = None):
    """Batched training dataset of (image (B,3,S,S), loc_t (B,P,4), conf_t (B,P)).

    Args:
        cfg: the loaded config (uses cfg.data, cfg.model.input_size, cfg.priors.variance).
        priors: (P, 4) (cx, cy, w, h) array or an `SSDPriors`.
        batch_size: images per batch on this shard; the last partial batch is dropped.
        num_shards, shard_id: distributed data parallelism (both or neither).
        seed: shuffling and augmentation seed (default cfg.train.seed).
        start_epoch: epoch number of the first epoch (resuming gives the same orders).
        num_workers: worker processes (default cfg.data.num_workers).
    The returned dataset has `.data_info` (DataInfo).
    """
    seed = int(cfg.train.seed if seed is None else seed)
    num_shards, shard_id = _check_shards(num_shards, shard_id)
    reader = build_reader(cfg, "train")
    size = int(cfg.model.input_size)
    data = cfg.data
    if data.augment:
        transform = SSDTrainTransform(size, data.mean, expand_p=float(data.get("expand_prob", 0.6)),
                                      expand_max_ratio=float(data.get("expand_max_ratio", 4.0)),
                                      crop_require_all=bool(data.get("crop_require_all", True)))
    else:
        transform = SSDPlainTransform(size, data.mean)
    encoder = SSDTargetEncoder(_priors_array(priors), SSDBoxCoder(cfg.priors.variance),
                               MaxIoUAssigner(pos_threshold=float(data.match_threshold)))
    sampler = EpochSampler(len(reader), seed, shuffle=True, num_shards=num_shards, shard_id=shard_id,
                           pad=True, start_epoch=start_epoch, on_epoch=_SkipReporter(reader))
    dataset = _generator(TrainSource(reader, transform, encoder, seed), TRAIN_COLUMNS, sampler,
                         _workers(cfg, num_workers))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset.data_info = DataInfo(reader, len(reader), len(sampler), batch_size,
                                 len(sampler) // batch_size, reader.label_to_cat_id, reader.cat_names)
    if dataset.data_info.steps_per_epoch == 0:
        raise ValueError(f"{len(sampler)} images per shard is less than one batch of {batch_size}")
    return dataset


def create_test_dataset(cfg, split: str = "val", batch_size: int = 1,
                        num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                        num_workers: Optional[int] = None):
    """Evaluation dataset of (image (B,3,S,S), image_id (B,), orig_hw (B,2)), in image-id order.

    The last batch may be smaller than `batch_size`. The returned dataset has `.data_info`.
    """
    num_shards, shard_id = _check_shards(num_shards, shard_id)
    reader = build_reader(cfg, split)
    sampler = EpochSampler(len(reader), seed=0, shuffle=False, num_shards=num_shards,
                           shard_id=shard_id, pad=False, on_epoch=_SkipReporter(reader))
    source = TestSource(reader, int(cfg.model.input_size), cfg.data.mean)
    dataset = _generator(source, TEST_COLUMNS, sampler, _workers(cfg, num_workers))
    dataset = dataset.batch(batch_size, drop_remainder=False)
    dataset.data_info = DataInfo(reader, len(reader), len(sampler), batch_size,
                                 -(-len(sampler) // batch_size), reader.label_to_cat_id,
                                 reader.cat_names)
    return dataset


def _check_shards(num_shards: Optional[int], shard_id: Optional[int]) -> tuple[int, int]:
    if (num_shards is None) != (shard_id is None):
        raise ValueError("give both num_shards and shard_id, or neither")
    if num_shards is None:
        return 1, 0
    return int(num_shards), int(shard_id)
