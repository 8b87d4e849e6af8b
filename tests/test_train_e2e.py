"""End to end on the synthetic dataset with a tiny M2Det: train.py -> checkpoints/logs ->
resume -> eval.py -> metrics.json. This is the suite's one slow test module (~1-2 min)."""
import csv
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.builder import build_detector, build_priors, train_data_settings
from src.config import load_config
from src.data.pipeline import create_train_dataset
from src.data.synthetic import make_synthetic_coco
from src.training.checkpoint import read_checkpoint
from src.training.optimizer import build_sgd
from src.training.train_step import DetectorWithLoss, TrainStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(str(out), num_train=16, num_val=6, seed=0)
    return str(out)


def run_script(script, *args, cwd=ROOT):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def train_args(data_dir, out, *extra):
    return ["--config", TINY, "--data_dir", data_dir, "--output_dir", out, "--device_target", "CPU", *extra]


def test_a_few_steps_lower_the_loss(data_dir):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    cfg = load_config(TINY, [f"data.root={data_dir}", "data.augment=false"])
    detector = build_detector(cfg)
    dataset = create_train_dataset(train_data_settings(cfg), build_priors(cfg), batch_size=4, num_workers=1)
    images, loc_t, conf_t = next(dataset.create_tuple_iterator(num_epochs=1))
    optimizer = build_sgd(detector.trainable_params(), np.full(50, 0.02, np.float32), 0.9, 0.0)
    step = TrainStep(DetectorWithLoss(detector), optimizer, clip_grad_norm=4.0)
    step.set_train(True)
    losses = [float(step(images, loc_t, conf_t)[0].asnumpy()) for _ in range(16)]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0], losses


def test_train_resume_and_evaluate(data_dir, tmp_path):
    out = str(tmp_path / "run")
    code, log = run_script("train.py", *train_args(data_dir, out, "--epochs", "1"))
    assert code == 0, log
    first = os.path.join(out, "tiny_epoch0001.ckpt")
    assert os.path.isfile(first)
    assert os.path.isfile(os.path.join(out, "train_log.csv"))
    assert os.path.isfile(os.path.join(out, "train_curves.png"))

    # resume to 2 epochs: continues at epoch 2 from the saved state
    code, log = run_script("train.py", *train_args(data_dir, out, "--epochs", "2", "--resume", "auto"))
    assert code == 0, log
    assert "resuming from" in log and "at epoch 1" in log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["steps"] == 2 * 4          # 16 images / batch 4 = 4 steps per epoch
    with open(os.path.join(out, "train_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1] * 4 + [2] * 4
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    second = read_checkpoint(os.path.join(out, "tiny_epoch0002.ckpt"))
    assert int(second["global_step"].asnumpy().reshape(-1)[0]) == 8   # the optimizer's step (lr position) was restored

    code, log = run_script("eval.py", "--config", TINY, "--checkpoint", os.path.join(out, "tiny_epoch0002.ckpt"),
                           "--data_dir", data_dir, "--output_dir", str(tmp_path / "eval"), "--draw", "2")
    assert code == 0, log
    with open(tmp_path / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert -1.0 <= metrics[key] <= 1.0
    assert os.path.isfile(metrics["results_json"])
    assert metrics["num_images"] == 6
    assert len(os.listdir(tmp_path / "eval" / "pictures")) == 2


def test_non_finite_loss_stops_with_the_step(data_dir, tmp_path):
    out = str(tmp_path / "nan")
    code, log = run_script("train.py", *train_args(data_dir, out, "--epochs", "2", "--set", "train.lr=1.0e+30",
                                                   "train.clip_grad_norm=0", "train.save_every=100"))
    assert code == 1, log
    assert "non-finite loss at epoch" in log and "step" in log
    assert not [f for f in os.listdir(out) if f.endswith(".ckpt")]


def test_kernel_launch_group_trains_the_same_weights(data_dir, tmp_path):
    # train.kernel_launch_group: MindSpore launches the operators from 2 threads in 8 groups;
    # one epoch of 4 steps ends in the same weights, BN statistics and momentum, bit for bit
    runs = {}
    for name, extra in (("one_by_one", []), ("grouped", ["--set", "train.kernel_launch_group=[2, 8]"])):
        out = str(tmp_path / name)
        code, log = run_script("train.py", *train_args(data_dir, out, "--epochs", "1", *extra))
        assert code == 0, log[-3000:]
        runs[name] = read_checkpoint(os.path.join(out, "tiny_epoch0001.ckpt"))
    tensors = [k for k, v in runs["one_by_one"].items() if hasattr(v, "asnumpy")]
    assert len(tensors) > 50 and set(tensors) <= set(runs["grouped"])
    for key in tensors:
        np.testing.assert_array_equal(runs["grouped"][key].asnumpy(), runs["one_by_one"][key].asnumpy(), err_msg=key)


def test_bad_config_and_missing_data_are_clear(data_dir, tmp_path):
    code, log = run_script("train.py", *train_args(data_dir, str(tmp_path / "x"), "--set", "train.nope=1"))
    assert code == 2 and "unknown key 'train.nope'" in log
    code, log = run_script("train.py", *train_args(data_dir, str(tmp_path / "x"), "--set",
                                                   "train.kernel_launch_group=[3, 8]"))
    assert code == 2 and "groups a multiple of threads, got [3, 8]" in log and "Traceback" not in log
    code, log = run_script("train.py", *train_args(str(tmp_path / "missing"), str(tmp_path / "y")))
    assert code == 1 and "missing" in log and "Traceback" not in log
