"""The training loop: config + options -> checkpoints, logs and (optionally) AP during training.

    build_run   the config turned into a run: network, data, resume point / load_from, learning
                rates, optimizer, EMA, loss scale, the jitted train step (TrainingRun)
    run_epoch   one epoch of steps (mid-epoch resume, stop requests, non-finite losses)
    hooks       checkpoints and evaluation after steps and epochs (src/training/hooks.py);
                losses, learning rate and speed are logged by TrainProgress

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

import mindspore as ms
import numpy as np

from m2det import batch_norm_relu, direct_conv, group_norm_relu, matmul_conv, max_pool, winograd
from src.builder import (build_detector, build_postprocessor, build_priors, class_dependent_names, eval_data_settings,
                         train_data_settings)
from src.data.pipeline import create_train_dataset
from src.model_info import checkpoint_entries, dataset_classes, write_resolved_config
from src.training import grad_clip
from src.training.amp import DynamicLossScale, apply_o2, resolve_amp_level
from src.training.checkpoint import (CheckpointManager, checkpoint_meta, load_backbone_weights, read_checkpoint,
                                     restore_training_state, select_resume_checkpoint)
from src.training.distributed import GracefulStop, weights_digest
from src.training.ema import ModelEMA
from src.training.hooks import BestCheckpoint, CheckpointHook, EvaluationHook
from src.training.load_from import load_pretrained
from src.training.lr_schedule import linear_scale, lr_schedule
from src.training.optimizer import build_optimizer
from src.training.progress import TrainProgress
from src.training.train_step import DetectorWithLoss, TrainStep

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


def _cpu_kernels_usable(setting: str, kernels, device_target: str, amp_level: str, fallback: str) -> bool:
    """Whether the C kernels of `kernels` (a module of m2det with `usable`) can train here: CPU,
    float32 and the library built; logs why not, naming `setting` and `fallback`, what runs instead."""
    if device_target != "CPU" or amp_level != "O0":
        log.info("%s applies to float32 training on CPU only; using %s on %s (%s)", setting, fallback,
                 device_target, amp_level)
        return False
    return kernels.usable(device_target, setting)


def _use_winograd_for_training(detector, device_target: str, amp_level: str, min_channels: int = 128) -> None:
    """train.winograd: eligible 3x3 convolutions of at least `min_channels` input and output channels
    by Winograd F(2x2, 3x3) (m2det/winograd.py), CPU only.

    Besides speed this saves memory: the backward of a direct convolution on CPU (oneDNN's gemm
    convolution) keeps its im2col scratch buffer for the whole run, one per layer, outside
    MindSpore's memory pool (docs/BENCHMARKS.md "Compile cost", issue 18)."""
    if not _cpu_kernels_usable("train.winograd", winograd, device_target, amp_level, "direct convolutions"):
        return
    replaced = winograd.use_winograd(detector, min_channels, trainable=True)
    log.info("train.winograd: %d convolutions use Winograd F(2x2, 3x3)", len(replaced))


def _use_direct_conv_for_training(detector, device_target: str, amp_level: str, max_channels: int,
                                  threads: int = 0) -> None:
    """train.direct_conv_max_channels: eligible 3x3 convolutions with at most `max_channels` input
    and output channels by the direct kernels (m2det/direct_conv.py), CPU and float32 only; they
    share the convolutions' Parameters, so checkpoints are unchanged."""
    if max_channels <= 0:
        return
    if not _cpu_kernels_usable("train.direct_conv_max_channels", direct_conv, device_target, amp_level,
                               "MindSpore's convolutions"):
        return
    replaced = direct_conv.use_direct_conv(detector, max_channels)
    used = direct_conv.set_threads(threads)
    log.info("train.direct_conv_max_channels: %d convolutions use the direct kernels (%d thread(s) per call)",
             len(replaced), used)


