"""Predictor: images -> detections, from a checkpoint or an exported MINDIR.

    uint8 BGR image --TestInput (src/data/resize.py: resize, mean/std)--> batch, padded to a fixed size
      --network (Detector or mindspore GraphCell), one call at a time--> outputs
      --Postprocessor (src/postprocess.py: decode, to image pixels (clipped), detect)--> Detections

The pre- and post-processing objects are the ones the evaluation pipeline uses
(src/evaluation/evaluator.py), so inference and COCO evaluation cannot drift apart. Boxes are clipped to the image before NMS (evaluation keeps the
reference's unclipped SSD boxes); a MINDIR exported with --with_decode clips in the graph, so
both backends give the same detections.

Thread safety: the network is called under a lock (one MindSpore call at a time); the pre- and
post-processing of concurrent callers run in parallel.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from src.config_upgrade import sidecar_num_classes
from src.data.resize import TestInput
from src.postprocess import Detections, Postprocessor

log = logging.getLogger("m2det.infer")


class PredictorError(RuntimeError):
    """A model file that cannot be used with the config."""


class DecodedBoxesDecoder:
    """Outputs of a MINDIR exported with --with_decode: (boxes in [0, 1], softmax scores)."""

    has_background = True
    clip = True

    def __call__(self, outputs):
        boxes, scores = outputs
        return boxes, scores, self.has_background, None


def keep_above(dets: Detections, threshold: Optional[float]) -> Detections:
    """The detections with score >= threshold (all of them for None)."""
    if threshold is None:
        return dets
    keep = dets.scores >= threshold
    return Detections(dets.boxes[keep], dets.scores[keep], dets.labels[keep])


def _recorded_priors(meta: dict) -> Optional[int]:
    """Prior count of a multibox MINDIR from its description (older files: its first output's rows)."""
    if meta.get("num_priors") is not None:
        return int(meta["num_priors"])
    outputs, shapes = meta.get("outputs") or [], meta.get("output_shapes") or []
    if shapes and outputs and str(outputs[0]).startswith(("loc ", "boxes ")) and len(shapes[0]) == 3:
        return int(shapes[0][1])
    return None


def check_custom_op_library(path: str, meta: dict, device_target: str = "CPU") -> None:
    """Refuse a MINDIR whose custom operators' library (export.py's `custom_op_library`) is missing,
    or that would run them on a device other than the CPU they are written for.

    A MINDIR with Winograd convolutions names m2det/kernels/_winograd_f23.so by its absolute
    path at export time; MindSpore would only fail on the first call, deep in graph compilation.
    """
    library = meta.get("custom_op_library")
    if library and device_target != "CPU":
        raise PredictorError(
            f"{path} computes its 3x3 convolutions with CPU custom operators ({library}) and cannot run on "
            f"{device_target}: export the checkpoint with --device_target {device_target} (direct convolutions)")
    if library and not os.path.isfile(library):
        raise PredictorError(
            f"{path} computes its 3x3 convolutions with custom operators from {library} (recorded in the "
            f"graph at export), which does not exist here: install this package at that path (and build it: "
            f"bash scripts/make.sh), or export the checkpoint again on this machine; `export.py --set "
            f"test.winograd=false` writes a self-contained MINDIR with direct convolutions")


def check_external_data(path: str, meta: dict) -> None:
    """Refuse a MINDIR whose weights live in a folder beside it (export.py's `external_data`, for
    files above 1 GB) when that folder was not copied with it: MindSpore would fail without
    naming it."""
    folder = meta.get("external_data")
    if folder and not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(path)), folder)):
        raise PredictorError(
            f"{path} keeps its weights in the folder {folder}/ beside it (written by export.py for files above "
            f"1 GB), which is missing: copy that folder together with the MINDIR")


@dataclass(frozen=True)
class ExpectedModel:
    """What a config makes of a network, to compare with an exported MINDIR's description.

    canvas: the network input (H, W). num_classes: `model.num_classes`. num_priors: the multibox
    head's prior count (None for the dense heads, whose outputs are not compared).
    """

    config_name: Optional[str]
    canvas: tuple
    num_classes: int
    num_priors: Optional[int] = None


