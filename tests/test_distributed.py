"""Data-parallel training on CPU with MindSpore's msrun: the launcher script, replica
consistency, equivalence with one process on the concatenated batch, and failure reporting.

msrun costs ~15-20 s per launch here (workers wait for the scheduler), so the module makes
three launches and checks several things on each. Run as a script (`equivalence-worker OUT`), this
file is also the msrun worker of the equivalence test.
"""
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.training.optimizer import build_sgd
from src.training.train_step import TrainStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
SCRIPT = os.path.join(ROOT, "scripts", "run_distributed_train_gpu.sh")
VENV_BIN = os.path.dirname(sys.executable)

# ---------------------------------------------------------------- the equivalence model

STEPS, FULL_BATCH, CLIP, LR = 3, 8, 0.05, 0.1


class NoNormNet(nn.Cell):
    """No BatchNorm: data parallel is then exactly the full-batch computation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, has_bias=True)
        self.relu = nn.ReLU()
        self.fc = nn.Dense(4 * 6 * 6, 2)

    def construct(self, x):
        return self.fc(self.relu(self.conv(x)).reshape(x.shape[0], -1))


class MeanSquaredLoss(nn.Cell):
    """A per-sample mean: the mean over ranks of per-rank means is the full-batch mean."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, y):
        loss = ((self.net(x) - y) ** 2).mean()
        return loss, loss


def equivalence_batches():
    rng = np.random.default_rng(7)
    return [(rng.normal(size=(FULL_BATCH, 3, 6, 6)).astype(np.float32),
             rng.normal(size=(FULL_BATCH, 2)).astype(np.float32) * 3) for _ in range(STEPS)]


def train_equivalence_model(rank=0, group_size=1):
    """The same seed, optimizer and clip on every rank; rank r takes its slice of each batch."""
    ms.set_seed(3)
    net = NoNormNet()
    opt = build_sgd(net.trainable_params(), np.full(STEPS, LR, np.float32), 0.9, 1e-3)
    step = TrainStep(MeanSquaredLoss(net), opt, clip_grad_norm=CLIP)
    step.set_train(True)
    per_rank = FULL_BATCH // group_size
    for x, y in equivalence_batches():
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        step(Tensor(x[sl]), Tensor(y[sl]))
    return {p.name: p.asnumpy() for p in net.trainable_params()}


def _worker(out_dir):
    from src.training.distributed import init_distributed

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    info = init_distributed()
    weights = train_equivalence_model(info.rank, info.group_size)
    np.savez(os.path.join(out_dir, f"rank{info.rank}.npz"), **weights)


# ---------------------------------------------------------------- helpers

def free_port():
    for _ in range(50):
        port = random.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def env(**extra):
    e = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1", DEVICE_TARGET="CPU")
    e["PATH"] = VENV_BIN + os.pathsep + e.get("PATH", "")
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def clean(text):
    return "\n".join(line for line in text.splitlines() if not line.startswith(("[WARNING]", "[INFO]")))


@pytest.fixture(scope="module")
def data_dir(synthetic_16):
    return synthetic_16


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def script_run(data_dir, tmp_path_factory):
    """scripts/run_distributed_train_gpu.sh, 2 CPU workers, tiny M2Det, 1 epoch = 2 steps."""
    out = str(tmp_path_factory.mktemp("dist") / "run")
    cmd = ["bash", SCRIPT, "--master_port", str(free_port()), "2", "0", "none", data_dir, TINY,
           "--epochs", "1", "--output_dir", out]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = os.path.join(out, "train_tiny.pid")
    pid_seen = None
    deadline = time.time() + 30
    while pid_seen is None and time.time() < deadline and proc.poll() is None:
        if os.path.exists(pid_file):
            pid_seen = open(pid_file).read().strip()
        time.sleep(0.05)
    stdout, _ = proc.communicate(timeout=400)
    return {"out": out, "code": proc.returncode, "log": stdout, "pid": pid_seen, "script_pid": proc.pid}


def test_script_runs_two_cpu_workers_with_rank0_outputs(script_run):
    out, log = script_run["out"], script_run["log"]
    assert script_run["code"] == 0, clean(log)[-3000:]
    assert script_run["pid"] == str(script_run["script_pid"])         # pid file = the script's pid
    assert not os.path.exists(os.path.join(out, "train_tiny.pid"))     # removed at the end
    logs = os.path.join(out, "logs")
    assert {"worker_0.log", "worker_1.log", "scheduler.log", "msrun.log"} <= set(os.listdir(logs))
    # checkpoints and the training log come from rank 0 only: one of each
    assert sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) == ["tiny_epoch0001.ckpt"]
    with open(os.path.join(out, "train_log.csv")) as f:
        rows = f.read().strip().splitlines()
    assert len(rows) == 1 + 2                                           # 16 images / (4 x 2 ranks) = 2 steps
    rank1 = open(os.path.join(logs, "worker_1.log")).read()
    assert "rank 1 of 2" in rank1 and "epoch 1 step" not in rank1


