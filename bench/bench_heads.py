"""Every lite head on M2Det-lite after the same CPU training budget (issue 7).

    .venv/bin/python bench/bench_heads.py --data_dir work_dirs/quickstart/data --epochs 1
    .venv/bin/python bench/bench_heads.py --data_dir D --heads multibox gfl --epochs 1 --set train.batch_size=4

For each head config (configs/m2det_lite*.yaml: the same backbone, MLFPN, data and optimizer
recipe, only `model.head` and the head's test settings differ) this runs the user-facing
`train.py` and then `eval.py` on the val split, each in its own process, and prints one markdown
row per head: parameters, median train-step time (from train_log.csv, first logged window
excluded: it holds the compile), network and post-processing ms per image and the COCO numbers
(from metrics.json). `--json` keeps the rows. Nothing is downloaded; the data dir is any
COCO-format dataset with the synthetic layout (`python -m src.data.synthetic`).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HEAD_CONFIGS = {
    "multibox": "configs/m2det_lite.yaml",
    "retina": "configs/m2det_lite_retina.yaml",
    "atss": "configs/m2det_lite_atss.yaml",
    "umop": "configs/m2det_lite_umop.yaml",
    "gfl": "configs/m2det_lite_gfl.yaml",
    "vfnet": "configs/m2det_lite_vfnet.yaml",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="COCO-format dataset root (train and val splits)")
    p.add_argument("--heads", nargs="+", choices=sorted(HEAD_CONFIGS), default=list(HEAD_CONFIGS))
    p.add_argument("--epochs", type=int, default=1, help="training epochs for every head")
    p.add_argument("--out", default="work_dirs/bench_heads", help="one sub-folder per head")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every head (training and evaluation)")
    p.add_argument("--json", help="also write the rows to this file")
    return p.parse_args(argv)


def _run(cmd: list[str], log_path: str) -> None:
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {done.returncode}); see {log_path}")


def _step_time(csv_path: str) -> float:
    with open(csv_path, encoding="utf-8") as f:
        times = [float(row["step_time_s"]) for row in csv.DictReader(f)]
    return statistics.median(times[1:] if len(times) > 1 else times)


def _num_params(config: str, overrides: list[str]) -> int:
    from src.builder import build_detector
    from src.config import load_config

    net = build_detector(load_config(config, overrides))
    return sum(int(p.size) for p in net.get_parameters() if p.requires_grad)


def bench_head(name: str, args) -> dict:
    config = HEAD_CONFIGS[name]
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    sets = ["--set", *args.overrides] if args.overrides else []
    start = time.perf_counter()
    _run([sys.executable, "train.py", "--config", config, "--data_dir", args.data_dir, "--device_target", "CPU",
          "--epochs", str(args.epochs), "--output_dir", out, "--overwrite", *sets], os.path.join(out, "train.log"))
    train_s = time.perf_counter() - start
    ckpt = sorted(f for f in os.listdir(out) if f.endswith(".ckpt"))[-1]
    _run([sys.executable, "eval.py", "--config", config, "--checkpoint", os.path.join(out, ckpt),
          "--data_dir", args.data_dir, "--device_target", "CPU", "--output_dir", os.path.join(out, "eval"), *sets],
         os.path.join(out, "eval.log"))
    with open(os.path.join(out, "eval", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return {"head": name, "config": config, "params": _num_params(config, args.overrides),
            "train_wall_s": train_s, "step_s": _step_time(os.path.join(out, "train_log.csv")),
            **{k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl",
                                       "network_ms_per_image", "postprocess_ms_per_image")}}


def table(rows: list[dict], batch: str) -> str:
    lines = [f"| lite head | params | train step (batch {batch}) | train wall | network ms/img | post ms/img "
             "| AP | AP50 | AP75 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['params'] / 1e6:.2f}M | {r['step_s']:.2f} s | {r['train_wall_s'] / 60:.1f} min "
                     f"| {r['network_ms_per_image']:.0f} | {r['postprocess_ms_per_image']:.1f} "
                     f"| {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.config import load_config

    batch = str(load_config(HEAD_CONFIGS["multibox"], args.overrides).train.batch_size)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {args.epochs} epoch(s) of {args.data_dir}",
          flush=True)
    rows = []
    for name in args.heads:
        rows.append(bench_head(name, args))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(table(rows, batch))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