def _use_matmul_conv_for_training(detector, amp_level: str, max_channels: int) -> None:
    """train.matmul_conv_max_channels: unpadded 1x1 (and kernel-sized) convolutions with at most
    `max_channels` input and output channels as MatMuls (m2det/matmul_conv.py), float32 only;
    they share the convolutions' Parameters."""
    if max_channels <= 0:
        return
    if amp_level != "O0":
        log.info("train.matmul_conv_max_channels applies to float32 training only; unchanged under %s", amp_level)
        return
    replaced = matmul_conv.use_matmul_conv(detector, max_channels)
    log.info("train.matmul_conv_max_channels: %d convolutions are MatMuls", len(replaced))


def _rewrite_for_training(setting: str, kernels, rewrite, detector, device_target: str, amp_level: str,
                          fallback: str, what: str) -> None:
    """`rewrite(detector)` (of the m2det module `kernels`) where our kernels can train (see
    `_cpu_kernels_usable`), logging how many `what` it rewrote under `setting`."""
    if _cpu_kernels_usable(setting, kernels, device_target, amp_level, fallback):
        log.info("%s: %d %s use the kernel", setting, len(rewrite(detector)), what)


def _use_max_pool_kernel_for_training(detector, device_target: str, amp_level: str, enabled: bool) -> None:
    """train.max_pool_kernel: every eligible nn.MaxPool2d by our kernel (m2det/max_pool.py), CPU
    and float32 only; the same results bit for bit (pools have no Parameters)."""
    if enabled:
        _rewrite_for_training("train.max_pool_kernel", max_pool, max_pool.use_max_pool_kernel, detector,
                              device_target, amp_level, "MindSpore's max-pooling", "max-pools")


def _clip_kernel_usable(tcfg, device_target: str, amp_level: str) -> bool:
    """train.grad_norm_kernel: the clip's global norm by one C operator (src/training/grad_clip.py),
    CPU and float32 only; the same clip to float rounding."""
    if not tcfg.grad_norm_kernel or tcfg.clip_grad_norm <= 0:
        return False
    if not _cpu_kernels_usable("train.grad_norm_kernel", grad_clip, device_target, amp_level,
                               "MindSpore's per-gradient reductions"):
        return False
    log.info("train.grad_norm_kernel: the global norm of the gradients by one kernel")
    return True


def _use_group_norm_relu_for_training(detector, device_target: str, amp_level: str, enabled: bool) -> None:
    """train.group_norm_relu_kernel: every GroupNorm + ReLU of a BasicConv (the TUMs with
    `tum_norm: gn`) by one kernel (m2det/group_norm_relu.py), CPU and float32 only; it shares
    gamma and beta, so checkpoints are unchanged."""
    if enabled:
        _rewrite_for_training("train.group_norm_relu_kernel", group_norm_relu, group_norm_relu.use_group_norm_relu,
                              detector, device_target, amp_level, "MindSpore's GroupNorm", "GroupNorm + ReLU pairs")


def _use_batch_norm_relu_for_training(detector, device_target: str, amp_level: str, enabled: bool) -> None:
    """train.batch_norm_relu_kernel: every BatchNorm that a ReLU follows (the VGG's with
    `batch_norm: true`, the FFMs', the TUMs' with `tum_norm: bn`) and that ReLU by one kernel
    (m2det/batch_norm_relu.py), CPU and float32 only; it shares gamma, beta and the moving
    statistics, so checkpoints are unchanged."""
    if enabled:
        _rewrite_for_training("train.batch_norm_relu_kernel", batch_norm_relu, batch_norm_relu.use_batch_norm_relu,
                              detector, device_target, amp_level, "MindSpore's BatchNorm and ReLU",
                              "BatchNorm + ReLU pairs")


