"""Train an M2Det (or any configured) detector.

    python train.py --config configs/m2det_lite.yaml --data_dir work_dirs/synthetic \
        --device_target CPU --epochs 30 --output_dir work_dirs/lite

Several devices: scripts/run_distributed_train_gpu.sh (msrun or mpirun) starts one process
per device with --run_distribute; see docs/DISTRIBUTED.md.

    --resume auto            continue from the newest readable checkpoint in the output dir
    --resume PATH            continue from PATH
    --load_from CKPT         start a new run from a whole detector (ours or convert.py's), e.g. one trained
                             on COCO: matching tensors load, the class layers are re-initialised
    --overwrite              a fresh run may replace checkpoints already in --output_dir
    SIGTERM / SIGINT         finish the step, save a checkpoint, exit with 128 + signal

The reference's flag names are kept as aliases: --dataset_path, --pretrained_backbone,
--device_id, --run_distribute.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from src.config import ConfigError, load_config
from src.utils.cli_args import non_negative_int, positive_int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/m2det320_vgg.yaml", help="YAML config file")
    p.add_argument("--data_dir", "--dataset_path", dest="data_dir", default=None,
                   help="dataset root (overrides data.root)")
    p.add_argument("--backbone_ckpt", "--pretrained_backbone", dest="backbone_ckpt", default=None,
                   help="MindSpore ckpt of the backbone (from convert.py); omit to train from scratch")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--device_id", type=non_negative_int, default=None, help="device index (single-device runs)")
    p.add_argument("--epochs", type=positive_int, default=None, help="overrides train.epochs")
    p.add_argument("--batch_size", type=positive_int, default=None, help="per-device batch, overrides train.batch_size")
    p.add_argument("--output_dir", default=None, help="default: work_dirs/<config name>")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (newest in output_dir)")
    p.add_argument("--load_from", default=None,
                   help="whole-detector checkpoint to start a new run from (train.load_from); not with --resume")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh run even if --output_dir holds checkpoints of this config (replacing them)")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--run_distribute", action="store_true",
                   help="data-parallel over all launched workers (msrun / mpirun; see docs/DISTRIBUTED.md)")
    p.add_argument("--amp_level", default=None, choices=["auto", "O0", "O2"], help="overrides train.amp_level")
    p.add_argument("--ema", action="store_true", default=None, help="keep an EMA of the weights (train.ema)")
    p.add_argument("--scale_lr", action="store_true", default=None,
                   help="scale lr linearly with the global batch (train.scale_lr, train.base_batch_size)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels on GPU/Ascend (train.deterministic)")
    p.add_argument("--cpu_threads", type=positive_int, default=None,
                   help="CPU kernel threads per process (several CPU workers on one machine: cores / workers)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.lr=0.01 model.neck.mlfpn.num_levels=4")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    if args.resume and args.load_from:
        print("--resume continues a run and --load_from starts a new one: give one of them", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.load_from:
        overrides.append(f"train.load_from={args.load_from}")
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.amp_level is not None:
        overrides.append(f"train.amp_level={args.amp_level}")
    for flag in ("ema", "scale_lr", "deterministic"):
        if getattr(args, flag):
            overrides.append(f"train.{flag}=true")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    import mindspore as ms

    from src.training.checkpoint import CheckpointError
    from src.training.distributed import DistInfo, init_distributed, local_rank_from_env
    from src.device import DeviceUnavailable, set_context, set_kernel_launch_group
    from src.training.trainer import TrainingError, TrainingInterrupted, TrainOptions, train

    try:
        set_context(args.device_target, args.mode, cfg.train.deterministic)
    except DeviceUnavailable as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    if args.cpu_threads:
        ms.device_context.cpu.op_tuning.threads_num(args.cpu_threads)
    try:
        set_kernel_launch_group(cfg.train.kernel_launch_group, args.device_target)
    except (ValueError, RuntimeError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    dist = DistInfo()
    if args.run_distribute:
        if args.device_target != "CPU":
            ms.set_device(args.device_target, local_rank_from_env())
        try:
            dist = init_distributed()
        except RuntimeError as exc:
            print(f"--run_distribute: communication.init() failed (start train.py with msrun or mpirun, e.g. "
                  f"scripts/run_distributed_train_gpu.sh): {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        print(f"rank {dist.rank} of {dist.group_size} (local {dist.local_rank}), pid {os.getpid()}", flush=True)
        if dist.rank != 0:
            logging.getLogger().setLevel(logging.WARNING)     # the training log is rank 0's
    elif args.device_id is not None and args.device_target != "CPU":
        ms.set_device(args.device_target, args.device_id)
    output_dir = args.output_dir or os.path.join("work_dirs", cfg.config_name)
    opts = TrainOptions(output_dir=output_dir, backbone_ckpt=args.backbone_ckpt, resume=args.resume,
                        device_target=args.device_target, mode=args.mode, rank=dist.rank,
                        group_size=dist.group_size, overwrite=args.overwrite)
    try:
        summary = train(cfg, opts)
    except TrainingInterrupted as exc:
        print(f"training interrupted: {exc}; continue with --resume auto", file=sys.stderr, flush=True)
        return exc.exit_code
    except (TrainingError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    if dist.rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
