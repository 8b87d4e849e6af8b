"""The Python API: one line to load a detector, one to run it.

    from src.inference.api import load_detector
    detector = load_detector("work_dirs/own/m2det_lite_epoch0010.ckpt")   # or a .mindir from export.py
    result = detector("photo.jpg")            # a path, a uint8 BGR array, or a list of either
    result.boxes, result.scores, result.labels, result.names              # pixels x1 y1 x2 y2

The config and the class names come from the model file (src/model_info.py); `config=` (a YAML
path) overrides the stored config, `names=` the stored names. A list in gives a list out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from src.data.coco import read_image
from src.inference.model_files import (class_names, is_mindir, open_model, predictor_from_checkpoint,
                                       predictor_from_mindir)
from src.inference.predictor import Predictor

ImageInput = Union[str, np.ndarray]


class ImageReadError(ValueError):
    """An image path that cannot be read as an image."""


@dataclass
class DetectionResult:
    """One image's detections, by decreasing score."""
    boxes: np.ndarray        # (K, 4) float32, pixels of the original image, corners x1 y1 x2 y2
    scores: np.ndarray       # (K,) float32
    labels: np.ndarray       # (K,) int64 dataset labels, 0-based (index into the detector's names)
    names: list              # (K,) class names

    def __len__(self) -> int:
        return len(self.scores)


class LoadedDetector:
    """A predictor plus the model's class names (and the config it was built from); call it on images."""

    def __init__(self, predictor: Predictor, names: Sequence[str], score_threshold: float = 0.3, config=None):
        self.predictor = predictor
        self.class_names = list(names)
        self.score_threshold = score_threshold
        self.config = config

    def _image(self, item: ImageInput) -> np.ndarray:
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                raise ValueError(f"an image array must be uint8 BGR (H, W, 3), got {item.dtype} {item.shape}")
            return item
        image = read_image(str(item))
        if image is None:
            raise ImageReadError(f"cannot read image {item} (missing, corrupt, truncated or not an image)")
        return image

    def __call__(self, images: Union[ImageInput, Iterable[ImageInput]],
                 score_threshold: Optional[float] = None) -> Union[DetectionResult, list]:
        single = isinstance(images, (str, np.ndarray))
        items = [images] if single else list(images)
        threshold = self.score_threshold if score_threshold is None else score_threshold
        results = []
        for dets in self.predictor.predict([self._image(i) for i in items], threshold):
            labels = np.asarray(dets.labels, dtype=np.int64)
            results.append(DetectionResult(np.asarray(dets.boxes, np.float32), np.asarray(dets.scores, np.float32),
                                           labels, [self.class_names[k] for k in labels]))
        return results[0] if single else results


def load_detector(path: str, config: Optional[str] = None, *, names: Optional[str] = None,
                  score_threshold: float = 0.3, batch_size: int = 1, overrides: Iterable[str] = ()
                  ) -> LoadedDetector:
    """A detector from a train.py checkpoint or an export.py MINDIR (the file's config and names)."""
    cfg, info = open_model(path, config, overrides)
    class_list = class_names(cfg, info, names)
    predictor = predictor_from_mindir(cfg, path) if is_mindir(path) else predictor_from_checkpoint(cfg, path,
                                                                                                 batch_size)
    return LoadedDetector(predictor, class_list, score_threshold, cfg)
