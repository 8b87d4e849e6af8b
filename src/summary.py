"""Model summary: parameters, priors, FLOPs and head input shapes of a config.

    python -m src.summary --config configs/m2det320_vgg.yaml [--set model.num_classes=20 ...]
    python -m src.summary --markdown configs/m2det320_vgg.yaml configs/m2det512_vgg.yaml

The first form prints one JSON object; the second a markdown table for the README.
FLOPs are 2 x multiply-adds of the convolutions and matmuls for one image, counted with
forward hooks during a PyNative forward pass (so they follow the real shapes).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from m2det.detector import count_params
from src.builder import build_detector, build_priors
from src.config import load_config


def count_flops(detector, input_size: int) -> tuple[int, list[tuple[int, ...]]]:
    """(FLOPs, head input shapes (C, H, W)) of one `input_size` x `input_size` image."""
    import mindspore as ms
    import mindspore.nn as nn

    total = [0]
    head_inputs: list[tuple[int, ...]] = []

    def conv_hook(cell, inputs, output):
        n, c_out, h, w = output.shape
        kh, kw = cell.kernel_size
        total[0] += 2 * n * c_out * h * w * (cell.in_channels // cell.group) * kh * kw

    def head_hook(cell, inputs, output):
        head_inputs.extend(tuple(x.shape[1:]) for x in inputs[0])

    def dense_hook(cell, inputs, output):
        total[0] += 2 * int(np.prod(output.shape[:-1])) * cell.in_channels * cell.out_channels

    handles = [detector.head.register_forward_hook(head_hook)]
    for _, cell in detector.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            handles.append(cell.register_forward_hook(conv_hook))
        elif isinstance(cell, nn.Dense):
            handles.append(cell.register_forward_hook(dense_hook))
    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    was_training = detector.training
    try:
        detector.set_train(False)
        detector(ms.Tensor(np.zeros((1, 3, input_size, input_size), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        detector.set_train(was_training)
        ms.set_context(mode=previous_mode)
    return total[0], head_inputs


def summarize(cfg, flops: bool = True) -> dict:
    detector = build_detector(cfg)
    priors = build_priors(cfg)
    sizes = detector.feature_sizes(cfg.model.input_size)
    levels = [[ch, h, w] for (ch, _), (h, w) in zip(detector.neck.output_levels, sizes)]
    out = {
        "config": cfg.config_name,
        "input_size": cfg.model.input_size,
        "params": count_params(detector),
        "backbone_params": count_params(detector.backbone),
        "num_priors": priors.num_priors(),
        "flops": None,
        "levels": levels,
    }
    if flops:
        out["flops"], head_inputs = count_flops(detector, cfg.model.input_size)
        if [list(s) for s in head_inputs] != levels:
            raise RuntimeError(f"shape arithmetic {levels} disagrees with the forward pass {head_inputs}")
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| config | input | params | priors | GFLOPs |", "|---|---|---|---|---|"]
    for r in rows:
        gflops = "-" if r["flops"] is None else f"{r['flops'] / 1e9:.1f}"
        lines.append(f"| {r['config']} | {r['input_size']} | {r['params']:,} | {r['num_priors']:,} | {gflops} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (JSON summary)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--markdown", nargs="+", metavar="CONFIG", help="config files (markdown table)")
    parser.add_argument("--no-flops", action="store_true", help="skip the forward pass that counts FLOPs")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.markdown):
        parser.error("give exactly one of --config or --markdown")

    if args.config:
        summary = summarize(load_config(args.config, args.overrides), flops=not args.no_flops)
        print(json.dumps(summary))
    else:
        rows = [summarize(load_config(path, args.overrides), flops=not args.no_flops) for path in args.markdown]
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