def test_both_ranks_hold_identical_weights(script_run):
    digests = {}
    for rank in (0, 1):
        text = open(os.path.join(script_run["out"], "logs", f"worker_{rank}.log")).read()
        match = re.search(r"rank %d: trainable weights digest (\w+) after step 2" % rank, text)
        assert match, clean(text)[-2000:]
        digests[rank] = match.group(1)
    assert digests[0] == digests[1]


def test_two_workers_equal_one_process_on_the_concatenated_batch(tmp_path):
    out = tmp_path / "eq"
    out.mkdir()
    cmd = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
           f"--log_dir={tmp_path / 'logs'}", "--join=True", os.path.abspath(__file__), "equivalence-worker", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    logs = "".join(open(p).read() for p in (tmp_path / "logs").glob("worker_*.log"))
    assert proc.returncode == 0, clean(proc.stdout + proc.stderr + logs)[-3000:]
    rank0, rank1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    try:
        single = train_equivalence_model()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(3)
    initial = {p.name: p.asnumpy() for p in NoNormNet().trainable_params()}
    for name, value in single.items():
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)      # replicas identical
        np.testing.assert_allclose(rank0[name], value, rtol=0, atol=1e-5, err_msg=name)
        assert not np.allclose(value, initial[name])                               # it did train


def test_clip_is_active_in_the_equivalence_run():
    """The equivalence above covers clip-after-all-reduce only if the clip actually bites."""
    ms.set_seed(3)
    net = NoNormNet()
    x, y = equivalence_batches()[0]
    grad_fn = ms.value_and_grad(MeanSquaredLoss(net), None, net.trainable_params(), has_aux=True)
    _, grads = grad_fn(Tensor(x), Tensor(y))
    norm = float(np.sqrt(sum(float((g.asnumpy() ** 2).sum()) for g in grads)))
    assert norm > 2 * CLIP


def test_a_crashing_worker_fails_the_script_and_names_its_log(data_dir, tmp_path):
    wrapper = tmp_path / "bin" / "python"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n"
                       'if [ "$MS_ROLE" = MS_WORKER ] && [ "$RANK_ID" = 1 ]; then\n'
                       '  echo "simulated crash of rank 1" >&2; exit 3\n'
                       "fi\n"
                       f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    out = str(tmp_path / "crash")
    cmd = ["bash", SCRIPT, "--master_port", str(free_port()), "2", "0", "none", data_dir, TINY,
           "--epochs", "1", "--output_dir", out]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(PYTHON=str(wrapper)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    log_path = os.path.join(out, "logs", "worker_1.log")
    assert f"rank 1 failed first (exit code 3); its log: {log_path}" in proc.stderr, clean(proc.stderr)[-2000:]
    assert "simulated crash of rank 1" in proc.stderr                  # the log's tail is shown
    assert time.time() - start < 120                                   # no wait for msrun's timeouts


def test_usage_errors_are_reported_before_launching(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "2", "0"], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "RANK_SIZE DEVICE_START BACKBONE_CKPT DATASET_PATH" in proc.stderr
    proc = subprocess.run(["bash", SCRIPT, "2", "0", "none", str(tmp_path / "nowhere")], cwd=ROOT, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "dataset path not found" in proc.stderr
    proc = subprocess.run(["bash", SCRIPT, "--nnodes", "2", "2", "0", "none", str(tmp_path)], cwd=ROOT,
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "--node_rank" in proc.stderr


def test_linear_lr_scaling_switch():
    from src.config import load_config
    from src.training.trainer import learning_rates

    cfg = load_config(TINY, ["train.scale_lr=true", "train.base_batch_size=16"])
    rates, scale = learning_rates(cfg.train, 3, 4 * 8)
    assert scale == 2.0
    np.testing.assert_allclose(rates, 0.02)
    assert learning_rates(load_config(TINY).train, 3, 64)[1] == 1.0          # off by default


def test_graceful_stop_turns_a_signal_into_a_request():
    from src.training.distributed import GracefulStop

    stop = GracefulStop().install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested() and stop.exit_code == 143
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) != stop._handle   # noqa: SLF001


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "equivalence-worker":
    _worker(sys.argv[2])
