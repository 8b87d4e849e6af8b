"""mindspore.dataset pipelines for training and evaluation.

    train = create_train_dataset(settings, priors, batch_size=16, seed=1)   # src.builder.train_data_settings
    for image, *targets in train.create_tuple_iterator(num_epochs=E): ...
        # multibox head: image (B, 3, S, S) float32, loc_t (B, P, 4) float32, conf_t (B, P) int32
        # dense heads:   image (B, 3, H, W) float32, labels (B, N) int32, boxes (B, N, 4) float32
        #                (src/data/dense_targets.py; `priors` is then the head's AnchorLayout)
    train.data_info.steps_per_epoch, train.data_info.label_to_cat_id

    val = create_test_dataset(settings)          # src.builder.eval_data_settings(cfg, "val")
    for image, image_id, orig_hw in val.create_tuple_iterator(): ...
        # image (B, 3, H, W), image_id (B,) int64, orig_hw (B, 2) int32 (height, width)

The network input size follows `src.data.resize.InputPolicy` (square S x S, or keep-ratio on a
fixed canvas); with `data.train_sizes` every training batch draws its own size (multi-scale).

Determinism. Shuffling and sharding are done by `EpochSampler`, not by MindSpore: each
epoch's order is a permutation drawn from (seed, epoch), and every sample's augmentation
uses its own generator `default_rng([seed, epoch, index])`. The sampler hands the worker
the token `(epoch * S + position) * N + index` (S samples per shard and epoch, N images), so
the result does not depend on which worker process handles a sample or how many there are;
the same seed gives the same batches. The position gives the batch index, from which a
multi-scale batch's size is drawn.

Sharding (distributed training): the epoch's permutation is the same on every rank; rank
r takes positions r, r + n, r + 2n, ... . For training, the permutation is padded by
wrapping around so that every rank has the same number of samples (an all-reduce needs
equal step counts); each image is then seen once per epoch, plus at most n - 1 repeats.
Evaluation shards are not padded (each image exactly once over all ranks).

Unreadable images (missing, zero-byte, undecodable): the training source substitutes the
next readable image (index + 1, ...), deterministic too; the evaluation source yields a
blank input with `orig_hw` (0, 0), which tells the evaluator to leave that image out of
the scored set. Either way the reader's shared skip flags record it; the trainer and the
evaluator report the count at the end of every epoch and of evaluation
(`DataInfo.skip_summary`). A training split without a single readable image is refused when
its dataset is created, before any batch (`check_readable`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import mindspore.dataset as ds
import numpy as np

from heads.assigners.max_iou import MaxIoUAssigner
from heads.box_coder import SSDBoxCoder
from src.data.coco import CocoDetection, check_num_classes
from src.data.dense_targets import AnchorLayout, DenseTargetEncoder
from src.data.resize import InputPolicy, KeepRatioTrainTransform, TestInput
from src.data.settings import EvalDataSettings, ReaderSettings, TrainDataSettings
from src.data.targets import SSDTargetEncoder
from src.data.transforms import SSDPlainTransform, SSDTrainTransform

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ["image", "loc_t", "conf_t"]
DENSE_TRAIN_COLUMNS = ["image", "labels", "boxes"]
TEST_COLUMNS = ["image", "image_id", "orig_hw"]
NOT_READ = (0, 0)     # orig_hw of an evaluation image that could not be read


# ---------------------------------------------------------------------- reader

def build_reader(settings: ReaderSettings) -> CocoDetection:
    """The COCO reader of one split (src.builder.reader_settings).

    Its categories must be the model's classes (model.num_classes): checked here, before
    any network is compiled.
    """
    reader = CocoDetection(settings.ann_file, settings.image_dir, min_box_size=float(settings.min_box_size),
                           pixel_offset=bool(settings.pixel_offset))
    check_num_classes(reader.num_classes, settings.num_classes, settings.ann_file)
    return reader


def check_readable(reader: CocoDetection, split: str) -> None:
    """Raise ValueError, naming the folder and the count, when no image of `reader` can be read.

    Training substitutes the next readable image for an unreadable one; with none at all the
    data worker could only fail mid-pipeline. Stops at the first readable image, so a usable
    split costs one image read (the unreadable ones before it are flagged as training would).
    """
    for index in range(len(reader)):
        if reader.load_image(index) is not None:
            return
    raise ValueError(f"none of the {len(reader)} images of the {split} split can be read: "
                     f"{reader.skip_summary()}")


# ---------------------------------------------------------------------- sampler

class EpochSampler(ds.Sampler):
    """Per-epoch order for one shard, as tokens `(epoch * S + position) * N + index` (S = len(self)).

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
        per_epoch = len(self)
        for position, index in enumerate(self.indices(epoch)):
            yield int((epoch * per_epoch + position) * self.num_items + index)

    def decode(self, token: int) -> tuple[int, int, int]:
        """token -> (epoch, position in the shard's epoch, image index)."""
        rest, index = divmod(int(token), self.num_items)
        epoch, position = divmod(rest, len(self))
        return epoch, position, index


