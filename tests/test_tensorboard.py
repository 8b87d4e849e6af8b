"""TensorBoard event files (src/training/tensorboard_events.py) read back by the `tensorboard`
package's own loader; evaluation rows in the CSV; the best-AP checkpoint."""
import csv
import glob
import os
import struct

import cv2
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from src.training.checkpoint import read_checkpoint, save_checkpoint
from src.training.progress import TrainProgress
from src.training.tensorboard_events import TensorBoardWriter, crc32c, masked_crc32c, tfrecord

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def accumulate(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_crc32c_check_value_and_frame():
    # the CRC-32C (Castagnoli) check value of "123456789" (RFC 3720, B.4) and of no bytes
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    frame = tfrecord(b"abc")
    assert struct.unpack("<Q", frame[:8])[0] == 3 and frame[12:15] == b"abc" and len(frame) == 8 + 4 + 3 + 4
    assert struct.unpack("<I", frame[15:])[0] == masked_crc32c(b"abc")


def test_scalars_and_images_read_back(tmp_path):
    writer = TensorBoardWriter(str(tmp_path))
    writer.scalars(1, {"train/loss": 2.5, "train/lr": 0.125})
    writer.scalars(3, {"train/loss": -1.75, "train/lr": 0.25})
    picture = np.zeros((6, 10, 3), np.uint8)
    picture[:, :5] = (0, 0, 255)
    encoded = cv2.imencode(".png", picture)[1].tobytes()
    writer.image(3, "val/detections/7", encoded, 6, 10)
    writer.close()
    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    # values exactly representable in float32, so they read back exactly
    assert scalars(acc, "train/loss") == [(1, 2.5), (3, -1.75)]
    assert scalars(acc, "train/lr") == [(1, 0.125), (3, 0.25)]
    (image,) = acc.Images("val/detections/7")
    assert (image.step, image.height, image.width) == (3, 6, 10)
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, picture)


def test_resumed_writer_drops_the_steps_done_again(tmp_path):
    first = TensorBoardWriter(str(tmp_path))
    for step in (1, 2, 3, 4):
        first.scalars(step, {"train/loss": float(step)})
    first.close()
    # resumed from a checkpoint after step 2: steps 3 and 4 are trained again
    second = TensorBoardWriter(str(tmp_path), start_step=2)
    second.scalars(3, {"train/loss": 30.0})
    second.close()
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
    assert scalars(accumulate(tmp_path), "train/loss") == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_progress_writes_train_and_eval_scalars_and_csv_rows(tmp_path):
    progress = TrainProgress(str(tmp_path), total_steps=4, log_every=2, batch_size=2, bar=False, tensorboard=True)
    for loss in (1.0, 2.0, 3.0, 5.0):
        progress.update(1, {"loss": loss, "loss_cls": loss / 2}, lr=0.5)
    metrics = {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                "ARm", "ARl")}
    metrics.update(AP=0.25, AP50=0.5, per_class_AP={"a": 0.25})
    progress.log_evaluation(1, metrics)
    progress.close()

    acc = accumulate(tmp_path)
    # rows every 2 steps hold the means of the window: (1+2)/2, (3+5)/2
    assert scalars(acc, "train/loss") == [(2, 1.5), (4, 4.0)]
    assert scalars(acc, "train/loss_cls") == [(2, 0.75), (4, 2.0)]
    assert scalars(acc, "train/lr") == [(2, 0.5), (4, 0.5)]
    assert [s for s, _ in scalars(acc, "train/images_per_s")] == [2, 4]
    assert scalars(acc, "val/AP") == [(4, 0.25)] and scalars(acc, "val/AP50") == [(4, 0.5)]
    assert "val/per_class_AP" not in acc.Tags()["scalars"]

    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4", "4"]
    assert [r["loss"] for r in rows] == ["1.5", "4.0", ""]
    assert [r["val_AP"] for r in rows] == ["", "", "0.25"] and rows[2]["val_AP50"] == "0.5"
    assert os.path.isfile(tmp_path / "train_curves.png")


