"""Forward latency of M2Det configs: batch 1, GRAPH mode, inference mode (softmax included).

    .venv/bin/python bench/bench_forward.py                                  # 320 and 512 VGG
    .venv/bin/python bench/bench_forward.py --configs configs/m2det_lite.yaml --reps 20

Reports, per config: parameters, GFLOPs (2 x multiply-adds, counted in a PyNative pass), the
compile time (first call minus one steady-state run) and the median / min steady-state latency.
Random weights: the latency does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402

from src.builder import build_detector  # noqa: E402
from m2det.detector import count_params  # noqa: E402
from src.summary import count_flops  # noqa: E402
from src.config import load_config  # noqa: E402


def bench(path: str, reps: int, warmup: int, overrides=()) -> dict:
    cfg = load_config(path, overrides)
    ms.set_seed(0)
    detector = build_detector(cfg)
    size = cfg.model.input_size
    flops, _ = count_flops(detector, size)

    ms.set_context(mode=ms.GRAPH_MODE)
    detector.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).uniform(-120, 120, (1, 3, size, size)).astype(np.float32))
    start = time.perf_counter()
    loc, conf = detector(x)
    conf.asnumpy()
    first = time.perf_counter() - start
    for _ in range(warmup):
        detector(x)[1].asnumpy()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        detector(x)[1].asnumpy()          # asnumpy waits for the result
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return {"config": cfg.config_name, "input_size": size, "params": count_params(detector),
            "gflops": round(flops / 1e9, 2), "compile_s": round(first - median, 2),
            "median_ms": round(median * 1e3, 1), "min_ms": round(min(times) * 1e3, 1), "reps": reps,
            "device": ms.get_context("device_target")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/m2det320_vgg.yaml", "configs/m2det512_vgg.yaml"])
    parser.add_argument("--reps", type=int, default=10, help="timed runs per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compilation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = [bench(path, args.reps, args.warmup, args.overrides) for path in args.configs]
    print("| config | input | params | GFLOPs | compile (s) | median (ms) | min (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['input_size']} | {r['params']:,} | {r['gflops']} | {r['compile_s']} | "
              f"{r['median_ms']} | {r['min_ms']} |")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