# ---------------------------------------------------------------------- sources

def _limit_cv2_threads() -> None:
    # each data worker is one process; OpenCV's own thread pool would oversubscribe cores
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class TrainSource:
    """Random-access source: token -> (image CHW float32, *targets).

    transform(image, boxes, labels, rng, size) -> (image, boxes normalised to the input, labels);
    encoder(boxes, labels, input_hw) -> targets (SSDTargetEncoder ignores the size: its priors
    are fixed). With several training sizes, `policy.choose_size` picks one per batch.
    """

    def __init__(self, reader: CocoDetection, transform: Callable, encoder: Callable, seed: int,
                 sampler: Optional["EpochSampler"] = None, batch_size: int = 1,
                 policy: Optional[InputPolicy] = None):
        self.reader = reader
        self.transform = transform
        self.encoder = encoder
        self.seed = seed
        self.per_epoch = len(sampler) if sampler is not None else None
        self.batch_size = max(1, int(batch_size))
        self.policy = policy

    def __len__(self) -> int:
        return len(self.reader)

    def decode(self, token: int) -> tuple[int, int, int]:
        """token -> (epoch, position, image index); see EpochSampler."""
        n = len(self.reader)
        rest, index = divmod(int(token), n)
        if self.per_epoch is None:
            return rest, 0, index
        epoch, position = divmod(rest, self.per_epoch)
        return epoch, position, index

    def load(self, token: int):
        """(image, boxes, labels, rng) for a sampler token, substituting unreadable images."""
        n = len(self.reader)
        epoch, _, index = self.decode(token)
        rng = np.random.default_rng([self.seed, epoch, index])
        for step in range(n):
            record = self.reader[(index + step) % n]
            if record is not None:
                return record.image, record.boxes, record.labels, rng
        raise RuntimeError(f"no readable image in {self.reader.image_dir}")

    def size_of(self, token: int) -> Optional[int]:
        if self.policy is None:
            return None
        epoch, position, _ = self.decode(token)
        return self.policy.choose_size(self.seed, epoch, position // self.batch_size)

    def __getitem__(self, token: int):
        _limit_cv2_threads()
        image, boxes, labels, rng = self.load(token)
        size = self.size_of(token)
        image, boxes, labels = self.transform(image, boxes, labels, rng, size)
        return (image,) + tuple(self.encoder(boxes, labels, image.shape[1:]))


class SizedTransforms:
    """One square transform per training size: (image, boxes, labels, rng, size) -> sample."""

    def __init__(self, make: Callable[[int], Callable], sizes):
        self.by_size = {int(s): make(int(s)) for s in sizes}
        self.default = next(iter(self.by_size.values()))

    def __call__(self, image, boxes, labels, rng, size=None):
        transform = self.default if size is None else self.by_size[int(size)]
        return transform(image, boxes, labels, rng)


class _SizeFreeEncoder:
    """SSD targets do not depend on the input size (one prior set): drop the size argument."""

    def __init__(self, encoder: SSDTargetEncoder):
        self.encoder = encoder

    def __call__(self, boxes, labels, input_hw=None):
        return self.encoder(boxes, labels)


class TestSource:
    """Random-access source: token -> (image CHW float32, image_id int64, orig_hw (2,) int32)."""

    def __init__(self, reader: CocoDetection, test_input: TestInput):
        self.reader = reader
        self.preprocess = test_input
        self.policy = test_input.policy

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, token: int):
        _limit_cv2_threads()
        index = int(token) % len(self.reader)
        record = self.reader[index]
        image_id = np.array(self.reader.image_ids[index], dtype=np.int64)
        if record is None:
            # a placeholder keeps the batch shape; size (0, 0) = NOT_READ: never scored
            return (np.zeros((3,) + self.policy.canvas(), np.float32), image_id,
                    np.array(NOT_READ, dtype=np.int32))
        image = self.preprocess(record.image)
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


def _workers(default: int, num_workers: Optional[int]) -> int:
    return max(1, int(default if num_workers is None else num_workers))


def _generator(source, columns, sampler: EpochSampler, workers: int):
    return ds.GeneratorDataset(source, column_names=columns, sampler=sampler,
                               num_parallel_workers=workers, python_multiprocessing=workers > 1)


