"""Image-to-detections latency split (preprocessing + network + post-processing) and peak memory.

    .venv/bin/python bench/bench_latency_memory.py              # m2det320_vgg, m2det512_vgg (~10 min on 2 cores)
    .venv/bin/python bench/bench_latency_memory.py --short      # CI: the lite config, one repetition
    .venv/bin/python bench/bench_latency_memory.py --eval configs/m2det_lite.yaml CKPT --data_dir D
    .venv/bin/python bench/bench_latency_memory.py --latency    # README's models table: inference only,
                                                                # every lite config (or --configs ...)

Every measurement runs in a fresh process (`--worker`), so that its peak resident set size
(getrusage ru_maxrss) belongs to that case alone:

    infer   the inference network of eval.py / infer.py (src/inference/fast_network.py: the
            Detector with BatchNorm folded and, on CPU, Winograd 3x3 convolutions, as the
            config's test.fold_bn / test.winograd say), batch 1, GRAPH mode: for one 640x480 image,
            preprocessing (src/data/resize.TestInput: resize, mean / std) ->
            network (forward + the copy of the outputs to NumPy) -> post-processing (the
            output decoder, scaling to the image, postprocess.detect with the config's `test:`
            settings); medians, Detectron's "X + Y + Z ms" style. `candidates` is the number of
            (prior, class) scores above the score threshold that reached NMS: random weights
            make it unlike a trained model's, so `--eval` measures the real split.
    train   the project's TrainStep (forward + loss + backward + clip + SGD), batch 2, with
            Winograd convolutions (down to train.winograd_min_channels) when the config says
            train.winograd: true. Besides the steady
            step: the first step (`first_call_s` = graph compilation, timed alone with
            Cell.compile as `compile_s`, + the first execution `first_run_s`) and the resident set
            after building the network, after compiling (`compile_rss_mib` = what compilation
            added), after the first step and after the last (steady state)
    torch_infer / torch_train   the PyTorch reference doing the same (--no_torch skips them)

`--eval CONFIG CHECKPOINT --data_dir D` runs src.evaluation.evaluator.evaluate over the split
and reports its own network / post-processing times per image and the post-processing share
(target: below 10%).

Peak RSS includes the framework itself; `import_rss_mib` is the process after importing
MindSpore/PyTorch and building nothing, to subtract.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FULL_CONFIGS = ["configs/m2det320_vgg.yaml", "configs/m2det512_vgg.yaml"]
SHORT_CONFIGS = ["configs/m2det_lite.yaml"]
LATENCY_CONFIGS = ["configs/m2det_lite.yaml", "configs/m2det_lite_retina.yaml", "configs/m2det_lite_atss.yaml",
                   "configs/m2det_lite_umop.yaml", "configs/m2det_lite_gfl.yaml", "configs/m2det_lite_vfnet.yaml"]
WORKERS = ("infer", "train", "torch_infer", "torch_train")


def peak_rss_mib() -> float:
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return usage / 1024.0          # Linux reports KiB


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return float("nan")


def test_image(seed: int = 0):
    """A 640x480 uint8 BGR picture with smooth structure (what a camera frame looks like to a resize)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, (12, 16, 3)).astype(np.float32)
    image = cv2.resize(grid, (640, 480), interpolation=cv2.INTER_CUBIC)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def worker_infer(cfg, reps: int) -> dict:
    import mindspore as ms

    from bench import harness as H
    from src.builder import build_detector, build_postprocessor, build_test_input, inference_options
    from src.inference.fast_network import inference_network

    import_rss = current_rss_mib()
    ms.set_seed(0)
    detector = build_detector(cfg)
    H.randomize_batchnorm(detector)
    detector = inference_network(detector, **inference_options(cfg), device_target="CPU")
    test_input = build_test_input(cfg)               # the evaluation / inference path (src/inference)
    postprocessor = build_postprocessor(cfg)
    image = test_image()
    height, width = image.shape[:2]
    score_threshold = postprocessor.settings.score_threshold

    def once():
        t0 = time.perf_counter()
        x = test_input(image)[None]
        t1 = time.perf_counter()
        outputs = [o.asnumpy() for o in detector(ms.Tensor(x))]
        t2 = time.perf_counter()
        dets = postprocessor([o[0] for o in outputs], height, width)
        t3 = time.perf_counter()
        _, scores, has_background, _ = postprocessor.decoder([o[0] for o in outputs])
        fg = scores[:, 1:] if has_background else scores
        return (t1 - t0, t2 - t1, t3 - t2), int((fg > score_threshold).sum()), len(dets.scores)

    start = time.perf_counter()
    once()
    first = time.perf_counter() - start
    parts, candidates, kept = [], 0, 0
    for _ in range(reps):
        split, candidates, kept = once()
        parts.append(split)
    pre, net, post = (1e3 * H.median([p[k] for p in parts]) for k in range(3))
    return {"preprocess_ms": pre, "network_ms": net, "postprocess_ms": post, "total_ms": pre + net + post,
            "first_call_s": first, "candidates": candidates, "detections": kept, "import_rss_mib": import_rss}


