"""The issue-8 benchmarks in their short mode, so that they cannot rot (no timing assertions).

    bench/bench_vs_torch.py --short           one repetition, tiny config: the table has its rows and
                                               every figure is a finite positive number (the exported
                                               MINDIR's too, with the checkpoint path's outputs)
    bench/bench_latency_memory.py --worker    one inference worker: the latency split and peak RSS
    bench/harness.py                          the PyTorch twin really is the same network (same
                                               outputs), and alternate() runs every case

Full mode (docs/BENCHMARKS.md): `python bench/bench_vs_torch.py` and
`python bench/bench_latency_memory.py`. Both tests here run in subprocesses because the CPU
thread count of MindSpore can be set once per process.
"""
import json
import math
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from bench import harness
from src.builder import build_priors
from src.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def run(script, *args):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_vs_torch_short_mode(tmp_path):
    out = tmp_path / "bench.json"
    # tiny's convolutions are narrow: lower the Winograd threshold so that its variants really use it
    stdout = run("bench_vs_torch.py", "--short", "--configs", TINY, "--winograd_min_channels", "8",
                 "--json", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["config"], r["case"], r["batch"]) for r in rows] == [("tiny", "forward", 1), ("tiny", "train step", 2),
                                                                     ("tiny", "train step (Winograd)", 2)]
    for r in rows:
        for key in ("mindspore_ms", "pytorch_ms", "ratio", "gflop", "mindspore_gflops", "pytorch_gflops",
                    "fraction_of_peak", "conv_peak_gflops", "mindspore_first_ms"):
            assert positive(r[key]), (key, r)
    assert positive(rows[0]["mindspore_folded_ms"]) and positive(rows[0]["ratio_folded"])
    assert positive(rows[0]["mindspore_winograd_ms"]) and positive(rows[0]["ratio_winograd"])
    # the exported MINDIR (Winograd, as export.py writes it for CPU) computes what the checkpoint path does
    assert positive(rows[0]["mindspore_mindir_ms"]) and positive(rows[0]["ratio_mindir"])
    assert rows[0]["mindir_winograd"] is True and rows[0]["mindir_max_abs_diff"] < 1e-3
    assert positive(result["conv_table_best_gflops"])
    assert result["settings"]["threads"] == 2 and result["settings"]["omp_wait_policy"] == "PASSIVE"
    table = stdout[stdout.index("| config | case |"):]
    assert "| tiny | forward | 1 |" in table and "| tiny | train step | 2 |" in table
    assert "| tiny | train step (Winograd) | 2 |" in table


def test_latency_memory_worker():
    stdout = run("bench_latency_memory.py", "--worker", "infer", "--configs", TINY, "--reps", "1")
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    for key in ("preprocess_ms", "network_ms", "postprocess_ms", "peak_rss_mib", "import_rss_mib"):
        assert positive(result[key]), (key, result)
    assert result["peak_rss_mib"] >= result["import_rss_mib"]
    assert result["total_ms"] == result["preprocess_ms"] + result["network_ms"] + result["postprocess_ms"]


def test_latency_mode_runs_inference_workers_only(tmp_path):
    out = tmp_path / "latency.json"
    stdout = run("bench_latency_memory.py", "--latency", "--configs", TINY, "--reps", "1", "--json", str(out))
    result = json.loads(out.read_text())
    assert [r["worker"] for r in result["latency"]] == ["infer"]
    assert list(result["memory"][0]) == ["config", "infer"]          # no training or PyTorch worker ran
    assert "| tiny | 128 |" in stdout and "batch 1, 2 threads, median of 1" in stdout


