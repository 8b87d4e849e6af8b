"""Benchmark: optimized soft-NMS vs the reference-style loop (nms.soft_nms_classic).

Workload: one image's post-processing as M2Det does it, 80 classes x 1000 candidate boxes,
one soft-NMS call per class. The boxes are clustered like real detections (jittered copies
of a few objects, plus some background clutter) in a 640x480 image; scores are uniform in
(0.1, 1), the range that reaches soft-NMS after the 0.1 score threshold (REFERENCE 1.10).

Prints the median wall time over several repetitions and the speed-up, and asserts that
both implementations return identical arrays.

    python bench/bench_nms.py [--classes 80] [--boxes 1000] [--repeats 7] [--methods linear]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nms  # noqa: E402  (after the path set-up; needs `bash scripts/make.sh`)

IMAGE_W, IMAGE_H = 640.0, 480.0


def clustered_detections(rng: np.random.Generator, num_boxes: int,
                         clutter: float = 0.2) -> np.ndarray:
    """(num_boxes, 5) float32 detections of one class: jittered copies of 1-10 objects
    (centre shift ~ 10 % of the size, size x exp(N(0, 0.2))) and a ``clutter`` fraction
    of random boxes; corners clipped to the image."""
    num_objects = int(rng.integers(1, 11))
    obj_wh = rng.uniform(20.0, 300.0, size=(num_objects, 2))
    obj_c = rng.uniform((0.0, 0.0), (IMAGE_W, IMAGE_H), size=(num_objects, 2))
    owner = rng.integers(0, num_objects, size=num_boxes)
    wh = obj_wh[owner] * np.exp(rng.normal(0.0, 0.2, size=(num_boxes, 2)))
    c = obj_c[owner] + rng.normal(0.0, 0.1, size=(num_boxes, 2)) * obj_wh[owner]
    is_clutter = rng.random(num_boxes) < clutter
    wh[is_clutter] = rng.uniform(10.0, 200.0, size=(is_clutter.sum(), 2))
    c[is_clutter] = rng.uniform((0.0, 0.0), (IMAGE_W, IMAGE_H), size=(is_clutter.sum(), 2))
    lo = np.clip(c - wh / 2, 0.0, None)
    hi = np.minimum(c + wh / 2, (IMAGE_W - 1, IMAGE_H - 1))
    scores = rng.uniform(0.1, 1.0, size=(num_boxes, 1))
    return np.hstack([lo, hi, scores]).astype(np.float32)


def time_image(fn: Callable[..., np.ndarray], classes: List[np.ndarray], method: str,
               repeats: int) -> tuple[float, List[np.ndarray]]:
    """Median seconds over ``repeats`` runs of ``fn`` on every class, and the last outputs."""
    times = []
    outputs: List[np.ndarray] = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [fn(dets, method=method) for dets in classes]  # reference defaults otherwise
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--boxes", type=int, default=1000, help="boxes per class")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=["linear"],
                        choices=["linear", "gaussian", "hard"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    classes = [clustered_detections(rng, args.boxes) for _ in range(args.classes)]
    print(f"soft-NMS, {args.classes} classes x {args.boxes} boxes per call set, "
          f"median of {args.repeats}, Nt=0.3, sigma=0.5, threshold 0.001, +1 pixel IoU")
    print(f"{'method':<9} {'classic ms':>11} {'optimized ms':>13} {'speed-up':>9} {'kept':>7}")
    for method in args.methods:
        t_classic, ref = time_image(nms.soft_nms_classic, classes, method, args.repeats)
        t_fast, out = time_image(nms.soft_nms, classes, method, args.repeats)
        for a, b in zip(ref, out):
            assert a.shape == b.shape and np.array_equal(a, b), "outputs differ"
        kept = sum(len(o) for o in out)
        print(f"{method:<9} {t_classic * 1e3:>11.1f} {t_fast * 1e3:>13.1f} "
              f"{t_classic / t_fast:>8.2f}x {kept:>7}")
    print("outputs identical: yes")


if __name__ == "__main__":
    main()
