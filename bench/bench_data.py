"""Benchmark: SSD training augmentation + target assignment, per worker process.

Workload (the data worker's per-image job after decoding): a 640x480 textured BGR image
with 7 boxes -> SSDTrainTransform (crop, photometric, expand, mirror, resize, filter,
mean subtraction to float32 CHW) -> SSDTargetEncoder (max-IoU matching against all
priors + SSD encoding), at input 320 (12,810 priors) and 512 (32,760 priors) from
configs/m2det320_vgg.yaml and configs/m2det512_vgg.yaml. Single process, OpenCV limited
to one thread, like one data-loader worker.

The reference pipeline (the M2Det PyTorch release's `preproc` + `match`) measured
27.6 ms per image at 512 on one core of the development machine; the target is at
least twice its throughput (<= 13.8 ms per image).

    python bench/bench_data.py [--iters 300] [--sizes 320 512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from heads.assigners.max_iou import MaxIoUAssigner  # noqa: E402
from heads.box_coder import SSDBoxCoder  # noqa: E402
from heads.priors import SSDPriors  # noqa: E402
from src.config import CONFIG_DIR, load_config  # noqa: E402
from src.data import transforms as T  # noqa: E402
from src.data.targets import SSDTargetEncoder  # noqa: E402

REFERENCE_MS_512 = 27.6
CONFIGS = {320: "m2det320_vgg.yaml", 512: "m2det512_vgg.yaml", 800: "m2det800_vgg.yaml"}


def priors_for(cfg) -> np.ndarray:
    try:
        from src.builder import build_priors
        return build_priors(cfg).boxes()
    except ImportError:   # the model package is optional for this benchmark
        size = cfg.model.input_size
        return SSDPriors(size, [round(size / s) for s in cfg.priors.steps], cfg.priors.steps,
                         cfg.priors.size_pattern, cfg.priors.aspect_ratios, cfg.priors.clip).boxes()


def test_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, (12, 16, 3)).astype(np.float32)
    image = cv2.resize(grid, (640, 480), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    boxes = np.array([[10, 20, 200, 300], [300, 100, 400, 200], [50, 50, 90, 80],
                      [500, 300, 630, 470], [200, 200, 260, 260], [100, 350, 300, 460],
                      [400, 20, 600, 90]], np.float32)
    labels = np.arange(7, dtype=np.int32)
    return image, boxes, labels


def bench_size(size: int, iters: int) -> dict:
    cfg = load_config(os.path.join(CONFIG_DIR, CONFIGS[size]))
    priors = priors_for(cfg)
    transform = T.SSDTrainTransform(size, cfg.data.mean, expand_p=cfg.data.expand_prob,
                                    expand_max_ratio=cfg.data.expand_max_ratio,
                                    crop_require_all=cfg.data.crop_require_all)
    encoder = SSDTargetEncoder(priors, SSDBoxCoder(cfg.priors.variance),
                               MaxIoUAssigner(cfg.model.head.multibox.match_threshold))
    image, boxes, labels = test_scene()

    def one(rng):
        out, b, lab = transform(image, boxes, labels, rng)
        t = time.perf_counter()
        encoder(b, lab)
        return time.perf_counter() - t

    for k in range(20):                                   # warm-up: caches, lazy init
        one(np.random.default_rng([1, k]))
    encode_time = 0.0
    start = time.perf_counter()
    for k in range(iters):
        encode_time += one(np.random.default_rng([0, k]))
    total = time.perf_counter() - start
    ms = total / iters * 1e3
    return {"size": size, "priors": len(priors), "ms": ms, "encode_ms": encode_time / iters * 1e3,
            "images_per_s": 1e3 / ms}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="SSD augmentation + target assignment throughput")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 512], choices=sorted(CONFIGS))
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    print(f"{'size':>5} {'priors':>7} {'ms/image':>9} {'(targets)':>10} {'images/s':>9}")
    for size in args.sizes:
        r = bench_size(size, args.iters)
        print(f"{r['size']:>5} {r['priors']:>7} {r['ms']:>9.2f} {r['encode_ms']:>10.2f} "
              f"{r['images_per_s']:>9.1f}")
        if size == 512:
            print(f"      reference 512: {REFERENCE_MS_512} ms/image "
                  f"-> speed-up x{REFERENCE_MS_512 / r['ms']:.2f}")


if __name__ == "__main__":
    main()
