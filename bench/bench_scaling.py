"""Data-parallel scaling: step time and images/s for 1..N workers, and (GPU) mixed precision.

CPU (what the tests use; weak scaling: the per-worker batch is fixed, the global batch grows):

    python bench/bench_scaling.py --workers 1 2 --steps 24

runs scripts/run_distributed_train_gpu.sh with DEVICE_TARGET=CPU for each worker count on the
tiny config and a synthetic dataset, and reads rank 0's train_log.csv (one row per step). The
first `--warmup` steps (graph compilation, pipeline start) are dropped; the step time is the
median of the rest. Efficiency(n) = images/s(n) / (n * images/s(1)).

GPU (one device; the model zoo's setting is M2Det-512 VGG, batch 7 per GPU, 707 ms/step on V100):

    python bench/bench_scaling.py --gpu --config configs/m2det512_vgg.yaml --batch 7 --steps 40

runs train.py with --amp_level O0 and O2 on a synthetic dataset and prints both step times next
to the model zoo's 707 ms/step (different GPU, different data loader: a reference point, not a
like-for-like comparison).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODEL_ZOO_MS_PER_STEP = 707.0


def step_times(csv_path: str, warmup: int) -> list[float]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [float(r["step_time_s"]) for r in rows if int(r["step"]) > warmup]


def make_data(path: str, images: int) -> str:
    from src.data.synthetic import make_synthetic_coco

    if not os.path.isdir(os.path.join(path, "annotations")):
        make_synthetic_coco(path, num_train=images, num_val=2, seed=0)
    return path


def run_cpu(workers: int, args, data_dir: str, work: str) -> dict:
    out = os.path.join(work, f"w{workers}")
    env = dict(os.environ, DEVICE_TARGET="CPU", GLOG_v="3", PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    steps_per_epoch = args.images // (args.batch * workers)
    epochs = max(1, -(-(args.steps + args.warmup) // steps_per_epoch))
    cmd = ["bash", os.path.join(ROOT, "scripts", "run_distributed_train_gpu.sh"),
           "--master_port", str(random.randint(20000, 60000)), str(workers), "0", "none", data_dir, args.config,
           "--epochs", str(epochs), "--batch_size", str(args.batch), "--output_dir", out, "--overwrite",
           "--set", "train.log_every=1", "train.save_every=100000", "train.warmup_epochs=0",
           "train.lr_steps=[]", "train.lr_multipliers=[]"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{workers} workers failed:\n{proc.stderr[-3000:]}")
    times = step_times(os.path.join(out, "train_log.csv"), args.warmup)
    step = statistics.median(times)
    return {"workers": workers, "global_batch": args.batch * workers, "steps_timed": len(times),
            "step_time_ms": 1000 * step, "images_per_s": args.batch * workers / step, "wall_s": wall}


def run_gpu(level: str, args, data_dir: str, work: str) -> dict:
    out = os.path.join(work, f"gpu_{level}")
    steps_per_epoch = args.images // args.batch
    epochs = max(1, -(-(args.steps + args.warmup) // steps_per_epoch))
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config, "--data_dir", data_dir,
           "--device_target", "GPU", "--device_id", "0", "--amp_level", level, "--epochs", str(epochs),
           "--batch_size", str(args.batch), "--output_dir", out,
           "--set", "train.log_every=1", "train.save_every=100000", "train.warmup_epochs=0",
           "train.lr_steps=[]", "train.lr_multipliers=[]", f"data.num_workers={args.data_workers}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"GPU {level} failed:\n{proc.stderr[-3000:]}")
    times = step_times(os.path.join(out, "train_log.csv"), args.warmup)
    with open(os.path.join(out, "train_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    skipped = int(float(rows[-1].get("skipped_steps") or 0)) if rows else 0
    step = statistics.median(times)
    return {"amp_level": level, "batch": args.batch, "step_time_ms": 1000 * step,
            "images_per_s": args.batch / step, "skipped_steps": skipped,
            "model_zoo_ms": MODEL_ZOO_MS_PER_STEP}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mixed-precision comparison instead of CPU scaling")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--config", default=None, help="default: tests/configs/tiny.yaml (CPU), m2det512_vgg (GPU)")
    p.add_argument("--batch", type=int, default=None, help="per worker; default 4 (CPU), 7 (GPU)")
    p.add_argument("--steps", type=int, default=24, help="timed steps (per run)")
    p.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    p.add_argument("--images", type=int, default=None, help="synthetic training images")
    p.add_argument("--data_workers", type=int, default=4, help="GPU runs: data.num_workers")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.config = args.config or ("configs/m2det512_vgg.yaml" if args.gpu else "tests/configs/tiny.yaml")
    args.batch = args.batch or (7 if args.gpu else 4)
    if args.images is None:
        per_epoch = args.batch * (1 if args.gpu else max(args.workers))
        args.images = per_epoch * (args.steps + args.warmup)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_scaling_")
    data_dir = make_data(os.path.join(work, "data"), args.images)
    results = []
    if args.gpu:
        for level in ("O0", "O2"):
            results.append(run_gpu(level, args, data_dir, work))
        print(f"| AMP | batch | ms/step | images/s | skipped steps | model zoo (V100, fp32?) |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['amp_level']} | {r['batch']} | {r['step_time_ms']:.0f} | {r['images_per_s']:.1f} | "
                  f"{r['skipped_steps']} | {MODEL_ZOO_MS_PER_STEP:.0f} ms |")
    else:
        for n in args.workers:
            results.append(run_cpu(n, args, data_dir, work))
        base = results[0]["images_per_s"] / results[0]["workers"]
        print(f"config {args.config}, batch {args.batch} per worker, median of {args.steps} steps after "
              f"{args.warmup} warm-up steps, {os.cpu_count()} CPU cores")
        print("| workers | global batch | ms/step | images/s | scaling efficiency |")
        print("|---|---|---|---|---|")
        for r in results:
            r["efficiency"] = r["images_per_s"] / (r["workers"] * base)
            print(f"| {r['workers']} | {r['global_batch']} | {r['step_time_ms']:.0f} | {r['images_per_s']:.1f} | "
                  f"{100 * r['efficiency']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
