"""Built-in synthetic detection dataset in COCO format ("shapes").

    python -m src.data.synthetic --out work_dirs/synthetic --train 400 --val 100 --seed 0

writes
    OUT/train/000001.jpg ...            OUT/annotations/instances_train.json
    OUT/val/000001.jpg ...              OUT/annotations/instances_val.json

Five shape classes with deliberately non-contiguous COCO category ids, so the reader's
id <-> label mapping is exercised:

    1 circle   2 rectangle   4 triangle   5 star   7 cross

Each shape is filled or outlined, in one of several saturated colours that is chosen to
stand out from the local background; sizes are log-uniform from `min_size` (12 px) to
`max_size_frac` of the shorter image side; 1-8 objects per image (about 5% of images have
none); images are 240-480 px per side with textured, noisy backgrounds. Later objects may
partly cover earlier ones, but every object keeps at least `min_visible` of its pixels.

A second, different dataset (`--kind signs`, for fine-tuning experiments) has three other object
kinds on other backgrounds (checkerboard tiles in warm tones instead of blobs, gradients and
stripes):

    1 diamond   2 hexagon   3 arrow

The default (`--kind shapes`) is unchanged byte for byte.

Boxes are the exact pixel extent of the shape as rendered (before noise and JPEG), i.e.
[x, y, w, h] with x = leftmost painted column and w = rightmost - leftmost + 1.
Generation is deterministic: image k of a split is drawn from
`numpy.random.default_rng([seed, split, k])`, so the same seed gives byte-identical
JPEGs and JSON, and images do not depend on how many others are generated.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from src.utils.io import atomic_write

CATEGORIES = [  # (COCO id, name); ids are non-contiguous on purpose
    (1, "circle"), (2, "rectangle"), (4, "triangle"), (5, "star"), (7, "cross"),
]
SIGN_CATEGORIES = [(1, "diamond"), (2, "hexagon"), (3, "arrow")]
KINDS = {"shapes": CATEGORIES, "signs": SIGN_CATEGORIES}
# saturated BGR colours; backgrounds are muted, so at least one always contrasts
PALETTE = np.array([
    (40, 40, 220), (50, 190, 50), (220, 80, 30), (30, 220, 230), (200, 40, 200),
    (220, 220, 40), (20, 140, 250), (245, 245, 245), (25, 25, 25),
], dtype=np.float32)
SPLIT_CODES = {"train": 0, "val": 1}
_SHIFT = 4                       # cv2 sub-pixel bits for polygon vertices
_MIN_CONTRAST = 80.0             # max-channel difference from the local background mean


@dataclass
class SyntheticConfig:
    min_side: int = 240          # image width/height drawn independently in [min_side, max_side]
    max_side: int = 480
    min_size: float = 12.0       # object size, pixels: log-uniform from this (the box's shorter side)
    max_size_frac: float = 0.75  # ... up to this fraction of the shorter image side (longer side)
    max_objects: int = 8
    empty_prob: float = 0.05
    outline_prob: float = 0.3
    min_visible: float = 0.6     # fraction of an object's pixels that must stay visible
    flat_background: bool = False  # one flat colour, no texture or noise (for pixel tests)
    jpeg_quality: int = 92
    kind: str = "shapes"         # shapes (default dataset) | signs (other objects, tiled backgrounds)


# ---------------------------------------------------------------------- shapes

def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def shape_polygon(name: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Outline of one shape centred at the origin, (N, 2) float; `size` ~ its longest extent."""
    r = size / 2
    if name == "circle":
        aspect = rng.uniform(0.8, 1.25)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ax, ay = (r, r / aspect) if aspect >= 1 else (r * aspect, r)
        return np.stack([ax * np.cos(t), ay * np.sin(t)], axis=1)
    if name == "rectangle":
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        hw, hh = (r, r / aspect) if aspect >= 1 else (r * aspect, r)
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    if name == "triangle":
        t = -np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        pts[:, 0] *= rng.uniform(0.8, 1.2)      # mild squash: not always equilateral
        return _rotate(pts, rng.uniform(0, 2 * np.pi))
    if name == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
        return _rotate(pts, rng.uniform(0, 2 * np.pi / 5))
    if name == "cross":
        a = r * rng.uniform(0.28, 0.4)           # half arm thickness
        pts = np.array([[-a, -r], [a, -r], [a, -a], [r, -a], [r, a], [a, a],
                        [a, r], [-a, r], [-a, a], [-r, a], [-r, -a], [-a, -a]])
        return _rotate(pts, rng.uniform(0, np.pi / 2))
    if name == "diamond":
        aspect = rng.uniform(0.5, 0.9)          # a rhombus, taller than wide
        return _rotate(np.array([[0, -r], [r * aspect, 0], [0, r], [-r * aspect, 0]]), rng.uniform(-0.3, 0.3))
    if name == "hexagon":
        t = np.arange(6) * np.pi / 3
        return _rotate(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), rng.uniform(0, np.pi / 3))
    if name == "arrow":
        shaft, head = r * rng.uniform(0.2, 0.3), r * rng.uniform(0.45, 0.6)
        neck = r * rng.uniform(0.0, 0.3)
        pts = np.array([[-r, -shaft], [neck, -shaft], [neck, -head], [r, 0], [neck, head], [neck, shaft],
                        [-r, shaft]])
        return _rotate(pts, rng.uniform(0, 2 * np.pi))
    raise ValueError(f"unknown shape '{name}'")


