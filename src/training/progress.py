"""Training progress: console lines, an optional tqdm bar, a CSV log, TensorBoard events and a PNG
of the curves.

Evaluations during training add a row of their own to the CSV (epoch, step and the COCO
numbers as `val_AP`, `val_AP50`, ...; the loss columns empty) and `val/*` scalars and
pictures with detections to the TensorBoard file.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
import os
import sys
import time

from src.training.tensorboard_events import TensorBoardWriter

log = logging.getLogger("m2det.train")

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class TrainProgress:
    """Every `log_every` steps: one log line and one CSV row with the averages since the last.

    A resumed run (`start_step` > 0) first drops the CSV rows after `start_step`: steps done
    after the checkpoint it resumes from are done again and logged again. `extras` given to
    `update` (loss scale, skipped steps) are logged as their latest value. `tensorboard`:
    also write the rows as `train/*` scalars to an event file in `out_dir`.
    """

    def __init__(self, out_dir: str | None, total_steps: int, log_every: int, batch_size: int,
                 start_step: int = 0, bar: bool | None = None, tensorboard: bool = False):
        self.total_steps = total_steps
        self.log_every = max(int(log_every), 1)
        self.batch_size = batch_size
        self.global_step = start_step
        self.rows: list[dict] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._window_start = time.perf_counter()
        self._run_start = self._window_start
        self._run_start_step = start_step
        self.csv_path = os.path.join(out_dir, "train_log.csv") if out_dir else None
        self._csv_file = None
        self._writer = None
        self._fields: list[str] = []
        self._extras: dict = {}
        if self.csv_path is not None and os.path.exists(self.csv_path):
            self._truncate_csv(start_step)
        self.tensorboard = TensorBoardWriter(out_dir, start_step) if out_dir and tensorboard else None
        use_bar = sys.stdout.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def update(self, epoch: int, losses: dict[str, float], lr: float, extras: dict | None = None) -> None:
        self.global_step += 1
        if extras:
            self._extras = dict(extras)
        for key, value in losses.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | {"lr": f"{lr:.2e}"})
        if self.global_step % self.log_every == 0 or self.global_step == self.total_steps:
            self._flush(epoch, lr)

    def _flush(self, epoch: int, lr: float) -> None:
        now = time.perf_counter()
        elapsed = now - self._window_start
        images_per_s = self._count * self.batch_size / max(elapsed, 1e-9)
        done = self.global_step - self._run_start_step
        per_step = (now - self._run_start) / max(done, 1)
        eta = per_step * (self.total_steps - self.global_step)
        row = {"epoch": epoch, "step": self.global_step, "lr": lr}
        row.update({k: v / self._count for k, v in self._sums.items()})
        row.update({"images_per_s": images_per_s, "step_time_s": elapsed / self._count})
        row.update(self._extras)
        self.rows.append(row)
        parts = " ".join(f"{k} {v / self._count:.4f}" for k, v in self._sums.items())
        extras = "".join(f" {k} {v:g}" for k, v in self._extras.items())
        message = (f"epoch {epoch} step {self.global_step}/{self.total_steps} {parts} lr {lr:.3e} "
                   f"{images_per_s:.1f} img/s{extras} eta {_format_eta(eta)}")
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)
        self._write_csv(row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(self.global_step, {f"train/{k}": v for k, v in row.items()
                                                        if k not in ("epoch", "step")})
        self._sums, self._count, self._window_start = {}, 0, now

    def log_evaluation(self, epoch: int, metrics: dict, pictures=()) -> None:
        """COCO numbers of an evaluation after `epoch`, at the current step; `pictures`:
        (tag, encoded PNG/JPEG bytes, height, width) of images with detections drawn."""
        values = {k: float(metrics[k]) for k in COCO_KEYS if k in metrics}
        self._write_csv({"epoch": epoch, "step": self.global_step} | {f"val_{k}": v for k, v in values.items()})
        if self.tensorboard is not None:
            self.tensorboard.scalars(self.global_step, {f"val/{k}": v for k, v in values.items()})
            for tag, encoded, height, width in pictures:
                self.tensorboard.image(self.global_step, f"val/{tag}", encoded, height, width)

    def _truncate_csv(self, keep_through_step: int) -> None:
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= keep_through_step]
        self._rewrite_csv(fields, rows)

    def _rewrite_csv(self, fields: list, rows: list[dict]) -> None:
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

    def _write_csv(self, row: dict) -> None:
        if self.csv_path is None:
            return
        if self._writer is None:
            self._fields = list(row)
            if os.path.exists(self.csv_path):
                with open(self.csv_path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    old_fields, old_rows = reader.fieldnames or [], list(reader)
                # the first row's columns, plus the evaluation columns of earlier rows
                self._fields += [k for k in old_fields if k.startswith("val_") and k not in self._fields]
                if old_fields != self._fields:      # e.g. resumed with mixed precision turned on
                    self._rewrite_csv(self._fields, old_rows)
            self._open_csv()
        elif any(k not in self._fields for k in row):    # the first evaluation row adds its columns
            self._csv_file.close()
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                old_rows = list(csv.DictReader(f))
            self._fields += [k for k in row if k not in self._fields]
            self._rewrite_csv(self._fields, old_rows)
            self._open_csv()
        self._writer.writerow(row)
        self._csv_file.flush()

    def _open_csv(self) -> None:
        new = not os.path.exists(self.csv_path)
        self._csv_file = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._csv_file, fieldnames=self._fields, restval="", extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._csv_file is not None:
            self._csv_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.csv_path is not None and os.path.exists(self.csv_path):
            if importlib.util.find_spec("matplotlib") is None:
                log.info("matplotlib is not installed (pip install '.[plot]'): no train_curves.png")
                return
            plot_training_curves(self.csv_path, os.path.join(os.path.dirname(self.csv_path), "train_curves.png"))


def plot_training_curves(csv_path: str, png_path: str) -> str | None:
    """Loss parts and learning rate against the step, from the CSV log."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr")]     # evaluation rows have no lr
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    skip = {"epoch", "step", "lr", "images_per_s", "step_time_s", "loss_scale", "skipped_steps"}
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in rows[0]:
        if key not in skip and not key.startswith("val_"):
            points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            ax_loss.plot([p[0] for p in points], [p[1] for p in points], label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_lr.plot(steps, [float(r["lr"]) for r in rows])
    ax_lr.set_xlabel("step")
    ax_lr.set_title("learning rate")
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