def _train_transform(settings: TrainDataSettings) -> Callable:
    policy, augmentation = settings.policy, settings.augmentation
    norm = {"std": None if settings.std is None else list(settings.std), "rgb": settings.rgb}
    if policy.mode == "keep_ratio":
        return KeepRatioTrainTransform(policy, settings.mean, flip_p=0.5 if augmentation.enabled else 0.0, **norm)
    if augmentation.enabled:
        def make(size):
            return SSDTrainTransform(size, settings.mean, expand_p=augmentation.expand_prob,
                                     expand_max_ratio=augmentation.expand_max_ratio,
                                     crop_require_all=augmentation.crop_require_all, **norm)
    else:
        def make(size):
            return SSDPlainTransform(size, settings.mean, **norm)
    return SizedTransforms(make, policy.sizes)


def _train_encoder(settings: TrainDataSettings, priors) -> tuple[Callable, list]:
    policy = settings.policy
    if isinstance(priors, AnchorLayout):
        missing = [hw for hw in policy.canvases() if hw not in priors.feature_sizes]
        if missing:
            raise ValueError(f"the anchor layout has no feature sizes for the input sizes {missing}")
        return DenseTargetEncoder(priors, priors.assigner), DENSE_TRAIN_COLUMNS
    if policy.multi_scale or policy.mode != "square":
        raise ValueError("the multibox head has one fixed prior set: it needs data.resize_mode 'square' "
                         "and no data.train_sizes other than model.input_size")
    encoder = SSDTargetEncoder(np.asarray(priors.boxes(), dtype=np.float32), SSDBoxCoder(settings.variance),
                               MaxIoUAssigner(pos_threshold=float(settings.match_threshold)))
    return _SizeFreeEncoder(encoder), TRAIN_COLUMNS


def create_train_dataset(settings: TrainDataSettings, priors, batch_size: int, num_shards: Optional[int] = None,
                         shard_id: Optional[int] = None, seed: Optional[int] = None,
                         start_epoch: int = 0, num_workers: Optional[int] = None):
    """Batched training dataset of (image (B,3,H,W), *targets).

    Args:
        settings: the training split, input policy, normalisation, augmentation and matching
            (src.builder.train_data_settings).
        priors: the multibox head's `SSDPriors` -> targets (loc_t (B,P,4), conf_t (B,P)); or a
            dense head's `AnchorLayout` (src.builder.build_priors) -> targets (labels (B,N),
            boxes (B,N,4)).
        batch_size: images per batch on this shard; the last partial batch is dropped.
        num_shards, shard_id: distributed data parallelism (both or neither).
        seed: shuffling and augmentation seed (default settings.seed).
        start_epoch: epoch number of the first epoch (resuming gives the same orders).
        num_workers: worker processes (default settings.num_workers).
    The returned dataset has `.data_info` (DataInfo). A split without a readable image raises
    ValueError here, before any batch.
    """
    seed = int(settings.seed if seed is None else seed)
    num_shards, shard_id = _check_shards(num_shards, shard_id)
    reader = build_reader(settings.reader)
    policy = settings.policy
    transform = _train_transform(settings)
    encoder, columns = _train_encoder(settings, priors)
    sampler = EpochSampler(len(reader), seed, shuffle=True, num_shards=num_shards, shard_id=shard_id,
                           pad=True, start_epoch=start_epoch)
    check_readable(reader, settings.reader.split)
    source = TrainSource(reader, transform, encoder, seed, sampler=sampler, batch_size=batch_size,
                         policy=policy if policy.multi_scale else None)
    dataset = _generator(source, columns, sampler, _workers(settings.num_workers, num_workers))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset.data_info = DataInfo(reader, len(reader), len(sampler), batch_size,
                                 len(sampler) // batch_size, reader.label_to_cat_id, reader.cat_names)
    if dataset.data_info.steps_per_epoch == 0:
        raise ValueError(f"{len(sampler)} images per shard is less than one batch of {batch_size}")
    return dataset


def create_test_dataset(settings: EvalDataSettings, batch_size: int = 1,
                        num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                        num_workers: Optional[int] = None):
    """Evaluation dataset of (image (B,3,H,W), image_id (B,), orig_hw (B,2)), in image-id order.

    settings: the split, its TestInput and workers (src.builder.eval_data_settings). The last
    batch may be smaller than `batch_size`. The returned dataset has `.data_info`.
    """
    num_shards, shard_id = _check_shards(num_shards, shard_id)
    reader = build_reader(settings.reader)
    sampler = EpochSampler(len(reader), seed=0, shuffle=False, num_shards=num_shards,
                           shard_id=shard_id, pad=False)
    source = TestSource(reader, settings.test_input)
    dataset = _generator(source, TEST_COLUMNS, sampler, _workers(settings.num_workers, num_workers))
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