def use_cell_kernels(detector, tcfg, device_target: str, amp_level: str) -> None:
    """The config's kernels that rewrite cells besides the convolutions: GroupNorm + ReLU,
    BatchNorm + ReLU and the max-pools (`train.group_norm_relu_kernel`, `batch_norm_relu_kernel`,
    `max_pool_kernel`); each applies on CPU in float32 only."""
    _use_group_norm_relu_for_training(detector, device_target, amp_level, bool(tcfg.group_norm_relu_kernel))
    _use_batch_norm_relu_for_training(detector, device_target, amp_level, bool(tcfg.batch_norm_relu_kernel))
    _use_max_pool_kernel_for_training(detector, device_target, amp_level, bool(tcfg.max_pool_kernel))


@dataclass
class TrainingRun:
    """Everything a run is made of, built once from the config (`build_run`)."""

    cfg: object
    opts: TrainOptions
    detector: object
    priors: object
    dataset: object
    manager: CheckpointManager
    start: _ResumePoint
    optimizer: object
    ema: object
    loss_scale: object
    step_fn: object
    lr: object                     # per-step learning rates
    global_batch: int
    model_entries: dict            # class names and resolved config stored with every checkpoint

    @property
    def is_main(self) -> bool:
        return self.opts.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset.data_info.steps_per_epoch

    @property
    def extra_state(self) -> list:
        """Cells saved and restored with the weights besides the detector's (the loss scale)."""
        return [self.loss_scale] if self.loss_scale is not None else []

    @property
    def loss_names(self) -> list[str]:
        return ["loss"] + list(self.detector.head.loss_names)


def learning_rates(train_cfg, steps_per_epoch: int, global_batch: int) -> tuple[np.ndarray, float]:
    """(per-step rates, the linear-scaling multiplier) from the config's `train` section."""
    scale = linear_scale(global_batch, int(train_cfg.base_batch_size)) if train_cfg.scale_lr else 1.0
    rates = lr_schedule(train_cfg.lr_schedule, lr=train_cfg.lr * scale, epochs=train_cfg.epochs,
                        steps_per_epoch=steps_per_epoch, warmup_epochs=train_cfg.warmup_epochs,
                        warmup_start_lr=train_cfg.warmup_start_lr, lr_steps=train_cfg.lr_steps,
                        lr_multipliers=train_cfg.lr_multipliers, min_lr_ratio=float(train_cfg.min_lr_ratio))
    return rates, scale