def worker_train(cfg, reps: int, batch: int) -> dict:
    import mindspore as ms

    from bench import harness as H
    from src.builder import build_detector

    import_rss = current_rss_mib()
    ms.set_seed(0)
    detector = build_detector(cfg)
    size = cfg.model.input_size
    import numpy as np

    images = np.random.default_rng(7).uniform(-120, 120, (batch, 3, size, size)).astype(np.float32)
    loc_t, conf_t = H.synthetic_targets(cfg, batch, seed=7)
    if cfg.train.winograd:
        from m2det.winograd import use_winograd

        use_winograd(detector, cfg.train.winograd_min_channels, trainable=True)
    step = H.mindspore_train_step(detector, cfg)
    inputs = (ms.Tensor(images), ms.Tensor(loc_t), ms.Tensor(conf_t))
    built_rss = current_rss_mib()
    # the graph compilation alone (Cell.compile), then the first execution, then steady steps
    start = time.perf_counter()
    step.compile(*inputs)
    compile_s = time.perf_counter() - start
    compiled_rss = current_rss_mib()
    times = []
    rss_after = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        step(*inputs)[0].asnumpy()
        times.append(time.perf_counter() - start)
        rss_after.append(current_rss_mib())
    return {"step_ms": 1e3 * H.median(times[1:]), "first_call_s": compile_s + times[0], "compile_s": compile_s,
            "first_run_s": times[0], "built_rss_mib": built_rss, "compiled_rss_mib": compiled_rss,
            "compile_rss_mib": compiled_rss - built_rss, "first_step_rss_mib": rss_after[0],
            "steady_rss_mib": rss_after[-1], "import_rss_mib": import_rss, "winograd": bool(cfg.train.winograd)}


def worker_torch(cfg, reps: int, batch: int, train: bool) -> dict:
    import numpy as np
    import torch

    from bench import harness as H
    from src.builder import build_priors

    import_rss = current_rss_mib()
    torch.manual_seed(0)
    reference = H.build_reference(cfg, build_priors(cfg).num_anchors(), "train" if train else "test")
    size = cfg.model.input_size
    images = torch.from_numpy(np.random.default_rng(7).uniform(-120, 120, (batch, 3, size, size)).astype(np.float32))
    if train:
        loc_t, conf_t = (torch.from_numpy(a) for a in H.synthetic_targets(cfg, batch, seed=7))
        step = H.TorchTrainStep(reference, cfg)
        fn = lambda: step(images, loc_t, conf_t)  # noqa: E731
    else:
        reference.eval()

        def fn():
            with torch.no_grad():
                return reference(images)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"step_ms" if train else "network_ms": 1e3 * H.median(times[1:]), "import_rss_mib": import_rss}


