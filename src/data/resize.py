"""Network input sizes: square (M2Det) or keep-ratio on a fixed canvas (R50-FPN), and multi-scale.

Two policies (`data.resize_mode`):

- "square": the image is resized to S x S, aspect not kept (M2Det/SSD; the SSD augmentation of
  transforms.py). S = model.input_size at test time.
- "keep_ratio": mmdetection's Resize(keep_ratio=True) + Pad(size_divisor=32), with static shapes:
  the image is scaled by min(S / short side, L / long side) (S = the short-side target,
  L = data.max_size, 1333 with S = 800) and placed top-left on a fixed canvas of
  ceil32(S) x ceil32(L) (800 x 1344), padding zero after normalisation. Deviation: mmdetection pads
  each batch to its own largest image, which can be portrait (e.g. 1344 x 800); here the canvas is
  always landscape, so a portrait image is scaled to fit its height (long side <= ceil32(S)), i.e.
  smaller than mmdetection would make it. About a quarter of COCO images are portrait.

Multi-scale training (`data.train_sizes`, e.g. short sides 480..960 for the "ms" models): every
batch draws one size from the set, deterministically from (seed, epoch, batch index), so all
images of a batch share a shape and GRAPH mode compiles one graph per distinct size. For
keep_ratio the long-side cap stays L (mmdetection's img_scale=[(1333, 480), (1333, 960)]) and
the canvas of size s is ceil32(s) x ceil32(min(L, s * L / S)).

`InputPolicy.scale(orig_hw, size)` gives the (x, y) factors from original pixels to network-input
pixels; the evaluator divides decoded boxes by them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from src.data.transforms import mirror, preprocess_for_test, to_network_input

RESIZE_MODES = ("square", "keep_ratio")


def _round_up(n: float, divisor: int) -> int:
    n = int(np.ceil(n))
    return -(-n // divisor) * divisor if divisor > 1 else n


@dataclass(frozen=True)
class InputPolicy:
    """How an image becomes a network input; see the module docstring.

    mode: "square" | "keep_ratio". test_size: S (square side or short side).
    train_sizes: multi-scale set (empty: S only). max_size: L (keep_ratio).
    size_divisor: canvas sides are multiples of it (keep_ratio).
    """

    mode: str = "square"
    test_size: int = 320
    train_sizes: tuple = ()
    max_size: int = 1333
    size_divisor: int = 32

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"data.resize_mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"input sizes must be positive, got {list(self.sizes)}")

    @property
    def sizes(self) -> tuple:
        """The training sizes (the test size alone when no multi-scale set is given)."""
        return tuple(self.train_sizes) or (self.test_size,)

    @property
    def multi_scale(self) -> bool:
        return len(set(self.sizes)) > 1 or self.sizes[0] != self.test_size

    def long_side(self, size: int) -> int:
        if self.mode == "square":
            return int(size)
        return int(min(self.max_size, round(size * self.max_size / self.test_size)))

    def canvas(self, size: Optional[int] = None) -> tuple[int, int]:
        """(H, W) of the network input for `size` (default: the test size)."""
        size = self.test_size if size is None else int(size)
        if self.mode == "square":
            return size, size
        return _round_up(size, self.size_divisor), _round_up(self.long_side(size), self.size_divisor)

    def canvases(self) -> list[tuple[int, int]]:
        """Every input shape the network sees (training sizes and the test size)."""
        return sorted({self.canvas(s) for s in self.sizes + (self.test_size,)})

    def resized_hw(self, orig_hw: Sequence[int], size: Optional[int] = None) -> tuple[int, int]:
        """(h, w) of the image content on the canvas."""
        size = self.test_size if size is None else int(size)
        h, w = int(orig_hw[0]), int(orig_hw[1])
        if self.mode == "square":
            return size, size
        canvas_h, canvas_w = self.canvas(size)
        scale = min(size / min(h, w), self.long_side(size) / max(h, w), canvas_h / h, canvas_w / w)
        return min(int(h * scale + 0.5), canvas_h), min(int(w * scale + 0.5), canvas_w)

    def scale(self, orig_hw: Sequence[int], size: Optional[int] = None) -> tuple[float, float]:
        """(sx, sy): network-input pixels per original pixel."""
        new_h, new_w = self.resized_hw(orig_hw, size)
        return new_w / float(orig_hw[1]), new_h / float(orig_hw[0])

    def choose_size(self, seed: int, epoch: int, batch_index: int) -> int:
        """The training size of one batch, the same for every sample (and rank) of it."""
        sizes = self.sizes
        if len(sizes) == 1:
            return sizes[0]
        rng = np.random.default_rng([int(seed), int(epoch), int(batch_index), 0x5CA1E])
        return int(sizes[int(rng.integers(len(sizes)))])


def keep_ratio_input(image: np.ndarray, policy: InputPolicy, size: Optional[int], mean: Sequence[float],
                     std: Optional[Sequence[float]] = None, rgb: bool = False) -> np.ndarray:
    """Keep-ratio bilinear resize, normalise, pad bottom/right with zeros to the canvas -> (3, H, W)."""
    canvas_h, canvas_w = policy.canvas(size)
    new_h, new_w = policy.resized_hw(image.shape[:2], size)
    content = to_network_input(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), mean, std, rgb)
    out = np.zeros((3, canvas_h, canvas_w), dtype=np.float32)
    out[:, :new_h, :new_w] = content
    return out


@dataclass(frozen=True)
class TestInput:
    """uint8 BGR image -> the network input (3, H, W) at test time: the evaluation pipeline,
    infer.py, serve.py and the Python API all call this one object."""

    policy: InputPolicy
    mean: tuple
    std: Optional[tuple] = None
    rgb: bool = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.policy.mode == "square":
            return preprocess_for_test(image, self.policy.test_size, self.mean, std=self.std, rgb=self.rgb)
        return keep_ratio_input(image, self.policy, None, self.mean, self.std, self.rgb)


class KeepRatioTrainTransform:
    """mmdetection's R50-FPN training pipeline: keep-ratio resize, horizontal flip (p 0.5), pad.

    __call__(image uint8 BGR (H, W, 3), boxes (G, 4) pixels, labels (G,), rng, size)
        -> (image float32 (3, Hc, Wc), boxes (G, 4) normalised to the canvas, labels (G,))
    """

    def __init__(self, policy: InputPolicy, mean: Sequence[float], std: Optional[Sequence[float]] = None,
                 rgb: bool = False, flip_p: float = 0.5):
        self.policy = policy
        self.mean = tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.rgb = bool(rgb)
        self.flip_p = float(flip_p)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 size: Optional[int] = None):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1)
        image, boxes, labels = mirror(image, boxes, labels, rng, p=self.flip_p)
        sx, sy = self.policy.scale(image.shape[:2], size)
        canvas_h, canvas_w = self.policy.canvas(size)
        out = keep_ratio_input(image, self.policy, size, self.mean, self.std, self.rgb)
        factor = np.array([sx / canvas_w, sy / canvas_h, sx / canvas_w, sy / canvas_h], dtype=np.float32)
        return out, boxes * factor, labels
