"""The training loop: config + options -> checkpoints, logs and (optionally) AP during training.

Resume restores everything that decides what the next step does: the weights (and EMA
averages), the optimizer's momentum and step counter (= position in the learning-rate
table), the loss-scale state, and the data position. The data order of every epoch is a
function of (seed, epoch) (src/data/pipeline.py), so the run rebuilds the pipeline at the
checkpoint's epoch and, for a mid-epoch checkpoint, draws and discards the batches that
epoch had already consumed. A resumed run therefore makes the same steps as an
uninterrupted one: on CPU with one worker the final weights are bit-identical.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import cv2
import mindspore as ms
import numpy as np

from src.builder import build_detector, build_priors
from src.data.pipeline import create_train_dataset
from src.model_info import checkpoint_entries, dataset_classes, write_resolved_config
from src.training.amp import DynamicLossScale, apply_o2, resolve_amp_level
from src.training.checkpoint import (CheckpointError, CheckpointManager, checkpoint_meta, load_backbone_weights,
                                     read_checkpoint, restore_training_state, save_checkpoint,
                                     select_resume_checkpoint)
from src.training.distributed import GracefulStop, weights_digest
from src.training.ema import ModelEMA
from src.training.load_from import load_pretrained
from src.training.lr_schedule import lr_scale_for, schedule_from_config
from src.training.optimizer import build_optimizer
from src.training.progress import TrainProgress
from src.training.train_step import DetectorWithLoss, TrainStep
from m2det import winograd
from src.evaluation.evaluator import evaluate

log = logging.getLogger("m2det.train")

# REFERENCE 1.11: the M2Det authors report a large accuracy loss with a total batch above 32
RECOMMENDED_MAX_GLOBAL_BATCH = 32


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad resume file, ...)."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: the run stopped after a step and (rank 0) saved `checkpoint`."""

    def __init__(self, message: str, exit_code: int, checkpoint: str | None):
        super().__init__(message)
        self.exit_code = exit_code
        self.checkpoint = checkpoint


@dataclass
class TrainOptions:
    output_dir: str
    backbone_ckpt: str | None = None
    resume: str | None = None
    device_target: str = "CPU"
    mode: str = "graph"            # graph | pynative
    rank: int = 0
    group_size: int = 1
    progress_bar: bool | None = None
    overwrite: bool = False        # a fresh run may replace checkpoints already in output_dir


class DeviceUnavailable(RuntimeError):
    """--device_target names a device this MindSpore installation cannot use."""


DEVICE_REQUIREMENTS = {
    "GPU": ("no usable GPU was found. MindSpore {version}'s GPU build needs an NVIDIA GPU with its driver "
            "(libcuda.so), CUDA 11.1 or 11.6 and cuDNN 8 on the library path, and the MindSpore GPU "
            "package (not the CPU-only one)"),
    "Ascend": ("no usable Ascend NPU was found. MindSpore {version} on Ascend needs the Ascend driver and the "
               "CANN toolkit that matches this MindSpore version (its set_env.sh sourced), and the MindSpore "
               "Ascend package"),
}


def check_device(device_target: str) -> None:
    """Raise DeviceUnavailable, saying what is missing, before MindSpore fails with a C++ trace."""
    if device_target == "CPU":
        return
    if device_target not in DEVICE_REQUIREMENTS:
        raise DeviceUnavailable(f"unknown device_target {device_target!r} (CPU, GPU or Ascend)")
    try:
        usable = bool(ms.hal.is_available(device_target))
    except Exception:  # the query itself fails when the device plugin cannot load
        usable = False
    if not usable:
        raise DeviceUnavailable(
            f"--device_target {device_target}: " + DEVICE_REQUIREMENTS[device_target].format(version=ms.__version__)
            + ". Check the installation with: python -c \"import mindspore; mindspore.run_check()\"; "
            "or run with --device_target CPU.")


def set_context(device_target: str, mode: str, deterministic: bool = False) -> None:
    check_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device_target)
    if deterministic and device_target != "CPU":
        # CPU kernels are deterministic already; GPU/Ascend need the deterministic algorithms
        ms.set_context(deterministic="ON")


