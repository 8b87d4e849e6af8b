"""The training loop: config + options -> checkpoints, logs and (optionally) AP during training."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np

from m2det.builder import build_detector, build_priors
from src.data.pipeline import create_train_dataset
from src.training.checkpoint import (CheckpointManager, checkpoint_meta, load_backbone_weights,
                                     read_checkpoint, restore_training_state)
from src.training.lr_schedule import schedule_from_config
from src.training.optimizer import build_sgd
from src.training.progress import TrainProgress
from src.training.train_step import DetectorWithLoss, TrainStep

log = logging.getLogger("m2det.train")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad resume file, ...)."""


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


def set_context(device_target: str, mode: str) -> None:
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device_target)


def find_resume_checkpoint(resume: str, manager: CheckpointManager) -> str | None:
    """`auto` -> newest checkpoint of this config in the output dir (None if there is none)."""
    if resume != "auto":
        return resume
    existing = manager.existing()
    return existing[-1] if existing else None


def train(cfg, opts: TrainOptions) -> dict:
    """Train `cfg` and return a summary: final epoch, last losses, checkpoint paths."""
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
    resume_params, start_epoch = None, 0
    if opts.resume:
        path = find_resume_checkpoint(opts.resume, manager)
        if path is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", opts.output_dir)
        else:
            resume_params = read_checkpoint(path)
            start_epoch = int(checkpoint_meta(resume_params).get("epoch", 0))
            log.info("resuming from %s at epoch %d", path, start_epoch)

    # start_epoch makes a resumed run draw the same per-epoch orders as an uninterrupted one
    dataset = create_train_dataset(cfg, priors, batch_size=tcfg.batch_size,
                                   num_shards=opts.group_size if opts.group_size > 1 else None,
                                   shard_id=opts.rank if opts.group_size > 1 else None, seed=tcfg.seed,
                                   start_epoch=start_epoch)
    steps_per_epoch = dataset.data_info.steps_per_epoch
    lr = schedule_from_config(tcfg, steps_per_epoch)
    optimizer = build_sgd(detector.trainable_params(), lr, tcfg.momentum, tcfg.weight_decay)
    if resume_params is not None:
        restore_training_state(resume_params, detector, optimizer)
    step_fn = TrainStep(DetectorWithLoss(detector), optimizer, tcfg.clip_grad_norm)
    step_fn.set_train(True)

    total_steps = tcfg.epochs * steps_per_epoch
    progress = TrainProgress(opts.output_dir if is_main else None, total_steps, tcfg.log_every,
                             tcfg.batch_size * opts.group_size, start_epoch * steps_per_epoch,
                             bar=opts.progress_bar if is_main else False)
    part_names = ["loss"] + list(detector.head.loss_names)
    last = {}
    saved = []
    remaining = tcfg.epochs - start_epoch
    iterator = dataset.create_tuple_iterator(num_epochs=max(remaining, 1))
    try:
        for epoch in range(start_epoch + 1, tcfg.epochs + 1):
            # a MindSpore multi-epoch iterator ends each epoch with StopIteration and restarts
            for images, *targets in iterator:
                outputs = step_fn(images, *targets)
                values = [float(o.asnumpy()) for o in outputs]
                if not all(math.isfinite(v) for v in values):
                    good = manager.existing()
                    raise TrainingError(
                        f"non-finite loss at epoch {epoch}, step {progress.global_step + 1}: "
                        f"{dict(zip(part_names, values))}; last good checkpoint: "
                        f"{good[-1] if good else 'none yet'}")
                last = dict(zip(part_names, values))
                progress.update(epoch, last, float(lr[min(progress.global_step, len(lr) - 1)]))
            if is_main and (epoch % tcfg.save_every == 0 or epoch == tcfg.epochs):
                saved.append(manager.save(epoch, detector, optimizer, step=progress.global_step,
                                          config_name=cfg.config_name))
                log.info("saved %s", saved[-1])
            if is_main and tcfg.eval_every > 0 and epoch % tcfg.eval_every == 0 and epoch != tcfg.epochs:
                _evaluate_during_training(cfg, detector, priors, opts, epoch)
                step_fn.set_train(True)
    finally:
        progress.close()
    return {"epoch": tcfg.epochs, "losses": last, "checkpoints": saved, "steps": progress.global_step}


def _evaluate_during_training(cfg, detector, priors, opts: TrainOptions, epoch: int) -> None:
    from src.evaluation.evaluator import evaluate

    detector.set_train(False)
    metrics = evaluate(cfg, detector, priors, out_dir=os.path.join(opts.output_dir, f"eval_epoch{epoch:04d}"))
    log.info("epoch %d: AP %.4f AP50 %.4f AP75 %.4f", epoch, metrics["AP"], metrics["AP50"], metrics["AP75"])