def polygon_area(points: np.ndarray) -> float:
    """Shoelace formula."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _render_mask(points: np.ndarray, origin: tuple[int, int], shape: tuple[int, int],
                 outline: int) -> np.ndarray:
    """Rasterise the polygon (image coordinates) into a (h, w) bool patch at `origin`."""
    mask = np.zeros(shape, dtype=np.uint8)
    pts = np.round((points - np.asarray(origin)) * (1 << _SHIFT)).astype(np.int32)[None]
    if outline > 0:
        cv2.polylines(mask, pts, True, 1, thickness=outline, lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


# ---------------------------------------------------------------------- backgrounds

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W, 3) float32 in about [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def render_background(rng: np.random.Generator, height: int, width: int,
                      flat: bool = False) -> np.ndarray:
    """Muted (H, W, 3) float32 BGR background: flat, or textured (blobs, gradient, stripes)."""
    grey = rng.uniform(70, 190)
    base = np.clip(grey + rng.uniform(-30, 30, 3), 0, 255).astype(np.float32)
    if flat:
        return np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    image = base + rng.uniform(15, 40) * _smooth_noise(rng, height, width, int(rng.integers(3, 10)))
    kind = rng.integers(3)
    if kind == 1:   # linear gradient across the image
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
        image += (rng.uniform(-40, 40, 3).astype(np.float32) * ramp[..., None])
    elif kind == 2:  # faint stripes: a high-frequency texture the detector must ignore
        period = rng.uniform(6, 30)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * np.pi / period))
        image += rng.uniform(8, 20) * stripes[..., None]
    return image


def render_tiled_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The `signs` dataset's background: a checkerboard of two warm muted tones with soft noise."""
    cell = int(rng.integers(12, 64))
    warm = np.array([0.75, 0.95, 1.15], dtype=np.float32)      # BGR: more red than blue
    a = np.clip(rng.uniform(80, 170) * warm + rng.uniform(-15, 15, 3), 0, 255).astype(np.float32)
    b = np.clip(a + rng.choice([-1.0, 1.0]) * rng.uniform(15, 35), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    checker = ((yy // cell + xx // cell) % 2).astype(bool)
    image = np.where(checker[..., None], a, b).astype(np.float32)
    return image + rng.uniform(5, 20) * _smooth_noise(rng, height, width, int(rng.integers(3, 8)))


# ---------------------------------------------------------------------- images

def render_synthetic_image(rng: np.random.Generator, spec: Optional[SyntheticConfig] = None
                           ) -> tuple[np.ndarray, list[dict]]:
    """Draw one image -> (uint8 BGR (H, W, 3), objects).

    Each object: {"category_id", "bbox" [x, y, w, h] (painted pixel extent), "area"
    (area of the filled polygon), "segmentation" [[x1, y1, x2, y2, ...]]}.
    """
    spec = spec or SyntheticConfig()
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    height = int(rng.integers(spec.min_side, spec.max_side + 1))
    if spec.kind == "shapes" or spec.flat_background:
        image = render_background(rng, height, width, spec.flat_background)
    else:
        image = render_tiled_background(rng, height, width)
    background_mean = cv2.blur(image, (31, 31)) if not spec.flat_background else image

    num_objects = 0 if rng.random() < spec.empty_prob else int(rng.integers(1, spec.max_objects + 1))
    owner = np.full((height, width), -1, dtype=np.int16)   # which object shows at each pixel
    full_pixels: list[int] = []                             # painted pixels of each object
    visible: list[int] = []                                 # ... of which still uncovered
    objects: list[dict] = []
    max_size = max(spec.min_size + 1, spec.max_size_frac * min(height, width))
    for _ in range(num_objects):
        placed = _place_object(rng, spec, image, background_mean, owner, full_pixels, visible,
                               max_size)
        if placed is not None:
            objects.append(placed)

    if not spec.flat_background:
        image += rng.uniform(3, 10) * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _place_object(rng, spec, image, background_mean, owner, full_pixels, visible, max_size,
                  max_tries: int = 10) -> Optional[dict]:
    """Try a few random positions for one random shape; paint it and return its record."""
    height, width = owner.shape
    categories = KINDS[spec.kind]
    cls = int(rng.integers(len(categories)))
    cat_id, name = categories[cls]
    size = math.exp(rng.uniform(math.log(spec.min_size), math.log(max_size)))
    outline = 0
    if rng.random() < spec.outline_prob:
        outline = int(np.clip(round(size * rng.uniform(0.06, 0.12)), 2, 12))
    shape = shape_polygon(name, size, rng)
    # elongated or rotated shapes are narrower than `size`: keep the box's shorter side
    # >= min_size (tiny slivers teach nothing) and its longer side <= max_size
    extent = shape.max(axis=0) - shape.min(axis=0)
    shape = shape * max(1.0, spec.min_size / extent.min())
    shape = shape * min(1.0, max_size / (shape.max(axis=0) - shape.min(axis=0)).max())
    lo, hi = shape.min(axis=0), shape.max(axis=0)
    margin = outline / 2 + 1
    # centre range that keeps the whole shape (and its outline) inside the image
    cx_lo, cx_hi = margin - lo[0], width - 1 - margin - hi[0]
    cy_lo, cy_hi = margin - lo[1], height - 1 - margin - hi[1]
    if cx_lo > cx_hi or cy_lo > cy_hi:
        return None
    for _ in range(max_tries):
        pts = shape + np.array([rng.uniform(cx_lo, cx_hi), rng.uniform(cy_lo, cy_hi)])
        x0 = max(int(np.floor(pts[:, 0].min() - margin)) - 1, 0)
        y0 = max(int(np.floor(pts[:, 1].min() - margin)) - 1, 0)
        x1 = min(int(np.ceil(pts[:, 0].max() + margin)) + 2, width)
        y1 = min(int(np.ceil(pts[:, 1].max() + margin)) + 2, height)
        mask = _render_mask(pts, (x0, y0), (y1 - y0, x1 - x0), outline)
        if not mask.any():
            continue
        region_owner = owner[y0:y1, x0:x1]
        covered = np.bincount(region_owner[mask] + 1, minlength=len(full_pixels) + 1)[1:]
        if full_pixels and np.any(np.asarray(visible) - covered
                                  < spec.min_visible * np.asarray(full_pixels)):
            continue
        colour = _pick_colour(rng, background_mean[y0:y1, x0:x1][mask].mean(axis=0))
        image[y0:y1, x0:x1][mask] = colour
        region_owner[mask] = len(full_pixels)
        for k in np.flatnonzero(covered):
            visible[k] -= int(covered[k])
        full_pixels.append(int(mask.sum()))
        visible.append(full_pixels[-1])
        ys, xs = np.nonzero(mask)
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        bw, bh = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
        return {
            "category_id": cat_id,
            "bbox": [float(bx), float(by), float(bw), float(bh)],
            "area": round(polygon_area(pts), 2),
            "segmentation": [[round(float(v), 2) for v in pts.ravel()]],
        }
    return None


def _pick_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    contrast = np.abs(PALETTE - local_mean).max(axis=1)
    candidates = np.flatnonzero(contrast >= _MIN_CONTRAST)
    if candidates.size == 0:
        candidates = np.array([int(contrast.argmax())])
    return PALETTE[candidates[rng.integers(candidates.size)]]


# ---------------------------------------------------------------------- dataset

def _render_and_write(job: tuple) -> tuple[dict, list]:
    """Image k of a split: render, write the JPEG, return (image record, its objects)."""
    image_dir, split, k, seed, spec = job
    rng = np.random.default_rng([seed, SPLIT_CODES[split], k])
    image, objects = render_synthetic_image(rng, spec)
    image_id = k + 1
    file_name = f"{image_id:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    if not ok:
        raise RuntimeError(f"could not encode {file_name}")
    with open(os.path.join(image_dir, file_name), "wb") as f:
        f.write(buf.tobytes())
    record = {"id": image_id, "file_name": file_name, "width": int(image.shape[1]), "height": int(image.shape[0])}
    return record, objects


def _single_threaded_opencv() -> None:
    # each worker is a process of its own: OpenCV's thread pool would oversubscribe the cores
    cv2.setNumThreads(1)


def _write_split(out_dir: str, split: str, num_images: int, seed: int, spec: SyntheticConfig,
                 workers: int = 1) -> str:
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    jobs = [(image_dir, split, k, seed, spec) for k in range(num_images)]
    if workers > 1 and num_images > 1:
        # every image has its own generator, so the files do not depend on who renders them;
        # "spawn": the caller may hold threads (MindSpore) that a forked child must not inherit
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, num_images), initializer=_single_threaded_opencv) as pool:
            rendered = pool.map(_render_and_write, jobs, chunksize=max(1, min(32, num_images // (4 * workers))))
    else:
        rendered = map(_render_and_write, jobs)
    images, annotations = [], []
    for record, objects in rendered:           # in image order: ids as in a serial run
        images.append(record)
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": record["id"], "iscrowd": 0, **obj})
    data = {
        "info": {"description": f"synthetic {spec.kind}, split {split}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in KINDS[spec.kind]],
    }
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    ann_path = os.path.join(ann_dir, f"instances_{split}.json")
    # written last and atomically: a file that exists describes images that all exist
    with atomic_write(ann_path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return ann_path


def make_synthetic_coco(out_dir: str, num_train: int, num_val: int, seed: int = 0,
                        spec: Optional[SyntheticConfig] = None, workers: int = 1) -> dict:
    """Write the dataset; returns {"train": ann_path, "val": ann_path, "root": out_dir}.

    The layout matches the `data:` defaults of configs/base.yaml (root + annotations/
    instances_{split}.json + {split}/), so `data.root=OUT` is all a config needs.
    `workers` > 1 renders in that many processes; the files are byte-identical to a serial run.
    """
    spec = spec or SyntheticConfig()
    if spec.kind not in KINDS:
        raise ValueError(f"unknown synthetic dataset kind {spec.kind!r} (known: {', '.join(KINDS)})")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    paths = {"root": out_dir}
    for split, n in (("train", num_train), ("val", num_val)):
        paths[split] = _write_split(out_dir, split, n, seed, spec, int(workers))
    return paths


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (dataset root)")
    parser.add_argument("--train", type=int, default=400, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", default="shapes", choices=sorted(KINDS),
                        help="shapes (the default dataset) or signs (3 other object kinds, other backgrounds)")
    defaults = SyntheticConfig()
    parser.add_argument("--min-size", type=float, default=defaults.min_size,
                        help="smallest object side in pixels (default %(default)s)")
    parser.add_argument("--max-size-frac", type=float, default=defaults.max_size_frac,
                        help="largest object side as a fraction of the shorter image side")
    parser.add_argument("--min-side", type=int, default=defaults.min_side, help="smallest image side")
    parser.add_argument("--max-side", type=int, default=defaults.max_side, help="largest image side")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that render images (same files as 1; the quickstart uses 2)")
    args = parser.parse_args(argv)
    spec = SyntheticConfig(min_size=args.min_size, max_size_frac=args.max_size_frac,
                          min_side=args.min_side, max_side=args.max_side, kind=args.kind)
    paths = make_synthetic_coco(args.out, args.train, args.val, args.seed, spec, workers=args.workers)
    print(f"wrote {args.train} train / {args.val} val images to {paths['root']}")


if __name__ == "__main__":
    main()