def build_run(cfg, opts: TrainOptions) -> TrainingRun:
    """Network, data, resume point or `load_from` weights, learning rates, optimizer, EMA, loss
    scale and the train step, in the order that makes a resumed run repeat an uninterrupted one."""
    tcfg = cfg.train
    ms.set_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    if opts.rank == 0:
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
            report = load_pretrained(detector, read_checkpoint(tcfg.load_from), tcfg.load_from,
                                     class_dependent=class_dependent_names(cfg, detector),
                                     config_name=cfg.get("config_name", "?"))
            log.info("load_from %s: %s", tcfg.load_from, report.summary())
    global_batch = tcfg.batch_size * opts.group_size
    if start.epoch_step and int(checkpoint_meta(start.params).get("global_batch", global_batch)) != global_batch:
        # the consumed part of the epoch is not a whole number of the new batches
        log.warning("the checkpoint was saved mid-epoch with another global batch; epoch %d restarts from "
                    "its first batch", start.completed_epochs + 1)
        start.epoch_step = 0

    # start_epoch makes a resumed run draw the same per-epoch orders as an uninterrupted one
    dataset = create_train_dataset(train_data_settings(cfg), priors, batch_size=tcfg.batch_size,
                                   num_shards=opts.group_size if opts.group_size > 1 else None,
                                   shard_id=opts.rank if opts.group_size > 1 else None, seed=tcfg.seed,
                                   start_epoch=start.completed_epochs)
    steps_per_epoch = dataset.data_info.steps_per_epoch
    model_entries = checkpoint_entries(cfg, dataset_classes(dataset.data_info.label_to_cat_id,
                                                            dataset.data_info.cat_names))
    if opts.rank == 0:
        write_resolved_config(opts.output_dir, cfg)
    if start.path is not None and start.epoch_step == 0:
        start.step = start.completed_epochs * steps_per_epoch
    if opts.rank == 0 and global_batch > RECOMMENDED_MAX_GLOBAL_BATCH:
        log.warning("global batch %d (%d x %d devices) > %d: the M2Det authors report a large AP loss above "
                    "32; see docs/DISTRIBUTED.md", global_batch, tcfg.batch_size, opts.group_size,
                    RECOMMENDED_MAX_GLOBAL_BATCH)
    lr, lr_scale = learning_rates(tcfg, steps_per_epoch, global_batch)
    if lr_scale != 1.0:
        log.info("learning rate scaled x%.3g for a global batch of %d (train.base_batch_size %d): peak %.3g",
                 lr_scale, global_batch, tcfg.base_batch_size, tcfg.lr * lr_scale)

    amp_level = resolve_amp_level(tcfg.amp_level, opts.device_target)
    if amp_level == "O2":
        apply_o2(detector)
    if tcfg.winograd:
        _use_winograd_for_training(detector, opts.device_target, amp_level, tcfg.winograd_min_channels)
    _use_direct_conv_for_training(detector, opts.device_target, amp_level, int(tcfg.direct_conv_max_channels),
                                  int(tcfg.direct_conv_threads))
    _use_matmul_conv_for_training(detector, amp_level, int(tcfg.matmul_conv_max_channels))
    use_cell_kernels(detector, tcfg, opts.device_target, amp_level)
    optimizer = build_optimizer(tcfg.optimizer, detector.trainable_params(), lr, tcfg.momentum, tcfg.weight_decay)
    ema = ModelEMA(detector, tcfg.ema_decay, tcfg.ema_warmup) if tcfg.ema else None
    loss_scale = (DynamicLossScale(tcfg.loss_scale, tcfg.loss_scale_factor, tcfg.loss_scale_window)
                  if amp_level == "O2" else None)
    if start.path is not None:
        restore_training_state(start.params, detector, optimizer, ema=ema,
                               extra=[loss_scale] if loss_scale is not None else [])
        where = f"at epoch {start.completed_epochs}"
        if start.epoch_step:
            where += f" + {start.epoch_step} batches of epoch {start.completed_epochs + 1}"
        log.info("resuming from %s %s (global step %d)", start.path, where, start.step)
        start.params = None
    step_fn = TrainStep(DetectorWithLoss(detector, float32_loss=amp_level == "O2"), optimizer,
                        tcfg.clip_grad_norm, loss_scale=loss_scale, ema=ema,
                        clip_kernel=_clip_kernel_usable(tcfg, opts.device_target, amp_level))
    step_fn.set_train(True)
    return TrainingRun(cfg, opts, detector, priors, dataset, manager, start, optimizer, ema, loss_scale, step_fn,
                       lr, global_batch, model_entries)


def run_epoch(run: TrainingRun, epoch: int, iterator, progress: TrainProgress, checkpoints: CheckpointHook,
              stop: GracefulStop, skipped: int) -> tuple[dict, int]:
    """One epoch of steps; returns (the last step's losses, overflow-skipped steps so far).

    The first epoch of a mid-epoch resume draws and discards the batches done before the
    checkpoint. A stop request (signal) saves a checkpoint after the step and raises
    TrainingInterrupted; a non-finite loss raises TrainingError.
    """
    start = run.start
    consumed = start.epoch_step if epoch == start.completed_epochs + 1 else 0
    done = 0
    last = {}
    # a MindSpore multi-epoch iterator ends each epoch with StopIteration and restarts
    for images, *targets in iterator:
        if done < consumed:          # done before the checkpoint we resumed from
            done += 1
            continue
        outputs = run.step_fn(images, *targets)
        overflow = False
        if run.loss_scale is not None:
            *outputs, overflow = outputs
            overflow = bool(overflow.asnumpy())
        values = [float(o.asnumpy()) for o in outputs]
        if not all(math.isfinite(v) for v in values):
            raise TrainingError(
                f"non-finite loss at epoch {epoch}, step {progress.global_step + 1}: "
                f"{dict(zip(run.loss_names, values))}; last good checkpoint: {checkpoints.last_good()}")
        skipped += int(overflow)
        done += 1
        last = dict(zip(run.loss_names, values))
        extras = ({"loss_scale": float(run.loss_scale.value.asnumpy()), "skipped_steps": skipped}
                  if run.loss_scale is not None else None)
        progress.update(epoch, last, float(run.lr[min(progress.global_step, len(run.lr) - 1)]), extras)
        epoch_step = 0 if done == run.steps_per_epoch else done
        if stop.requested():
            path = checkpoints.save(epoch, epoch_step, progress.global_step, skipped) if run.is_main else None
            stop.barrier()
            raise TrainingInterrupted(
                f"stopped by signal {stop.signum} after step {progress.global_step}"
                + (f"; saved {path}" if path else ""), stop.exit_code, path)
        checkpoints.after_step(epoch, epoch_step, progress.global_step, skipped)
    return last, skipped


