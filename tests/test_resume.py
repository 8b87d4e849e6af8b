"""Exact resume with train.py on CPU (tiny M2Det, 16 images, batch 4: 4 steps per epoch, 3 epochs,
a checkpoint every 2 steps):

    reference: 12 steps uninterrupted
    run B:     SIGKILL once the step-6 checkpoint exists
               -> --resume auto (continues from the newest checkpoint), SIGTERM during its
                  setup: it makes one step, saves a (mid-epoch) checkpoint and exits 143
               -> that checkpoint is truncated; --resume auto skips it, falls back to the
                  previous one and finishes
    final weights, BN statistics, momentum and step counter of B == reference, bit for bit
"""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from src.training.checkpoint import (CheckpointError, CheckpointManager, read_checkpoint, save_checkpoint,
                                     select_resume_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def command(data_dir, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY, "--data_dir", data_dir,
            "--output_dir", out, "--device_target", "CPU", "--epochs", "3",
            "--set", "train.save_every_steps=2", "train.keep_checkpoints=5", *extra]


def start(cmd, log_path):
    log = open(log_path, "w")
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def run(cmd, log_path):
    proc, log = start(cmd, log_path)
    proc.wait(timeout=600)
    log.close()
    return proc.returncode, open(log_path).read()


def wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.03)
    return False


def csv_steps(out):
    path = os.path.join(out, "train_log.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]


def assert_same_state(a_path, b_path):
    a, b = read_checkpoint(a_path), read_checkpoint(b_path)
    tensors = [k for k in a if hasattr(a[k], "asnumpy") and k not in ("learning_rate", "momentum")]
    assert set(tensors) <= set(b)
    assert any(k.startswith("accum.") for k in tensors) and "global_step" in tensors
    for key in tensors:
        np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy(), err_msg=key)


@pytest.fixture(scope="module")
def data_dir(synthetic_16):
    return synthetic_16


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    ref, out = str(base / "reference"), str(base / "b")
    info = {"ref": ref, "out": out}
    info["ref_code"], info["ref_log"] = run(command(data_dir, ref), str(base / "ref.log"))

    # 1. SIGKILL mid-epoch 2, right after the step-6 checkpoint
    proc, log = start(command(data_dir, out), str(base / "b1.log"))
    marker = os.path.join(out, "tiny_epoch0002_step000002.ckpt")
    info["kill_marker_seen"] = wait_for(lambda: os.path.exists(marker), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    info["after_kill"] = CheckpointManager(out, "tiny").existing()
    info["kill_steps"] = csv_steps(out)

    # 2. resume; SIGTERM while it is still setting up: it stops after its first step
    info["resumed_from"] = int(read_checkpoint(info["after_kill"][-1])["step"].asnumpy())
    proc, log = start(command(data_dir, out, "--resume", "auto"), str(base / "b2.log"))
    info["term_sent"] = wait_for(lambda: "resuming from" in open(base / "b2.log").read(), proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    log.close()
    info["term_code"], info["term_log"] = proc.returncode, open(base / "b2.log").read()
    info["after_term"] = CheckpointManager(out, "tiny").existing()
    info["term_steps"] = csv_steps(out)

    # 3. truncate the newest checkpoint; --resume auto falls back to the one before and finishes
    newest = info["after_term"][-1]
    shutil.copy(newest, str(base / "sigterm_copy.ckpt"))
    info["sigterm_copy"] = str(base / "sigterm_copy.ckpt")
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    info["final_code"], info["final_log"] = run(command(data_dir, out, "--resume", "auto"), str(base / "b3.log"))
    info["final_steps"] = csv_steps(out)
    return info


def test_reference_run(runs):
    assert runs["ref_code"] == 0, runs["ref_log"][-3000:]
    assert csv_steps(runs["ref"]) == list(range(1, 13))


def test_two_runs_with_the_same_seed_are_bit_identical(runs):
    # the killed run's epoch-1 checkpoint came from its own process: 4 steps each, same seed
    name = "tiny_epoch0001.ckpt"
    assert_same_state(os.path.join(runs["ref"], name), os.path.join(runs["out"], name))


def test_sigkill_mid_epoch_leaves_the_periodic_checkpoints(runs):
    assert runs["kill_marker_seen"]
    names = [os.path.basename(p) for p in runs["after_kill"]]
    assert names[:2] == ["tiny_epoch0001.ckpt", "tiny_epoch0002_step000002.ckpt"]   # step 2's was superseded
    assert max(runs["kill_steps"]) < 12


def test_sigterm_saves_the_current_step_and_resume_continued_from_the_newest(runs):
    log = runs["term_log"]
    assert f"resuming from {runs['after_kill'][-1]}" in log
    assert runs["term_code"] == 143, log[-3000:]
    assert "training interrupted: stopped by signal 15 after step" in log
    saved = runs["after_term"][-1]
    assert f"saved {saved}" in log
    params = read_checkpoint(runs["sigterm_copy"])
    assert int(params["step"].asnumpy()) == max(runs["term_steps"]) == runs["resumed_from"] + 1
    if runs["resumed_from"] == 6:       # the usual case: 3 batches into epoch 2, a mid-epoch save
        assert os.path.basename(saved) == "tiny_epoch0002_step000003.ckpt"
        assert int(params["epoch"].asnumpy()) == 1 and int(params["epoch_step"].asnumpy()) == 3


def test_corrupt_newest_checkpoint_falls_back_and_the_result_is_exact(runs):
    log = runs["final_log"]
    assert runs["final_code"] == 0, log[-3000:]
    bad, previous = runs["after_term"][-1], runs["after_term"][-2]
    assert f"--resume auto: skipping cannot read checkpoint {bad}" in log
    assert f"resuming from {previous}" in log
    assert runs["final_steps"] == list(range(1, 13))       # rows past the resume point were replaced
    name = "tiny_epoch0003.ckpt"
    assert_same_state(os.path.join(runs["ref"], name), os.path.join(runs["out"], name))


def test_explicit_damaged_checkpoint_is_a_clear_error(tmp_path):
    from mindspore import nn

    net = nn.Dense(30, 30)
    manager = CheckpointManager(str(tmp_path), "m")
    good = save_checkpoint(manager.path_for(1), net, epoch=1, step=10)
    flipped = manager.path_for(2)
    data = bytearray(open(good, "rb").read())
    data[len(data) // 2] ^= 0xFF                       # one bad byte: the CRC catches it
    open(flipped, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*epoch0002.ckpt .*CRC"):
        select_resume_checkpoint(flipped, manager)
    assert select_resume_checkpoint("auto", manager)[0] == good
    os.remove(good)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        select_resume_checkpoint("auto", manager)
    os.remove(flipped)
    assert select_resume_checkpoint("auto", manager) is None           # nothing there: start fresh
    # cut at a record boundary, which the CRC cannot see: the metadata (written last) is missing
    ms.save_checkpoint(net, manager.path_for(3))
    with pytest.raises(CheckpointError, match="no training metadata"):
        select_resume_checkpoint(manager.path_for(3), manager)
