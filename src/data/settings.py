"""What the data pipelines are made from: plain settings, filled from the config by src/builder.py.

    ReaderSettings      one split's annotation file and image folder, how its boxes are read,
                        and the model's class count its categories must fit
    TrainDataSettings   the training split: reader, InputPolicy, normalisation, augmentation,
                        target matching, seed and data workers
    EvalDataSettings    an evaluation split: reader, TestInput and data workers

The pipeline (src/data/pipeline.py) takes these objects, never the config: the config is read
once, by the builder (`reader_settings`, `train_data_settings`, `eval_data_settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from src.data.resize import InputPolicy, TestInput


@dataclass(frozen=True)
class ReaderSettings:
    """split: 'train' or 'val' (for messages). num_classes: the model's `model.num_classes`, which
    the file's categories must fit (src/data/coco.py check_num_classes)."""

    split: str
    ann_file: str
    image_dir: str
    num_classes: int
    min_box_size: float = 1.0
    pixel_offset: bool = False


@dataclass(frozen=True)
class Augmentation:
    """The training transform (src/data/transforms.py): `enabled` false gives the plain resize
    (square) or no flip (keep_ratio); the other fields are the SSD zoom-out and crop options."""

    enabled: bool = True
    expand_prob: float = 0.6
    expand_max_ratio: float = 4.0
    crop_require_all: bool = True


@dataclass(frozen=True)
class TrainDataSettings:
    """mean, std, rgb: the normalisation of src/data/transforms.py (std None: no division).
    match_threshold, variance: the multibox head's target matching and coding (the dense heads
    assign with their own AnchorLayout). num_workers: data worker processes (>= 1)."""

    reader: ReaderSettings
    policy: InputPolicy
    mean: tuple
    std: Optional[tuple] = None
    rgb: bool = False
    augmentation: Augmentation = Augmentation()
    match_threshold: float = 0.5
    variance: tuple = (0.1, 0.2)
    seed: int = 0
    num_workers: int = 1


@dataclass(frozen=True)
class EvalDataSettings:
    """An evaluation split: every image becomes `test_input(image)`, in image-id order."""

    reader: ReaderSettings
    test_input: TestInput
    num_workers: int = 1
