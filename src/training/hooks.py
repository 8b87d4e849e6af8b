"""What the training loop does around its steps: checkpoints and evaluation.

    CheckpointHook   every `train.save_every` epochs and at the end, every `save_every_steps`
                     steps inside an epoch, and on request (a signal); rotation by CheckpointManager
    EvaluationHook   every `train.eval_every` epochs and after the last: COCO AP of the (EMA)
                     weights, a row in the CSV and TensorBoard (with pictures), and
                     `<config>_best.ckpt`, the weights of the best AP so far

Logging of losses, learning rate and speed is TrainProgress (src/training/progress.py).
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from src.data.settings import EvalDataSettings
from src.evaluation.evaluator import evaluate
from src.postprocess import Postprocessor
from src.training.checkpoint import CheckpointError, CheckpointManager, read_checkpoint, save_checkpoint
from src.training.progress import TrainProgress

log = logging.getLogger("m2det.train")


class CheckpointHook:
    """Saves the run's state: weights (and EMA), optimizer, loss scale, position and the model info.

    meta: entries stored in every checkpoint (config name, class names, resolved config, global batch).
    """

    def __init__(self, manager: CheckpointManager, detector, optimizer, *, ema, extra: list, save_every: int,
                 save_every_steps: int, last_epoch: int, enabled: bool, meta: dict):
        self.manager = manager
        self.detector = detector
        self.optimizer = optimizer
        self.ema = ema
        self.extra = extra
        self.save_every = save_every
        self.save_every_steps = save_every_steps
        self.last_epoch = last_epoch
        self.enabled = enabled          # rank 0 only
        self.meta = meta
        self.saved: list[str] = []

    def save(self, epoch: int, epoch_step: int, step: int, skipped_steps: int) -> str:
        path = self.manager.save(epoch, self.detector, self.optimizer, epoch_step=epoch_step, ema=self.ema,
                                 extra=self.extra, step=step, skipped_steps=skipped_steps, **self.meta)
        self.saved.append(path)
        log.info("saved %s", path)
        return path

    def after_step(self, epoch: int, epoch_step: int, step: int, skipped_steps: int) -> None:
        """A mid-epoch checkpoint every `save_every_steps` steps (exact mid-epoch resume)."""
        if self.enabled and epoch_step and self.save_every_steps > 0 and step % self.save_every_steps == 0:
            self.save(epoch, epoch_step, step, skipped_steps)

    def after_epoch(self, epoch: int, step: int, skipped_steps: int) -> None:
        if self.enabled and (epoch % self.save_every == 0 or epoch == self.last_epoch):
            self.save(epoch, 0, step, skipped_steps)

    def last_good(self) -> str:
        good = self.manager.existing()
        return good[-1] if good else "none yet"


class BestCheckpoint:
    """`<prefix>_best.ckpt`: the weights of the evaluation with the highest AP so far.

    Its name does not match the epoch pattern, so rotation and `--resume auto` leave it alone.
    A resumed run continues from the AP stored in the file; a fresh run replaces it at its
    first evaluation.
    """

    def __init__(self, path: str, resumed: bool):
        self.path = path
        self.ap: float | None = None
        if resumed and os.path.isfile(path):
            try:
                value = read_checkpoint(path)["best_AP"]
                self.ap = float(value.asnumpy() if hasattr(value, "asnumpy") else value)
            except (CheckpointError, KeyError) as exc:
                log.warning("ignoring the earlier best checkpoint %s: %s", path, exc)

    def improved_by(self, ap: float) -> bool:
        return self.ap is None or ap > self.ap

    def save(self, detector, ema, ap: float, **meta) -> None:
        """Atomically (save_checkpoint writes a temporary file and renames it)."""
        save_checkpoint(self.path, detector, ema=ema, best_AP=float(ap), **meta)
        self.ap = float(ap)
        log.info("best AP so far %.4f: saved %s", self.ap, self.path)


def detection_pictures(folder: str) -> list[tuple[str, bytes, int, int]]:
    """The pictures evaluate(draw=...) wrote to `folder`, as (tag, JPEG bytes, height, width)."""
    pictures = []
    if not os.path.isdir(folder):
        return pictures
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            encoded = f.read()
        image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is not None:
            pictures.append((f"detections/{os.path.splitext(name)[0]}", encoded, image.shape[0], image.shape[1]))
    return pictures


class EvaluationHook:
    """COCO AP during training, on rank 0, every `every` epochs (0: never) and after `last_epoch`.

    data, postprocessor: the evaluation split and the detections of one image (src.builder.
    eval_data_settings, build_postprocessor). pictures: how many images with detections each
    evaluation draws (TensorBoard).
    """

    def __init__(self, detector, data: EvalDataSettings, postprocessor: Postprocessor, output_dir: str, *,
                 every: int, last_epoch: int, pictures: int, ema, progress: TrainProgress | None,
                 best: BestCheckpoint, enabled: bool, meta: dict):
        self.detector = detector
        self.data = data
        self.postprocessor = postprocessor
        self.output_dir = output_dir
        self.every = every
        self.last_epoch = last_epoch
        self.pictures = pictures
        self.ema = ema
        self.progress = progress
        self.best = best
        self.enabled = enabled and every > 0
        self.meta = meta

    def due(self, epoch: int) -> bool:
        return self.enabled and (epoch % self.every == 0 or epoch == self.last_epoch)

    def after_epoch(self, epoch: int, step: int) -> dict | None:
        """Evaluate if due; leaves the detector in inference mode (the caller returns to training)."""
        if not self.due(epoch):
            return None
        metrics = self.evaluate(epoch)
        if self.best.improved_by(metrics["AP"]):
            self.best.save(self.detector, self.ema, metrics["AP"], epoch=epoch, step=step, **self.meta)
        return metrics

    def evaluate(self, epoch: int) -> dict:
        self.detector.set_train(False)
        if self.ema is not None:
            self.ema.swap()      # evaluate the averaged weights, as eval.py does on the checkpoint
        out_dir = os.path.join(self.output_dir, f"eval_epoch{epoch:04d}")
        try:
            metrics = evaluate(self.detector, self.data, self.postprocessor, out_dir=out_dir, draw=self.pictures)
        finally:
            if self.ema is not None:
                self.ema.swap()
        log.info("epoch %d: AP %.4f AP50 %.4f AP75 %.4f%s", epoch, metrics["AP"], metrics["AP50"],
                 metrics["AP75"], " (EMA weights)" if self.ema is not None else "")
        if self.progress is not None:
            self.progress.log_evaluation(epoch, metrics, detection_pictures(os.path.join(out_dir, "pictures")))
        return metrics