def test_progress_without_tensorboard_writes_no_event_file(tmp_path):
    progress = TrainProgress(str(tmp_path), total_steps=1, log_every=1, batch_size=1, bar=False)
    progress.update(1, {"loss": 1.0}, lr=0.1)
    progress.close()
    assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_best_checkpoint_resumes_from_the_stored_ap(tmp_path):
    from src.training.hooks import BestCheckpoint

    cell = nn.Dense(2, 1)
    best = BestCheckpoint(str(tmp_path / "x_best.ckpt"), resumed=False)
    assert best.improved_by(0.0)
    best.save(cell, None, 0.375, epoch=3)
    assert read_checkpoint(best.path)["epoch"] == 3
    resumed = BestCheckpoint(best.path, resumed=True)
    assert resumed.ap == 0.375
    assert not resumed.improved_by(0.375) and resumed.improved_by(0.5)
    # a fresh run into the same folder replaces the old file at its first evaluation
    assert BestCheckpoint(best.path, resumed=False).improved_by(0.1)
    save_checkpoint(str(tmp_path / "other.ckpt"), cell)          # no best_AP in it
    assert BestCheckpoint(str(tmp_path / "other.ckpt"), resumed=True).ap is None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from src.data.synthetic import make_synthetic_coco

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(str(out), num_train=8, num_val=4, seed=0)
    return str(out)


def test_training_with_evaluation_keeps_the_best_checkpoint(data_dir, tmp_path):
    from src.config import load_config
    from src.device import set_context
    from src.training.trainer import TrainOptions, train

    cfg = load_config(TINY, [f"data.root={data_dir}", "train.epochs=3", "train.eval_every=1",
                             "train.keep_checkpoints=1", "train.eval_pictures=2", "test.score_threshold=0.0"])
    set_context("CPU", "pynative")
    out = str(tmp_path / "run")
    summary = train(cfg, TrainOptions(output_dir=out, progress_bar=False))
    ms.set_context(mode=ms.PYNATIVE_MODE)

    with open(os.path.join(out, "train_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    evals = [r for r in rows if r["val_AP"]]
    # 8 images / batch 4 = 2 steps per epoch; every epoch, the last included, is evaluated
    assert [(int(r["epoch"]), int(r["step"])) for r in evals] == [(1, 2), (2, 4), (3, 6)]
    aps = [float(r["val_AP"]) for r in evals]

    acc = accumulate(out)
    assert [s for s, _ in scalars(acc, "val/AP")] == [2, 4, 6]
    np.testing.assert_allclose([v for _, v in scalars(acc, "val/AP")], aps, rtol=1e-6, atol=1e-7)
    assert [s for s, _ in scalars(acc, "train/loss")] == list(range(1, 7))
    assert len([t for t in acc.Tags()["images"] if t.startswith("val/detections/")]) == 2

    # rotation (keep 1) leaves only the last epoch checkpoint, and the best one
    best_epoch = 1 + int(np.argmax(aps))         # argmax: the first of equal APs is kept
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".ckpt")] == ["tiny_best.ckpt", "tiny_epoch0003.ckpt"]
    best = read_checkpoint(os.path.join(out, "tiny_best.ckpt"))
    assert best["epoch"] == best_epoch
    assert float(best["best_AP"]) == pytest.approx(max(aps), abs=1e-7)
    assert summary["best_AP"] == pytest.approx(max(aps), abs=1e-7)
    # its weights are those of the best epoch: the same as the last epoch's file exactly when that is it
    last = read_checkpoint(os.path.join(out, "tiny_epoch0003.ckpt"))
    weights = [k for k in best if hasattr(best[k], "asnumpy") and k != "best_AP" and k in last
               and best[k].asnumpy().size > 1]
    assert len(weights) > 10
    same = all(np.array_equal(best[k].asnumpy(), last[k].asnumpy()) for k in weights)
    assert same == (best_epoch == 3)


def test_training_log_without_matplotlib_skips_only_the_png(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    progress = TrainProgress(str(tmp_path), total_steps=1, log_every=1, batch_size=1, bar=False, tensorboard=True)
    progress.update(1, {"loss": 1.0}, lr=0.1)
    progress.close()
    assert os.path.isfile(tmp_path / "train_log.csv") and not os.path.exists(tmp_path / "train_curves.png")
    assert scalars(accumulate(tmp_path), "train/loss") == [(1, 1.0)]