def check_mindir_fits(path: str, meta: dict, expected: ExpectedModel) -> None:
    """Refuse a MINDIR whose description (export.py's `path`.json) disagrees with the config,
    naming both configs.

    Input size, class count and (multibox) prior count are compared; any difference would
    otherwise surface as a shape error deep in decoding.
    """
    problems = []
    canvas = list(expected.canvas)
    shape = meta.get("input_shape")
    if shape is not None and list(shape[2:]) != canvas:
        problems.append(f"input {shape[2]}x{shape[3]} vs {canvas[0]}x{canvas[1]}")
    recorded_classes = sidecar_num_classes(meta)
    if recorded_classes is not None and recorded_classes != expected.num_classes:
        problems.append(f"model.num_classes {recorded_classes} vs {expected.num_classes}")
    recorded = _recorded_priors(meta)
    if recorded is not None and expected.num_priors is not None and recorded != expected.num_priors:
        problems.append(f"{recorded} priors vs {expected.num_priors}")
    exported_with = meta.get("config") or meta.get("config_name") or "a config not recorded"
    if problems:
        raise PredictorError(
            f"{path} was exported with config {exported_with} and does not fit the config "
            f"{expected.config_name or '?'} ({'; '.join(problems)}): use the config it was exported with, "
            f"or export the checkpoint again with this one")
    recorded_name = meta.get("config_name") or os.path.splitext(os.path.basename(str(meta.get("config", ""))))[0]
    if recorded_name and recorded_name != expected.config_name:
        log.warning("%s was exported with config %s, used with %s (the shapes agree)", path, exported_with,
                    expected.config_name)


def read_mindir_description(path: str) -> dict:
    """The JSON description export.py writes next to a MINDIR (`path`.json); {} without one."""
    if not os.path.isfile(path):
        raise PredictorError(f"MINDIR not found: {path}")
    if not os.path.isfile(path + ".json"):
        log.warning("%s.json not found: assuming batch size 1 and outputs without decoding", path)
        return {}
    with open(path + ".json", "r", encoding="utf-8") as f:
        return json.load(f)


def load_mindir(path: str):
    """The MINDIR as a callable mindspore GraphCell; PredictorError when MindSpore cannot load it."""
    import mindspore as ms
    from mindspore import nn

    try:
        return nn.GraphCell(ms.load(path))
    except Exception as exc:  # MindSpore raises RuntimeError/ValueError with parser internals
        raise PredictorError(f"cannot load MINDIR {path}: {str(exc).splitlines()[0]}") from exc


class Predictor:
    """Run a detector on lists of images (uint8 BGR, any sizes) in fixed-size batches.

    Args:
        network: called on a (batch_size, 3, H, W) float32 Tensor, returns a tuple of Tensors.
        test_input: image -> network input (`src.builder.build_test_input(cfg)`).
        postprocessor: one image's outputs -> its detections in image pixels
            (`src.builder.build_postprocessor(cfg, clip=True)`).
        batch_size: the network's batch dimension; shorter batches are padded with zeros.
        description: what the network is (for logs and /health).

    src/inference/model_files.py builds all of it from a config and a checkpoint or MINDIR
    (`predictor_from_checkpoint`, `predictor_from_mindir`).
    """

    def __init__(self, network: Callable, test_input: TestInput, postprocessor: Postprocessor,
                 batch_size: int = 1, description: str = ""):
        if batch_size < 1:
            raise PredictorError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.preprocess = test_input
        self.postprocessor = postprocessor
        self.batch_size = int(batch_size)
        self.description = description
        self._lock = threading.Lock()

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        import mindspore as ms

        with self._lock:
            return [o.asnumpy() for o in self.network(ms.Tensor(batch))]

    def predict(self, images: Sequence[np.ndarray], score_threshold: Optional[float] = None) -> list[Detections]:
        """Detections (boxes in pixels of each original image) for every image, in order."""
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.stack([self.preprocess(image) for image in chunk])
            if len(chunk) < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - len(chunk),) + batch.shape[1:],
                                                        batch.dtype)])
            outputs = self._run(batch)
            for i, image in enumerate(chunk):
                height, width = image.shape[:2]
                dets = self.postprocessor([o[i] for o in outputs], height, width)
                results.append(keep_above(dets, score_threshold))
        return results