def run_worker(args) -> int:
    if args.omp_wait_policy != "keep":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    import mindspore as ms

    from bench import harness as H
    from src.config import load_config

    H.set_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cfg = load_config(args.configs[0], args.overrides)
    if args.worker == "infer":
        out = worker_infer(cfg, args.reps)
    elif args.worker == "train":
        out = worker_train(cfg, args.reps, args.train_batch)
    else:
        out = worker_torch(cfg, args.reps, args.train_batch if args.worker == "torch_train" else 1,
                           args.worker == "torch_train")
    out.update(worker=args.worker, config=cfg.config_name, input_size=cfg.model.input_size,
               peak_rss_mib=peak_rss_mib())
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def spawn(worker: str, config: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--configs", config,
           "--reps", str(args.reps), "--threads", str(args.threads), "--train_batch", str(args.train_batch),
           "--omp_wait_policy", args.omp_wait_policy]
    if args.overrides:
        cmd += ["--set", *args.overrides]
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    if proc.returncode == -9 and worker != "infer":     # SIGKILL: the kernel's out-of-memory killer
        print(f"  worker {worker} on {config} was killed (out of memory?)", flush=True)
        return {"failed": "killed (out of memory?)"}
    raise RuntimeError(f"worker {worker} on {config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def eval_split(config: str, checkpoint: str, data_dir: str, overrides, threads: int) -> dict:
    import mindspore as ms

    from bench import harness as H
    from src.builder import build_detector, build_postprocessor, eval_data_settings, inference_options
    from src.config import load_config
    from src.evaluation.evaluator import evaluate
    from src.inference.fast_network import inference_network
    from src.training.checkpoint import load_detector_weights, read_checkpoint

    H.set_threads(threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cfg = load_config(config, list(overrides) + [f"data.root={data_dir}"])
    detector = build_detector(cfg)
    load_detector_weights(detector, read_checkpoint(checkpoint), checkpoint)
    detector = inference_network(detector, **inference_options(cfg), device_target="CPU")   # what eval.py runs
    start = time.perf_counter()
    metrics = evaluate(detector, eval_data_settings(cfg, "val"), build_postprocessor(cfg))
    wall = time.perf_counter() - start
    net, post = metrics["network_ms_per_image"], metrics["postprocess_ms_per_image"]
    return {"config": cfg.config_name, "images": metrics["num_images"], "AP": metrics["AP"],
            "network_ms": net, "postprocess_ms": post, "postprocess_share": post / (net + post), "wall_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI mode: lite config, one repetition")
    parser.add_argument("--latency", action="store_true",
                        help="inference latency only (batch 1, BatchNorm folded, the config's test.winograd): "
                             "no training or PyTorch workers; default configs: the lite ones")
    parser.add_argument("--configs", nargs="+")
    parser.add_argument("--reps", type=int, help="timed repetitions (full: 5, short: 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train_batch", type=int, default=2)
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch workers")
    parser.add_argument("--no_train", action="store_true", help="skip the training workers")
    parser.add_argument("--omp_wait_policy", choices=["passive", "active", "keep"], default="passive")
    parser.add_argument("--eval", nargs=2, metavar=("CONFIG", "CHECKPOINT"),
                        help="evaluate CHECKPOINT on --data_dir's val split; report the time split")
    parser.add_argument("--data_dir", help="dataset root for --eval")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.latency:
        args.no_train = args.no_torch = True
    args.configs = args.configs or (SHORT_CONFIGS if args.short else LATENCY_CONFIGS if args.latency
                                    else FULL_CONFIGS)
    args.reps = args.reps or (1 if args.short else 5)
    if args.worker:
        return run_worker(args)

    from bench.harness import machine_description, markdown_table

    result = {}
    if args.eval:
        if not args.data_dir:
            parser.error("--eval needs --data_dir")
        ev = eval_split(args.eval[0], args.eval[1], args.data_dir, args.overrides, args.threads)
        result["eval"] = ev
        print(markdown_table(["config", "images", "AP", "network ms/img", "post-processing ms/img", "post share"],
                             [[ev["config"], ev["images"], f"{ev['AP']:.4f}", f"{ev['network_ms']:.1f}",
                               f"{ev['postprocess_ms']:.2f}", f"{100 * ev['postprocess_share']:.1f}%"]]))
    else:
        latency, memory = [], []
        for config in args.configs:
            infer = spawn("infer", config, args)
            latency.append(infer)
            row = {"config": infer["config"], "infer": infer}
            for worker in ("train",) * (not args.no_train) + ("torch_infer",) * (not args.no_torch) \
                    + ("torch_train",) * (not args.no_torch and not args.no_train):
                row[worker] = spawn(worker, config, args)
            memory.append(row)
            print(f"  {infer['config']}: done", flush=True)
        result.update(latency=latency, memory=memory)
        print(markdown_table(
            ["config", "input", "preprocess ms", "network ms", "post-processing ms", "image -> detections",
             "candidates"],
            [[r["config"], r["input_size"], f"{r['preprocess_ms']:.1f}", f"{r['network_ms']:.1f}",
              f"{r['postprocess_ms']:.1f}",
              f"{r['preprocess_ms']:.1f} + {r['network_ms']:.0f} + {r['postprocess_ms']:.1f} ms",
              r["candidates"]] for r in latency]))
        print()
        if args.latency:
            print(f"batch 1, {args.threads} threads, median of {args.reps}; {machine_description()}")
            if args.json:
                _write_json(args.json, result)
            return 0

        def mib(row, worker):
            if worker not in row:
                return "-"
            return row[worker]["failed"] if "failed" in row[worker] else f"{row[worker]['peak_rss_mib']:,.0f}"

        print(markdown_table(
            ["config", "peak RSS inference (MiB)", f"peak RSS train step b{args.train_batch} (MiB)",
             "PyTorch inference (MiB)", "PyTorch train step (MiB)", "after import (MiB)"],
            [[r["config"], mib(r, "infer"), mib(r, "train"), mib(r, "torch_infer"), mib(r, "torch_train"),
              f"{r['infer']['import_rss_mib']:,.0f}"] for r in memory]))
        trained = [r for r in memory if "train" in r and "failed" not in r["train"]]
        if trained:
            print()
            print(markdown_table(
                ["config", f"train b{args.train_batch}: first step s", "compile s", "steady step s",
                 "RSS built (MiB)", "compile adds (MiB)", "RSS after step 1 (MiB)", "steady RSS (MiB)",
                 "peak RSS (MiB)"],
                [[r["config"], f"{t['first_call_s']:.1f}", f"{t['compile_s']:.1f}", f"{t['step_ms'] / 1e3:.2f}",
                  f"{t['built_rss_mib']:,.0f}", f"{t['compile_rss_mib']:,.0f}", f"{t['first_step_rss_mib']:,.0f}",
                  f"{t['steady_rss_mib']:,.0f}", f"{t['peak_rss_mib']:,.0f}"]
                 for r in trained for t in [r["train"]]]))
    if args.json:
        _write_json(args.json, result)
    return 0


def _write_json(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