def test_latency_memory_train_worker():
    """The train worker's compile / first-step / steady figures exist and are ordered sensibly."""
    stdout = run("bench_latency_memory.py", "--worker", "train", "--configs", TINY, "--reps", "1")
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    for key in ("step_ms", "first_call_s", "compile_s", "first_run_s", "built_rss_mib", "compiled_rss_mib",
                "first_step_rss_mib", "steady_rss_mib", "peak_rss_mib"):
        assert positive(result[key]), (key, result)
    assert result["first_call_s"] == result["compile_s"] + result["first_run_s"]
    assert result["compile_rss_mib"] == result["compiled_rss_mib"] - result["built_rss_mib"]
    assert result["import_rss_mib"] <= result["built_rss_mib"] <= result["peak_rss_mib"]
    assert result["steady_rss_mib"] <= result["peak_rss_mib"] + 1


@pytest.mark.parametrize("overrides", [[], ["model.backbone.batch_norm=true"]])
def test_torch_twin_is_the_same_network(overrides):
    """The benchmark is only meaningful if both frameworks run the same function: the weights go
    through the converter's name map, and the outputs must agree (tiny config: per-level anchor
    counts; and with the BatchNorm VGG of configs/m2det_lite.yaml)."""
    import torch

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        cfg = load_config(TINY, overrides)
        detector, reference = harness.build_pair(cfg, seed=3)
        x = np.random.default_rng(0).uniform(-120, 120, (2, 3, 128, 128)).astype(np.float32)
        ours = [o.asnumpy() for o in detector(ms.Tensor(x))]
    finally:
        ms.set_context(mode=previous)
    with torch.no_grad():
        theirs = [o.numpy() for o in reference(torch.from_numpy(x))]
    assert len(build_priors(cfg).num_anchors()) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) <= 1e-4 * max(1.0, float(np.abs(b).max()))


def test_torch_loss_matches_the_project_loss():
    """The PyTorch train step optimises the same MultiBox loss as the MindSpore one."""
    import torch

    from heads.losses.multibox_loss import multibox_loss

    rng = np.random.default_rng(0)
    cfg = load_config(TINY)
    loc_t, conf_t = harness.synthetic_targets(cfg, 2, seed=1)
    conf_t[1] = 0                                         # an image without objects
    loc = rng.normal(0, 1, loc_t.shape).astype(np.float32)
    conf = rng.normal(0, 2, loc_t.shape[:2] + (cfg.model.num_classes + 1,)).astype(np.float32)
    expected = multibox_loss(ms.Tensor(loc), ms.Tensor(conf), ms.Tensor(loc_t), ms.Tensor(conf_t), 3, 8)
    got = harness.torch_multibox_loss(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(loc_t),
                                      torch.from_numpy(conf_t).long(), 3, 8)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(float(g), float(e.asnumpy()), rtol=1e-5)


def test_alternate_rotates_and_times_every_case():
    calls = []
    times = harness.alternate([("a", lambda: calls.append("a")), ("b", lambda: calls.append("b"))], reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert harness.markdown_table(["x", "y"], [[1, 2]]) == "| x | y |\n|---|---|\n| 1 | 2 |"


def test_bench_heads_reads_its_logs(tmp_path):
    """bench/bench_heads.py: the compile window is left out of the step time, rows format."""
    from bench import bench_heads

    log = tmp_path / "train_log.csv"
    log.write_text("epoch,step,lr,loss,images_per_s,step_time_s\n1,50,0.1,9,2,4.0\n1,100,0.1,8,20,0.5\n"
                   "1,150,0.1,7,20,0.7\n1,200,0.1,6,20,0.6\n")
    assert bench_heads._step_time(str(log)) == pytest.approx(0.6)
    row = {"head": "gfl", "params": 1_234_567, "step_s": 0.6, "train_wall_s": 300.0, "network_ms_per_image": 41.2,
           "postprocess_ms_per_image": 1.25, "AP": 0.4321, "AP50": 0.7, "AP75": 0.45}
    assert bench_heads.table([row], "8").splitlines()[2] == \
        "| gfl | 1.23M | 0.60 s | 5.0 min | 41 | 1.2 | 0.432 | 0.700 | 0.450 |"
    for name, config in bench_heads.HEAD_CONFIGS.items():
        assert os.path.exists(os.path.join(ROOT, config)), name