@dataclass
class _ResumePoint:
    path: str | None = None
    params: dict | None = None
    completed_epochs: int = 0
    epoch_step: int = 0            # batches of epoch completed_epochs + 1 already done
    step: int = 0
    skipped_steps: int = 0


def _resume_point(opts: TrainOptions, manager: CheckpointManager) -> _ResumePoint:
    if not opts.resume:
        return _ResumePoint()
    found = select_resume_checkpoint(opts.resume, manager, log)
    if found is None:
        log.info("--resume auto: no checkpoint in %s, starting from scratch", opts.output_dir)
        return _ResumePoint()
    path, params = found
    meta = checkpoint_meta(params)
    return _ResumePoint(path, params, int(meta.get("epoch", 0)), int(meta.get("epoch_step", 0)),
                        int(meta.get("step", 0)), int(meta.get("skipped_steps", 0)))


def _check_class_count(cfg, info) -> None:
    """The dataset's categories must be the model's foreground classes (before anything compiles)."""
    found, expected = len(info.cat_names), cfg.model.num_classes - 1
    if found != expected:
        raise TrainingError(f"the training annotations ({cfg.data.train_ann}) have {found} categories but the "
                            f"model has {expected} foreground classes (model.num_classes {cfg.model.num_classes} "
                            f"includes the background): set --set model.num_classes={found + 1}")


def _refuse_to_overwrite(opts: TrainOptions, manager: CheckpointManager) -> None:
    """A fresh run (no resume) must not replace another run's checkpoints unless asked."""
    if opts.resume or opts.overwrite:
        return
    existing = manager.existing()
    if existing:
        raise TrainingError(f"{opts.output_dir} already holds checkpoints of this config "
                            f"({os.path.basename(existing[-1])}, {len(existing)} in all): continue that run with "
                            f"--resume auto, choose another --output_dir, or pass --overwrite to replace them")


def train(cfg, opts: TrainOptions) -> dict:
    """Train `cfg` and return a summary: final epoch, last losses, checkpoint paths, steps.

    From the start, SIGTERM/SIGINT mean "stop after the next step, with a checkpoint".
    """
    stop = GracefulStop(opts.group_size).install()
    try:
        return _train(cfg, opts, stop)
    finally:
        stop.uninstall()


def _use_winograd_for_training(detector, device_target: str, amp_level: str) -> None:
    """train.winograd: eligible 3x3 convolutions by Winograd F(2x2, 3x3) (m2det/winograd.py), CPU only."""
    if device_target != "CPU" or amp_level != "O0":
        log.info("train.winograd applies to float32 training on CPU only; using direct convolutions on %s (%s)",
                 device_target, amp_level)
        return
    if not winograd.available():
        log.warning("train.winograd: %s is not built (bash scripts/make.sh); training with direct convolutions",
                    winograd.LIBRARY)
        return
    replaced = winograd.use_winograd(detector, trainable=True)
    log.info("train.winograd: %d convolutions use Winograd F(2x2, 3x3)", len(replaced))