def _train(cfg, opts: TrainOptions, stop: GracefulStop) -> dict:
    run = build_run(cfg, opts)
    tcfg, start = cfg.train, run.start
    progress = TrainProgress(opts.output_dir if run.is_main else None, tcfg.epochs * run.steps_per_epoch,
                             tcfg.log_every, run.global_batch, start.step,
                             bar=opts.progress_bar if run.is_main else False, tensorboard=tcfg.tensorboard)
    checkpoints = CheckpointHook(run.manager, run.detector, run.optimizer, ema=run.ema, extra=run.extra_state,
                                 save_every=tcfg.save_every, save_every_steps=tcfg.save_every_steps,
                                 last_epoch=tcfg.epochs, enabled=run.is_main,
                                 meta=dict(global_batch=run.global_batch, config_name=cfg.config_name,
                                           **run.model_entries))
    best = BestCheckpoint(os.path.join(opts.output_dir, f"{cfg.config_name}_best.ckpt"),
                          resumed=start.path is not None)
    evaluation = EvaluationHook(run.detector, eval_data_settings(cfg, "val"), build_postprocessor(cfg, run.priors),
                                opts.output_dir, every=tcfg.eval_every, last_epoch=tcfg.epochs,
                                pictures=tcfg.eval_pictures, ema=run.ema, progress=progress, best=best,
                                enabled=run.is_main, meta=dict(config_name=cfg.config_name, **run.model_entries))
    last, skipped = {}, start.skipped_steps
    iterator = run.dataset.create_tuple_iterator(num_epochs=max(tcfg.epochs - start.completed_epochs, 1))
    try:
        for epoch in range(start.completed_epochs + 1, tcfg.epochs + 1):
            epoch_last, skipped = run_epoch(run, epoch, iterator, progress, checkpoints, stop, skipped)
            last = epoch_last or last
            if run.dataset.data_info.skipped_images():
                log.warning("epoch %d: %s (each replaced by the next readable image)", epoch,
                            run.dataset.data_info.skip_summary())
            checkpoints.after_epoch(epoch, progress.global_step, skipped)
            if evaluation.after_epoch(epoch, progress.global_step) is not None:
                run.step_fn.set_train(True)
    finally:
        progress.close()
    if opts.group_size > 1:
        # trainable weights must be bit-identical on every rank (BatchNorm running statistics
        # are per replica: each rank's come from its own shard)
        print(f"rank {opts.rank}: trainable weights digest {weights_digest(run.detector.trainable_params())} "
              f"after step {progress.global_step}", flush=True)
    if skipped:
        log.info("%d of %d steps skipped on gradient overflow (loss scale %.0f)", skipped, progress.global_step,
                 float(run.loss_scale.value.asnumpy()))
    summary = {"epoch": tcfg.epochs, "losses": last, "checkpoints": checkpoints.saved, "steps": progress.global_step,
               "skipped_steps": skipped}
    if best.ap is not None:
        summary.update(best_checkpoint=best.path, best_AP=best.ap)
    return summary
