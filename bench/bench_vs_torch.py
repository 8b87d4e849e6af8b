"""MindSpore vs PyTorch on the same M2Det with the same weights, in one process (issue 8).

    .venv/bin/python bench/bench_vs_torch.py                  # full mode: 320 and 512 VGG (~30 min on 2 cores)
    .venv/bin/python bench/bench_vs_torch.py --short          # CI mode: lite config, one repetition
    .venv/bin/python bench/bench_vs_torch.py --configs configs/m2det320_vgg.yaml --batches 1 --reps 5

Cases, each alternating MindSpore (GRAPH mode) and PyTorch (eager, no_grad) round-robin:

    forward, batch 1 and 8   our Detector in inference mode (softmax included), the same network
                             with BatchNorm folded into the convolutions (src/export/fold_bn.py,
                             the inference network), that folded network with its wide 3x3
                             convolutions computed by Winograd (m2det/winograd.py; F(4x4, 3x3) /
                             F(2x2, 3x3) / direct by map size with test.winograd_tile 4, the
                             default; --winograd_f23 adds F(2x2, 3x3) everywhere, as before),
                             the MINDIR that export.py writes for CPU (src/export/exporter.py,
                             written to a temporary folder, loaded with mindspore.load +
                             nn.GraphCell as serve.py --mindir does; issue 18 item 4; with
                             --mindir_direct also the MINDIR with direct convolutions,
                             test.winograd=false, as export.py wrote it before),
                             and tests/reference/torch_m2det.py
    train step, batch 2      forward + MultiBox loss + backward + global-norm clip + SGD
                             (momentum, weight decay): the project's TrainStep with direct
                             convolutions (train.winograd=false) against the same step written in
                             PyTorch (bench/harness.py)
    train step (Winograd)    the same with Winograd convolutions, as train.winograd (the default)
    train step (direct)      three workers alternating: the plain MindSpore step, the same with the
                             3x3 convolutions of <= --direct_conv_max_channels channels by our
                             direct kernels (m2det/direct_conv.py, train.direct_conv_max_channels)
                             and the unpadded 1x1 / kernel-sized ones of <= --matmul_conv_max_channels
                             as MatMuls (m2det/matmul_conv.py, train.matmul_conv_max_channels),
                             plus the config's normalisation + ReLU, max-pool and global-norm
                             kernels (train.group_norm_relu_kernel, train.batch_norm_relu_kernel,
                             train.max_pool_kernel, train.grad_norm_kernel; on for m2det_lite)
                             and its grouped operator launch (train.kernel_launch_group),
                             and PyTorch; also the workers' process CPU time per step

In full mode each config's forward cases run in a fresh process (MindSpore keeps the memory pool
it grew for the largest case), MindSpore and PyTorch alternating inside it. A train step runs in
two worker processes, one per framework, that the parent alternates step by step: MindSpore's
training graph holds ~17 GB at 320, and in the same process PyTorch's step ran ~1.5x slower than
alone, which flattered MindSpore (0.74 instead of 0.91 on 2026-11-21, docs/BENCHMARKS.md).

Reported: medians of `--reps` timed calls after one untimed call (MindSpore's compiles), the
MindSpore/PyTorch ratio, the GFLOPs of the case (2 x multiply-adds of the convolutions and
matmuls, counted by src.summary.count_flops; a train step is counted as 3 x forward), the
achieved GFLOP/s (of the fastest MindSpore variant; for Winograd these are "effective": the direct
convolutions' FLOPs over the time, since the algorithm does fewer), and its fraction of the
ceiling: the best GFLOP/s MindSpore reaches on one direct 3x3 convolution (1 x 512 x 40 x 40,
512 -> 512, among its fastest shapes here), the maximum over the runs of this command (one at
the start of every worker process, before any model is built: timed between model calls the
same convolution loses up to 40% to cache and allocator effects). A table
of a few single-convolution shapes in both frameworks is printed first (`--no_conv_peak` skips it).

Threads: both frameworks get `--threads` (default 2). OMP_WAIT_POLICY defaults to PASSIVE for
PyTorch's OpenMP pool: with the default spinning barriers a loaded machine makes PyTorch 2-3x
slower at 2 threads (one descheduled thread stalls every parallel region), which would flatter
MindSpore. `--omp-wait-policy active` gives OpenMP's own default (best on an idle machine).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FULL_CONFIGS = ["configs/m2det320_vgg.yaml", "configs/m2det512_vgg.yaml"]
SHORT_CONFIGS = ["configs/m2det_lite.yaml"]
CONV_SHAPES_FULL = ((1, 256, 40, 40), (1, 512, 40, 40), (1, 256, 80, 80), (8, 256, 20, 20))
CONV_SHAPES_SHORT = ((1, 64, 32, 32),)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="CI mode: lite config, forward at batch 1, train step at batch 2, one repetition")
    parser.add_argument("--configs", nargs="+", help=f"config files (full: {' '.join(FULL_CONFIGS)})")
    parser.add_argument("--batches", nargs="+", type=int, help="forward batch sizes (full: 1 8)")
    parser.add_argument("--train_batch", type=int, default=2, help="train-step batch size")
    parser.add_argument("--cases", nargs="+", choices=["forward", "train", "train_winograd", "train_direct"],
                        default=["forward", "train", "train_winograd"])
    parser.add_argument("--reps", type=int, help="timed repetitions per case (full: 3, short: 1)")
    parser.add_argument("--train_block", type=int, default=1,
                        help="train steps each worker runs back to back per turn (1: one step per turn); "
                             "each step is timed on its own and --reps turns are taken per worker")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each framework")
    parser.add_argument("--omp_wait_policy", choices=["passive", "active", "keep"], default="passive",
                        help="PyTorch's OpenMP barrier policy (see above); keep = leave the environment alone")
    parser.add_argument("--no_fold", action="store_true", help="skip the BN-folded inference networks")
    parser.add_argument("--no_mindir", action="store_true", help="skip the exported-MINDIR forward variant")
    parser.add_argument("--mindir_direct", action="store_true",
                        help="also time a MINDIR exported with direct convolutions (test.winograd=false)")
    parser.add_argument("--no_winograd", action="store_true",
                        help="skip the Winograd forward variant (it needs `bash scripts/make.sh`)")
    parser.add_argument("--winograd_f23", action="store_true",
                        help="also time the folded network with F(2x2, 3x3) everywhere (test.winograd_tile=2)")
    parser.add_argument("--winograd_min_channels", type=int, default=128,
                        help="Winograd for 3x3 convolutions with at least this many input and output channels")
    parser.add_argument("--direct_conv_max_channels", type=int, default=192,
                        help="train_direct: our direct kernels for 3x3 convolutions with at most this many channels")
    parser.add_argument("--direct_conv_threads", type=int, default=0,
                        help="train_direct: OpenMP threads per direct-kernel call (train.direct_conv_threads; 0 = one per core)")
    parser.add_argument("--matmul_conv_max_channels", type=int, default=192,
                        help="train_direct: also unpadded 1x1 / kernel-sized convolutions with at most this many "
                             "channels as MatMuls (m2det/matmul_conv.py); 0 = not")
    parser.add_argument("--no_conv_peak", action="store_true", help="skip the table of single 3x3 convolutions")
    parser.add_argument("--json", help="also write the rows and the settings to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for every config")
    args = parser.parse_args(argv)
    args.configs = args.configs or (SHORT_CONFIGS if args.short else FULL_CONFIGS)
    args.batches = args.batches or ([1] if args.short else [1, 8])
    args.reps = args.reps or (1 if args.short else 3)
    return args


def exported_mindir(detector, cfg, folder: str, batch: int, winograd: bool, min_channels: int):
    """What export.py writes for `batch` (BatchNorm folded, Winograd if `winograd`), loaded as
    serve.py --mindir loads it."""
    import mindspore as ms
    import mindspore.nn as nn

    from src.export import export_detector

    path = os.path.join(folder, f"{cfg.config_name}_b{batch}.mindir")
    export_detector(detector, cfg, path, "MINDIR", batch_size=batch, verify=False, use_winograd=winograd,
                    winograd_min_channels=min_channels)
    return nn.GraphCell(ms.load(path))


def forward_rows(cfg, batches, reps, fold: bool, winograd: bool = True, min_channels: int = 128,
                 mindir: bool = True, mindir_direct: bool = False, winograd_f23: bool = False) -> list[dict]:
    import tempfile

    import mindspore as ms
    import numpy as np
    import torch

    from bench import harness as H
    from src.builder import winograd_tile
    from src.summary import count_flops

    detector, reference = H.build_pair(cfg)
    flops, _ = count_flops(detector, cfg.model.input_size)
    networks = [("mindspore", detector)]
    if fold:
        networks.append(("mindspore_folded", H.folded_copy(detector)))
        if winograd and winograd_f23:
            networks.append(("mindspore_winograd_f23", H.winograd_copy(detector, min_channels)))
        if winograd:        # what eval.py / infer.py run (the tiles are chosen per spatial size)
            networks.append(("mindspore_winograd", H.winograd_copy(detector, min_channels, winograd_tile(cfg),
                                                                   (1, 3, cfg.model.input_size,
                                                                    cfg.model.input_size))))
    size = cfg.model.input_size
    rows = []
    folder = tempfile.TemporaryDirectory(prefix="bench_mindir_")
    for batch in batches:
        x = np.random.default_rng(batch).uniform(-120, 120, (batch, 3, size, size)).astype(np.float32)
        xm, xt = ms.Tensor(x), torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                return reference(xt)[1].numpy()

        batch_networks = list(networks)
        if mindir_direct:
            batch_networks.append(("mindspore_mindir_direct",
                                   exported_mindir(detector, cfg, folder.name, batch, False, min_channels)))
        if mindir:      # a MINDIR has a fixed batch size: one file per batch
            batch_networks.append(("mindspore_mindir",
                                   exported_mindir(detector, cfg, folder.name, batch, winograd, min_channels)))
        cases = [(name, (lambda net=net: net(xm)[1].asnumpy())) for name, net in batch_networks]
        cases.append(("pytorch", run_torch))
        first = H.alternate(cases, reps=1, warmup=0)        # compiles; kept as the "first call" time
        times = H.alternate(cases, reps=reps, warmup=0)
        row = {"config": cfg.config_name, "case": "forward", "batch": batch, "reps": reps,
               "gflop": flops * batch / 1e9}
        for name, _ in cases:
            row[f"{name}_ms"] = 1e3 * H.median(times[name])
            row[f"{name}_first_ms"] = 1e3 * first[name][0]
        row["times_ms"] = {name: [round(1e3 * t, 1) for t in v] for name, v in times.items()}
        if mindir:
            row["mindir_winograd"] = bool(winograd)
            # the exported file against the checkpoint path's network (the last in-process variant)
            scores = [net(xm)[1].asnumpy() for net in (networks[-1][1], batch_networks[-1][1])]
            row["mindir_max_abs_diff"] = float(np.abs(scores[1] - scores[0]).max())
        _ratios(row)
        rows.append(row)
        print(_line(row), flush=True)
        del batch_networks, cases
    del networks, detector, reference
    gc.collect()
    folder.cleanup()
    return rows


def _train_step_worker(conn, framework: str, path: str, overrides: list, batch: int, threads: int,
                       winograd: bool, min_channels: int, direct_max: int = 0, matmul_max: int = 0,
                       direct_threads: int = 0) -> None:
    """One framework's train step in its own process: build it, then time one step per request."""
    import mindspore as ms
    import numpy as np

    from bench import harness as H
    from src.config import load_config

    H.set_threads(threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cfg = load_config(path, overrides)
    detector, reference = H.build_pair(cfg, seed=1)       # same weights in both processes
    size = cfg.model.input_size
    images = np.random.default_rng(7).uniform(-120, 120, (batch, 3, size, size)).astype(np.float32)
    loc_t, conf_t = H.synthetic_targets(cfg, batch, seed=7)
    if framework.startswith("mindspore"):
        del reference
        if framework == "mindspore_direct":
            from m2det.direct_conv import set_threads, use_direct_conv
            from m2det.matmul_conv import use_matmul_conv

            use_direct_conv(detector, direct_max)   # as train.direct_conv_max_channels does
            set_threads(direct_threads)             # train.direct_conv_threads
            use_matmul_conv(detector, matmul_max)   # as train.matmul_conv_max_channels does
            from src.device import set_kernel_launch_group
            from src.training.trainer import use_cell_kernels

            use_cell_kernels(detector, cfg.train, "CPU", "O0")     # the config's other kernels, as the trainer
            set_kernel_launch_group(cfg.train.kernel_launch_group)
        if winograd:
            from m2det.winograd import use_winograd

            use_winograd(detector, min_channels, trainable=True)    # as train.winograd=true does
        step = H.mindspore_train_step(detector, cfg, clip_kernel=framework == "mindspore_direct"
                                      and bool(cfg.train.grad_norm_kernel))
        inputs = (ms.Tensor(images), ms.Tensor(loc_t), ms.Tensor(conf_t))
        run_step = lambda: step(*inputs)[0].asnumpy()  # noqa: E731
    else:
        import torch

        del detector
        step = H.TorchTrainStep(reference, cfg)
        inputs = (torch.from_numpy(images), torch.from_numpy(loc_t), torch.from_numpy(conf_t))
        run_step = lambda: step(*inputs).numpy()  # noqa: E731
    gc.collect()
    conn.send("ready")
    while True:
        request = conn.recv()
        if request == "stop":
            break
        steps = []
        for _ in range(request):         # the number of back-to-back steps of this turn
            start, cpu = time.perf_counter(), time.process_time()
            run_step()
            steps.append((time.perf_counter() - start, time.process_time() - cpu))
        conn.send(steps)


class _RemoteStep:
    """A train-step worker process seen as a callable that runs `block` steps back to back and
    waits for them; the worker times each step (wall and process CPU)."""

    def __init__(self, ctx, framework: str, args: tuple, block: int = 1):
        self.framework = framework
        self.block = block
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_train_step_worker, args=(child, framework, *args), daemon=True)
        self.process.start()
        child.close()
        self.wall: list = []        # the worker's wall time of every step
        self.cpu: list = []         # the worker's process CPU time of every step

    def _receive(self):
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(f"{self.framework} train-step worker exited with {self.process.exitcode} "
                               "(-9: killed, out of memory?)") from None

    def ready(self) -> None:
        self._receive()

    def __call__(self) -> None:
        self.conn.send(self.block)
        for wall, cpu in self._receive():
            self.wall.append(wall)
            self.cpu.append(cpu)

    def clear(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send("stop")
        self.process.join()


def train_row(cfg, path: str, overrides: list, batch: int, reps: int, threads: int, winograd: bool = False,
              min_channels: int = 128, direct_max: int = 0, matmul_max: int = 0, direct_threads: int = 0,
              block: int = 1) -> dict:
    """Train steps alternating between worker processes, one per framework (or variant).

    Unlike the forward cases, the steps do not share a process: MindSpore's training graph holds
    ~17 GB at 320 (peak RSS, docs/BENCHMARKS.md), and next to it PyTorch's step took 8.4-12.8 s
    against 5.9-7.6 s in a process of its own. The parent still alternates them (one step at a
    time, the order rotated every repetition), so both see the machine in the same minutes.
    `block` > 1: each turn is that many back-to-back steps, as in training, where a step follows
    a step of the same process rather than another process's (docs/BENCHMARKS.md, "Narrow-layer
    training speed": our OpenMP kernels lose their gain in the one-step turns).
    """
    import multiprocessing

    from bench import harness as H
    from src.builder import build_detector
    from src.summary import count_flops

    flops, _ = count_flops(build_detector(cfg), cfg.model.input_size)
    gc.collect()
    ctx = multiprocessing.get_context("spawn")
    worker_args = (path, list(overrides), batch, threads, winograd, min_channels, direct_max, matmul_max,
                   direct_threads)
    names = ("mindspore", "mindspore_direct", "pytorch") if direct_max > 0 else ("mindspore", "pytorch")
    workers = [_RemoteStep(ctx, name, worker_args, block) for name in names]
    try:
        for worker in workers:
            worker.ready()
        cases = [(worker.framework, worker) for worker in workers]
        H.alternate(cases, reps=1, warmup=0)
        first = {worker.framework: list(worker.wall) for worker in workers}
        for worker in workers:
            worker.clear()
        H.alternate(cases, reps=reps, warmup=0)
        times = {worker.framework: list(worker.wall) for worker in workers}
    finally:
        for worker in workers:
            worker.close()
    case = "train step (Winograd)" if winograd else "train step"
    if direct_max > 0:
        case += (f" (+ direct kernels <= {direct_max} ch on {direct_threads or 'all'} thread(s), "
                 f"matmul convs <= {matmul_max} ch)")
    if block > 1:
        case += f" ({block} steps per turn)"
    row = {"config": cfg.config_name, "case": case, "batch": batch, "reps": reps, "steps_per_turn": block,
           "gflop": 3 * flops * batch / 1e9, "processes": "one per framework"}
    for name, _ in cases:
        row[f"{name}_ms"] = 1e3 * H.median(times[name])
        row[f"{name}_first_ms"] = 1e3 * first[name][0]
    for worker in workers:
        row[f"{worker.framework}_cpu_ms"] = 1e3 * H.median(worker.cpu)
    row["times_ms"] = {name: [round(1e3 * t, 1) for t in v] for name, v in times.items()}
    _ratios(row)
    print(_line(row), flush=True)
    return row


def ceiling_gflops(reps: int = 3) -> float:
    """MindSpore GFLOP/s of the ceiling convolution, in this process as it is now."""
    from bench import harness as H

    conv, _, flops = H.conv3x3_cases()
    times = H.alternate([("conv3x3", conv)], reps=reps, warmup=2)
    return flops / 1e9 / H.median(times["conv3x3"])


def set_fraction(rows: list[dict], ceiling: float) -> None:
    for row in rows:
        row["conv_peak_gflops"] = ceiling
        row["fraction_of_peak"] = row["mindspore_gflops"] / ceiling


def _ratios(row: dict) -> None:
    """MindSpore/PyTorch ratios and GFLOP/s (the BN-folded network's, where there is one)."""
    pt = row["pytorch_ms"]
    best = min(row[k] for k in ("mindspore_ms", "mindspore_folded_ms", "mindspore_winograd_ms",
                                "mindspore_mindir_ms") if k in row)
    row["ratio"] = row["mindspore_ms"] / pt
    if "mindspore_folded_ms" in row:
        row["ratio_folded"] = row["mindspore_folded_ms"] / pt
    if "mindspore_winograd_ms" in row:
        row["ratio_winograd"] = row["mindspore_winograd_ms"] / pt
    if "mindspore_mindir_ms" in row:
        row["ratio_mindir"] = row["mindspore_mindir_ms"] / pt
    if "mindspore_mindir_direct_ms" in row:
        row["ratio_mindir_direct"] = row["mindspore_mindir_direct_ms"] / pt
    row["mindspore_gflops"] = row["gflop"] / (best / 1e3)
    row["pytorch_gflops"] = row["gflop"] / (pt / 1e3)


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _line(row: dict) -> str:
    return (f"  {row['config']} {row['case']} b{row['batch']}: MindSpore {_fmt(row['mindspore_ms'])} ms"
            + (f", folded {_fmt(row['mindspore_folded_ms'])} ms" if "mindspore_folded_ms" in row else "")
            + (f", Winograd F(2x2) {_fmt(row['mindspore_winograd_f23_ms'])} ms"
               if "mindspore_winograd_f23_ms" in row else "")
            + (f", Winograd {_fmt(row['mindspore_winograd_ms'])} ms" if "mindspore_winograd_ms" in row else "")
            + (f", MINDIR {_fmt(row['mindspore_mindir_ms'])} ms" if "mindspore_mindir_ms" in row else "")
            + (f", MINDIR direct {_fmt(row['mindspore_mindir_direct_ms'])} ms (MINDIR direct/PT "
               f"{_fmt(row['ratio_mindir_direct'], 2)})" if "mindspore_mindir_direct_ms" in row else "")
            + (f", with the direct kernels {_fmt(row['mindspore_direct_ms'])} ms (direct/PT "
               f"{_fmt(row['mindspore_direct_ms'] / row['pytorch_ms'], 2)})" if "mindspore_direct_ms" in row else "")
            + f", PyTorch {_fmt(row['pytorch_ms'])} ms"
            + (" (CPU per step: " + ", ".join(f"{k[:-7]} {_fmt(v)} ms" for k, v in row.items() if k.endswith("_cpu_ms"))
               + ")" if "pytorch_cpu_ms" in row else ""))


TABLE_HEADERS = ["config", "case", "batch", "MindSpore ms", "MS BN-folded ms", "MS folded + Winograd ms",
                 "exported MINDIR ms", "PyTorch ms", "MS/PT", "folded/PT", "Winograd/PT", "MINDIR/PT", "GFLOP", "MS GFLOP/s", "PT GFLOP/s",
                 "MS 3x3-conv ceiling GFLOP/s", "MS % of ceiling"]


def table(rows: list[dict]) -> str:
    from bench.harness import markdown_table

    body = []
    for r in rows:
        frac = r.get("fraction_of_peak")
        body.append([r["config"], r["case"], r["batch"], _fmt(r["mindspore_ms"]),
                     _fmt(r.get("mindspore_folded_ms")), _fmt(r.get("mindspore_winograd_ms")),
                     _fmt(r.get("mindspore_mindir_ms")), _fmt(r["pytorch_ms"]), _fmt(r["ratio"], 2),
                     _fmt(r.get("ratio_folded"), 2), _fmt(r.get("ratio_winograd"), 2),
                     _fmt(r.get("ratio_mindir"), 2), _fmt(r["gflop"]), _fmt(r["mindspore_gflops"]),
                     _fmt(r["pytorch_gflops"]), _fmt(r["conv_peak_gflops"]),
                     "-" if frac is None else f"{100 * frac:.0f}%"])
    return markdown_table(TABLE_HEADERS, body)


def conv_table(rows: list[dict]) -> str:
    from bench.harness import markdown_table

    return markdown_table(["3x3 conv (N x C x H x W, C -> C)", "GFLOP", "MindSpore GFLOP/s", "PyTorch GFLOP/s"],
                          [[r["shape"], _fmt(r["gflop"], 2), _fmt(r["mindspore_gflops"]),
                            _fmt(r["pytorch_gflops"])] for r in rows])


def _settings(args) -> dict:
    if args.omp_wait_policy != "keep":
        # read when PyTorch's OpenMP runtime starts, i.e. before `import torch`
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    import mindspore as ms

    from bench import harness as H

    settings = H.set_threads(args.threads)
    settings["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    return settings


def run_cases(args, path: str) -> list[dict]:
    """The forward and/or train cases of one config, in this process."""
    from src.config import load_config

    overrides = list(args.overrides)
    cfg = load_config(path, overrides)
    if cfg.model.neck.mlfpn.get("tum_norm", "bn") != "bn":
        # the PyTorch reference's TUMs have BatchNorm (the release); compare that architecture
        print(f"{path}: model.neck.mlfpn.tum_norm={cfg.model.neck.mlfpn.tum_norm} -> bn (the PyTorch reference's TUMs)")
        overrides.append("model.neck.mlfpn.tum_norm=bn")
        cfg = load_config(path, overrides)
    rows = []
    if "forward" in args.cases:
        rows += forward_rows(cfg, args.batches, args.reps, not args.no_fold, not args.no_winograd,
                             args.winograd_min_channels, not args.no_mindir, args.mindir_direct, args.winograd_f23)
    for case in ("train", "train_winograd", "train_direct"):
        if case in args.cases:
            rows.append(train_row(cfg, path, overrides, args.train_batch, args.reps, args.threads,
                                  winograd=case == "train_winograd", min_channels=args.winograd_min_channels,
                                  direct_max=args.direct_conv_max_channels if case == "train_direct" else 0,
                                  matmul_max=args.matmul_conv_max_channels, direct_threads=args.direct_conv_threads,
                                  block=args.train_block))
    return rows


def spawn_cases(args, path: str, case: str, ceilings: list[float]) -> list[dict]:
    """One config's `case` in a fresh process: MindSpore keeps the memory pool it grew for the
    largest case, so 512 at batch 8 followed by a training step in one process runs out of 24 GiB."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--configs", path, "--cases", case,
           "--batches", *[str(b) for b in args.batches], "--train_batch", str(args.train_batch),
           "--reps", str(args.reps), "--train_block", str(args.train_block), "--threads", str(args.threads),
           "--omp_wait_policy", args.omp_wait_policy]
    cmd += ["--no_fold"] * args.no_fold + ["--no_winograd"] * args.no_winograd + ["--no_mindir"] * args.no_mindir
    cmd += ["--mindir_direct"] * args.mindir_direct + ["--winograd_f23"] * args.winograd_f23
    cmd += ["--winograd_min_channels", str(args.winograd_min_channels)]
    cmd += ["--direct_conv_max_channels", str(args.direct_conv_max_channels),
            "--matmul_conv_max_channels", str(args.matmul_conv_max_channels),
            "--direct_conv_threads", str(args.direct_conv_threads)]
    cmd += ["--set", *args.overrides] if args.overrides else []
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    for line in proc.stdout.splitlines():
        if line.startswith("CEILING "):
            ceilings.append(float(line.split()[1]))
        elif not line.startswith("RESULT "):
            print(line, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} {case}: worker exited with {proc.returncode} (out of memory?)")
    return rows


def run(args) -> dict:
    settings = _settings(args)
    from bench import harness as H

    if args.worker:
        print(f"CEILING {ceiling_gflops()}", flush=True)     # before any model is built
        for row in run_cases(args, args.configs[0]):
            print("RESULT " + json.dumps(row), flush=True)
        return {}
    machine = H.machine_description()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"{started}  {machine}")
    print(f"threads: {settings}")

    ceilings = [ceiling_gflops()]
    conv_rows, peak = [], None
    if not args.no_conv_peak:
        conv_rows = H.conv3x3_peak(CONV_SHAPES_SHORT if args.short else CONV_SHAPES_FULL, reps=max(args.reps, 2))
        peak = max(r["mindspore_gflops"] for r in conv_rows)
        print(conv_table(conv_rows), flush=True)

    rows = []
    for path in args.configs:
        if args.short:            # small enough for one process, and quicker
            rows += run_cases(args, path)
            continue
        for case in args.cases:
            rows += spawn_cases(args, path, case, ceilings)
    set_fraction(rows, max(ceilings))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(table(rows))
    print(f"\nload average at the end: {load_after:.2f}; medians of {args.reps} alternating repetitions")
    result = {"started": started, "machine": machine, "settings": settings, "load_average_end": load_after,
              "conv_ceiling_gflops": max(ceilings), "conv_ceiling_runs": ceilings,
              "conv_table_best_gflops": peak, "conv_rows": conv_rows, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