def _train(cfg, opts: TrainOptions, stop: GracefulStop) -> dict:
    tcfg = cfg.train
    ms.set_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    is_main = opts.rank == 0
    if is_main:
        os.makedirs(opts.output_dir, exist_ok=True)

    detector = build_detector(cfg)
    priors = build_priors(cfg)
    if opts.backbone_ckpt:
        count = load_backbone_weights(detector.backbone, opts.backbone_ckpt)
        log.info("loaded %d backbone tensors from %s", count, opts.backbone_ckpt)

    manager = CheckpointManager(opts.output_dir, cfg.config_name, tcfg.keep_checkpoints)
    _refuse_to_overwrite(opts, manager)
    start = _resume_point(opts, manager)
    if tcfg.load_from:
        if start.path is not None:
            log.info("resuming from %s: train.load_from %s is not used", start.path, tcfg.load_from)
        else:
            report = load_pretrained(detector, cfg, read_checkpoint(tcfg.load_from), tcfg.load_from)
            log.info("load_from %s: %s", tcfg.load_from, report.summary())
    global_batch = tcfg.batch_size * opts.group_size
    if start.epoch_step and int(checkpoint_meta(start.params).get("global_batch", global_batch)) != global_batch:
        # the consumed part of the epoch is not a whole number of the new batches
        log.warning("the checkpoint was saved mid-epoch with another global batch; epoch %d restarts from "
                    "its first batch", start.completed_epochs + 1)
        start.epoch_step = 0

    # start_epoch makes a resumed run draw the same per-epoch orders as an uninterrupted one
    dataset = create_train_dataset(cfg, priors, batch_size=tcfg.batch_size,
                                   num_shards=opts.group_size if opts.group_size > 1 else None,
                                   shard_id=opts.rank if opts.group_size > 1 else None, seed=tcfg.seed,
                                   start_epoch=start.completed_epochs)
    steps_per_epoch = dataset.data_info.steps_per_epoch
    _check_class_count(cfg, dataset.data_info)
    model_entries = checkpoint_entries(cfg, dataset_classes(dataset.data_info.label_to_cat_id,
                                                            dataset.data_info.cat_names))
    if is_main:
        write_resolved_config(opts.output_dir, cfg)
    if start.path is not None and start.epoch_step == 0:
        start.step = start.completed_epochs * steps_per_epoch
    if is_main and global_batch > RECOMMENDED_MAX_GLOBAL_BATCH:
        log.warning("global batch %d (%d x %d devices) > %d: the M2Det authors report a large AP loss above "
                    "32; see docs/DISTRIBUTED.md", global_batch, tcfg.batch_size, opts.group_size,
                    RECOMMENDED_MAX_GLOBAL_BATCH)
    lr_scale = lr_scale_for(tcfg, global_batch)
    lr = schedule_from_config(tcfg, steps_per_epoch, lr_scale)
    if lr_scale != 1.0:
        log.info("learning rate scaled x%.3g for a global batch of %d (train.base_batch_size %d): peak %.3g",
                 lr_scale, global_batch, tcfg.base_batch_size, tcfg.lr * lr_scale)

    amp_level = resolve_amp_level(tcfg.amp_level, opts.device_target)
    if amp_level == "O2":
        apply_o2(detector)
    if tcfg.winograd:
        _use_winograd_for_training(detector, opts.device_target, amp_level)
    optimizer = build_optimizer(tcfg.optimizer, detector.trainable_params(), lr, tcfg.momentum, tcfg.weight_decay)
    ema = ModelEMA(detector, tcfg.ema_decay, tcfg.ema_warmup) if tcfg.ema else None
    loss_scale = (DynamicLossScale(tcfg.loss_scale, tcfg.loss_scale_factor, tcfg.loss_scale_window)
                  if amp_level == "O2" else None)
    extra = [loss_scale] if loss_scale is not None else []
    if start.path is not None:
        restore_training_state(start.params, detector, optimizer, ema=ema, extra=extra)
        where = f"at epoch {start.completed_epochs}"
        if start.epoch_step:
            where += f" + {start.epoch_step} batches of epoch {start.completed_epochs + 1}"
        log.info("resuming from %s %s (global step %d)", start.path, where, start.step)
        start.params = None
    step_fn = TrainStep(DetectorWithLoss(detector, float32_loss=amp_level == "O2"), optimizer,
                        tcfg.clip_grad_norm, loss_scale=loss_scale, ema=ema)
    step_fn.set_train(True)

    total_steps = tcfg.epochs * steps_per_epoch
    progress = TrainProgress(opts.output_dir if is_main else None, total_steps, tcfg.log_every, global_batch,
                             start.step, bar=opts.progress_bar if is_main else False,
                             tensorboard=tcfg.tensorboard)
    best = _BestCheckpoint(os.path.join(opts.output_dir, f"{cfg.config_name}_best.ckpt"),
                           resumed=start.path is not None)
    part_names = ["loss"] + list(detector.head.loss_names)
    last = {}
    saved = []
    skipped = start.skipped_steps

    def save(epoch: int, epoch_step: int = 0) -> str:
        path = manager.save(epoch, detector, optimizer, epoch_step=epoch_step, ema=ema, extra=extra,
                            step=progress.global_step, global_batch=global_batch, skipped_steps=skipped,
                            config_name=cfg.config_name, **model_entries)
        saved.append(path)
        log.info("saved %s", path)
        return path

    remaining = tcfg.epochs - start.completed_epochs
    iterator = dataset.create_tuple_iterator(num_epochs=max(remaining, 1))
    try:
        for epoch in range(start.completed_epochs + 1, tcfg.epochs + 1):
            done = 0
            consumed = start.epoch_step if epoch == start.completed_epochs + 1 else 0
            # a MindSpore multi-epoch iterator ends each epoch with StopIteration and restarts
            for images, *targets in iterator:
                if done < consumed:          # done before the checkpoint we resumed from
                    done += 1
                    continue
                outputs = step_fn(images, *targets)
                overflow = False
                if loss_scale is not None:
                    *outputs, overflow = outputs
                    overflow = bool(overflow.asnumpy())
                values = [float(o.asnumpy()) for o in outputs]
                if not all(math.isfinite(v) for v in values):
                    good = manager.existing()
                    raise TrainingError(
                        f"non-finite loss at epoch {epoch}, step {progress.global_step + 1}: "
                        f"{dict(zip(part_names, values))}; last good checkpoint: "
                        f"{good[-1] if good else 'none yet'}")
                skipped += int(overflow)
                done += 1
                last = dict(zip(part_names, values))
                extras = ({"loss_scale": float(loss_scale.value.asnumpy()), "skipped_steps": skipped}
                          if loss_scale is not None else None)
                progress.update(epoch, last, float(lr[min(progress.global_step, len(lr) - 1)]), extras)
                epoch_step = 0 if done == steps_per_epoch else done
                if stop.requested():
                    path = save(epoch, epoch_step) if is_main else None
                    stop.barrier()
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signum} after step {progress.global_step}"
                        + (f"; saved {path}" if path else ""), stop.exit_code, path)
                if (is_main and epoch_step and tcfg.save_every_steps > 0
                        and progress.global_step % tcfg.save_every_steps == 0):
                    save(epoch, epoch_step)
            if dataset.data_info.skipped_images():
                log.warning("epoch %d: %s (each replaced by the next readable image)", epoch,
                            dataset.data_info.skip_summary())
            if is_main and (epoch % tcfg.save_every == 0 or epoch == tcfg.epochs):
                save(epoch)
            if is_main and tcfg.eval_every > 0 and (epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs):
                metrics = _evaluate_during_training(cfg, detector, priors, opts, epoch, ema, progress)
                if best.improved_by(metrics["AP"]):
                    best.save(detector, ema, metrics["AP"], epoch=epoch, step=progress.global_step,
                              config_name=cfg.config_name, **model_entries)
                step_fn.set_train(True)
    finally:
        progress.close()
    if opts.group_size > 1:
        # trainable weights must be bit-identical on every rank (BatchNorm running statistics
        # are per replica: each rank's come from its own shard)
        print(f"rank {opts.rank}: trainable weights digest {weights_digest(detector.trainable_params())} "
              f"after step {progress.global_step}", flush=True)
    if skipped:
        log.info("%d of %d steps skipped on gradient overflow (loss scale %.0f)", skipped, progress.global_step,
                 float(loss_scale.value.asnumpy()))
    summary = {"epoch": tcfg.epochs, "losses": last, "checkpoints": saved, "steps": progress.global_step,
               "skipped_steps": skipped}
    if best.ap is not None:
        summary.update(best_checkpoint=best.path, best_AP=best.ap)
    return summary


class _BestCheckpoint:
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


def _detection_pictures(folder: str) -> list[tuple[str, bytes, int, int]]:
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


def _evaluate_during_training(cfg, detector, priors, opts: TrainOptions, epoch: int, ema=None,
                              progress: TrainProgress | None = None) -> dict:
    detector.set_train(False)
    if ema is not None:
        ema.swap()      # evaluate the averaged weights, as eval.py does on the checkpoint
    out_dir = os.path.join(opts.output_dir, f"eval_epoch{epoch:04d}")
    try:
        metrics = evaluate(cfg, detector, priors, out_dir=out_dir, draw=cfg.train.eval_pictures)
    finally:
        if ema is not None:
            ema.swap()
    log.info("epoch %d: AP %.4f AP50 %.4f AP75 %.4f%s", epoch, metrics["AP"], metrics["AP50"], metrics["AP75"],
             " (EMA weights)" if ema is not None else "")
    if progress is not None:
        progress.log_evaluation(epoch, metrics, _detection_pictures(os.path.join(out_dir, "pictures")))
    return metrics
