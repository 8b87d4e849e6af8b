"""Evaluate a checkpoint with COCO box AP.

    python eval.py --config configs/m2det_lite.yaml --checkpoint work_dirs/quickstart/m2det_lite_epoch0030.ckpt \
        --data_dir work_dirs/quickstart/data [--split val] [--output_dir O] [--draw 8]

--config defaults to the config stored in the checkpoint (train.py writes it there).

Writes the COCO results JSON and metrics.json (the 12 COCO numbers, per-class AP, the
network / post-processing time per image) to the output dir and prints them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from src.utils.cli_args import non_negative_int, positive_int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="default: the config stored in the checkpoint")
    p.add_argument("--checkpoint", "--checkpoint_path", dest="checkpoint", required=True)
    p.add_argument("--data_dir", "--dataset_path", dest="data_dir", default=None, help="overrides data.root")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--device_id", type=non_negative_int, default=None)
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--batch_size", type=positive_int, default=1)
    p.add_argument("--output_dir", default=None, help="default: <checkpoint dir>/eval")
    p.add_argument("--draw", type=non_negative_int, default=0, help="write this many pictures with detections")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    overrides = list(args.overrides) + ([f"data.root={args.data_dir}"] if args.data_dir else [])
    from src.cli.loading import CliFailure, open_checkpoint
    from src.device import set_context
    from src.model_info import write_resolved_config
    from src.training.checkpoint import CheckpointError, load_detector_weights

    try:
        cfg, _, params = open_checkpoint(args.checkpoint, args.config, overrides, args.device_target,
                                         "evaluation failed")
    except CliFailure as exc:
        print(exc.message, file=sys.stderr)
        return exc.code

    import mindspore as ms

    from src.builder import build_detector, build_postprocessor, eval_data_settings, inference_options
    from src.evaluation.evaluator import evaluate, format_report
    from src.inference.fast_network import inference_network

    set_context(args.device_target, args.mode)
    if args.device_id is not None and args.device_target != "CPU":
        ms.set_device(args.device_target, args.device_id)
    detector = build_detector(cfg)
    try:
        load_detector_weights(detector, params, args.checkpoint)
    except CheckpointError as exc:
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return 1
    params = None
    detector = inference_network(detector, **inference_options(cfg), device_target=args.device_target)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    write_resolved_config(out_dir, cfg)
    try:
        metrics = evaluate(detector, eval_data_settings(cfg, args.split), build_postprocessor(cfg), out_dir=out_dir,
                           batch_size=args.batch_size, draw=args.draw)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return 1
    print(format_report(metrics))
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_class_AP"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
