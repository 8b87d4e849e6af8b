"""Train an M2Det (or any configured) detector.

    python train.py --config configs/m2det_lite.yaml --data_dir work_dirs/synthetic \
        --device_target CPU --epochs 30 --output_dir work_dirs/lite

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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/m2det320_vgg.yaml", help="YAML config file")
    p.add_argument("--data_dir", "--dataset_path", dest="data_dir", default=None,
                   help="dataset root (overrides data.root)")
    p.add_argument("--backbone_ckpt", "--pretrained_backbone", dest="backbone_ckpt", default=None,
                   help="MindSpore ckpt of the backbone (from convert.py); omit to train from scratch")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--device_id", type=int, default=None, help="device index (single-device runs)")
    p.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    p.add_argument("--batch_size", type=int, default=None, help="per-device batch, overrides train.batch_size")
    p.add_argument("--output_dir", default=None, help="default: work_dirs/<config name>")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (newest in output_dir)")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--run_distribute", action="store_true", help="data-parallel over all launched workers (msrun)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.lr=0.01 model.neck.num_levels=4")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    import mindspore as ms

    from src.training.trainer import TrainOptions, TrainingError, set_context, train
    from src.training.checkpoint import CheckpointError

    set_context(args.device_target, args.mode)
    if args.device_id is not None and args.device_target != "CPU":
        ms.set_device(args.device_target, args.device_id)
    rank, group_size = 0, 1
    if args.run_distribute:
        from mindspore import communication
        from mindspore.context import ParallelMode

        communication.init()
        rank, group_size = communication.get_rank(), communication.get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=group_size)
    output_dir = args.output_dir or os.path.join("work_dirs", cfg.config_name)
    opts = TrainOptions(output_dir=output_dir, backbone_ckpt=args.backbone_ckpt, resume=args.resume,
                        device_target=args.device_target, mode=args.mode, rank=rank, group_size=group_size)
    try:
        summary = train(cfg, opts)
    except (TrainingError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    if rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
