"""Issue 16, item 4: does fine-tuning a pretrained detector beat training from scratch on new classes?

    # the full experiment (the lead's run; ~1 h of 2 CPU cores): the quickstart model, if present, else
    # trained here first; the "signs" dataset (3 other object kinds, other backgrounds) generated
    .venv/bin/python bench/bench_finetune.py --pretrained work_dirs/quickstart/m2det_lite_epoch0003.ckpt \
        --out work_dirs/bench_finetune --epochs 4 --set train.lr_schedule=cosine
    # a smoke run (tiny network, a few images; seconds of training, meaningless numbers)
    .venv/bin/python bench/bench_finetune.py --config tests/configs/tiny.yaml --train_images 16 --val_images 8 \
        --epochs 2 --source_epochs 1 --image_side 160 --out /tmp/ft_smoke --mode pynative

Runs, each with the user-facing train.py then eval.py on the signs val split:
    scratch        the config from its initialisation, `--epochs` epochs
    finetune       train.py --load_from the pretrained model, the same epochs (= the same steps)
    finetune_half  the same with half the epochs (its own, shorter schedule)
and writes OUT/results.md (a markdown table: steps, AP, AP50, AP75, train wall time) and
OUT/results.json. Without --pretrained, the pretrained model is trained first on the default
synthetic dataset (`--source_epochs` epochs), as the quickstart does. `--set` applies to all runs,
`--finetune_set` to the fine-tuning runs only (e.g. a lower train.lr). With a schedule by epochs
(m2det_lite's lr_steps) the half-length run would not reach the decay: use a cosine (or linear)
schedule, which every run completes, and an even --epochs. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIGNS_CLASSES = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/m2det_lite.yaml")
    p.add_argument("--pretrained", default=None, help="checkpoint of the config's network on other classes "
                   "(default: train one on the default synthetic dataset first)")
    p.add_argument("--out", default="work_dirs/bench_finetune")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the scratch and finetune runs (even)")
    p.add_argument("--train_images", type=int, default=2000, help="signs training images")
    p.add_argument("--val_images", type=int, default=200)
    p.add_argument("--image_side", type=int, default=320, help="largest image side of the generated data")
    p.add_argument("--source_epochs", type=int, default=3, help="pretraining epochs when --pretrained is not given")
    p.add_argument("--source_images", type=int, default=4200, help="shapes images for pretraining")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--finetune_set", dest="finetune_overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE")
    return p.parse_args(argv)


def _run(cmd: list[str], log_path: str) -> str:
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1"))
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} ... failed (exit {done.returncode}); see {log_path}")
    return text


def _make_data(out: str, kind: str, num_train: int, num_val: int, side: int) -> str:
    marker = os.path.join(out, ".generated_with")
    spec = f"{kind} {num_train} {num_val} {side}"
    if os.path.isfile(marker) and open(marker, encoding="utf-8").read() == spec:
        return out
    _run([sys.executable, "-m", "src.data.synthetic", "--out", out, "--kind", kind, "--train", str(num_train),
          "--val", str(num_val), "--seed", "0", "--min-size", "20", "--max-side", str(side),
          "--min-side", str(min(240, side))], out + ".log")
    with open(marker, "w", encoding="utf-8") as f:
        f.write(spec)
    return out


def train_and_eval(name: str, args, data: str, epochs: int, num_classes: int | None,
                   load_from: str | None = None) -> dict:
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    sets = list(args.overrides) + ([f"model.num_classes={num_classes}"] if num_classes else [])
    extra = []
    if load_from:
        extra = ["--load_from", load_from]
        sets += args.finetune_overrides
    start = time.perf_counter()
    log = _run([sys.executable, "train.py", "--config", args.config, "--data_dir", data, "--device_target", "CPU",
                "--epochs", str(epochs), "--output_dir", out, "--overwrite", "--mode", args.mode, *extra,
                "--set", "train.save_every=1000", *sets], os.path.join(out, "train.log"))
    wall = time.perf_counter() - start
    summary = json.loads(log.strip().splitlines()[-1])
    ckpt = summary["checkpoints"][-1]
    _run([sys.executable, "eval.py", "--checkpoint", ckpt, "--data_dir", data, "--device_target", "CPU",
          "--output_dir", os.path.join(out, "eval")], os.path.join(out, "eval.log"))
    with open(os.path.join(out, "eval", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return {"run": name, "epochs": epochs, "steps": summary["steps"], "train_wall_s": round(wall, 1),
            "checkpoint": ckpt, **{k: metrics[k] for k in ("AP", "AP50", "AP75")}}


def table(rows: list[dict]) -> str:
    lines = ["| run | steps | AP | AP50 | AP75 | train wall |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['steps']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} "
                     f"| {r['train_wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {args.config}, {args.epochs} epoch(s)", flush=True)
    signs = _make_data(os.path.join(args.out, "signs"), "signs", args.train_images, args.val_images, args.image_side)
    pretrained = args.pretrained
    rows = []
    if pretrained is None:
        shapes = _make_data(os.path.join(args.out, "shapes"), "shapes", args.source_images, args.val_images,
                            args.image_side)
        source = train_and_eval("pretrain_shapes", args, shapes, args.source_epochs, None)
        rows.append(source)
        pretrained = source["checkpoint"]
        print(json.dumps(source), flush=True)
    num_classes = SIGNS_CLASSES
    runs = [("scratch", args.epochs, None), ("finetune", args.epochs, pretrained),
            ("finetune_half", max(1, args.epochs // 2), pretrained)]
    for name, epochs, load_from in runs:
        rows.append(train_and_eval(name, args, signs, epochs, num_classes, load_from))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print("\n" + text)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"{args.config}, signs dataset ({args.train_images} train / {args.val_images} val), "
                f"pretrained: {pretrained}\n\n{text}\n")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
