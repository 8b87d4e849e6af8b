"""SSD training augmentation and test preprocessing (REFERENCE 1.9).

Training order (the M2Det PyTorch release's `preproc`):

    random_crop -> photometric_distort -> expand -> mirror -> resize to S x S
    -> drop boxes whose normalised min side <= 0.01
       (none left -> the un-augmented image, plainly resized, with its original boxes)

Every step is a function `(image, boxes, labels, rng, ...) -> (image, boxes, labels)`
on a uint8 BGR image (H, W, 3) with pixel corner boxes (G, 4), so each can be tested
alone; `rng` is a `numpy.random.Generator`, which makes a sample reproducible from its
seed. The network input is float32 CHW, BGR, 0-255 minus the config mean.

Reference quirks, kept on purpose:
- crop: the min-IoU constraint must hold for *every* GT box (the release tests
  `min_iou <= iou.min()`), unlike Caffe SSD where one satisfying box suffices
  (`require_all=False`). With several small objects the .3-.9 modes then almost never
  succeed and the draw falls back to another mode: in practice crops come from the
  "none", "any" and .1 modes. A mode whose 50 trials all fail is redrawn (the release
  loops until a mode succeeds; bounded here at `max_mode_draws`).
- expand: canvas side ratio U(1, 4) *with* an aspect jitter, as the release: canvas
  w = s*r*W, h = s/r*H, r = sqrt(U(max(.5, 1/s^2), min(2, s^2))), trials where a side
  would shrink are redrawn. `jitter_aspect=False` gives plain SSD (w = s*W, h = s*H).
- pixel arithmetic truncates to uint8 (the release assigns float results into uint8
  arrays), reproduced exactly with lookup tables.
- the training resize draws its interpolation uniformly from linear, cubic, area,
  nearest and lanczos; test preprocessing always uses linear.

Deliberate difference: the release always converts BGR->HSV->BGR inside the distortion
(a slightly lossy round trip) even when neither hue nor saturation is changed; here the
round trip is skipped in that case (a quarter of the images), which only saves time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from heads.box_ops import pairwise_iou

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                  cv2.INTER_LANCZOS4)

# None = keep the whole image; (min_iou, max_iou) with None = unbounded.
# (None, None) is the "any crop" mode (only the centre rule applies).
CROP_MODES: tuple = (None, (0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None),
                     (None, None))

Sample = tuple  # (image (H, W, 3) uint8, boxes (G, 4) float32, labels (G,))


# --------------------------------------------------------------------------- crop

def find_crop_window(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator,
                     min_iou: Optional[float], max_iou: Optional[float], max_trials: int = 50,
                     require_all: bool = True) -> Optional[np.ndarray]:
    """Draw up to `max_trials` crop windows; return the first acceptable one or None.

    A trial (all drawn at once, vectorised):
        s ~ U(0.3, 1),  r = sqrt(U(max(0.5, s^2), min(2, 1/s^2)))
        w = int(s*r*W), h = int(s/r*H)   (area s^2 of the image, aspect r^2 of the image's)
        left ~ U{0, .., W-w-1}, top ~ U{0, .., H-h-1}
    It is acceptable when the IoU of the window with the GT boxes lies in
    [min_iou, max_iou] (for every box when `require_all`, else for at least one) and at
    least one box centre lies strictly inside the window.

    Returns (left, top, right, bottom) int64 pixels, or None.
    """
    lo_iou = -np.inf if min_iou is None else min_iou
    hi_iou = np.inf if max_iou is None else max_iou
    scale = rng.uniform(0.3, 1.0, max_trials)
    ratio = np.sqrt(rng.uniform(np.maximum(0.5, scale ** 2), np.minimum(2.0, 1.0 / scale ** 2)))
    w = np.maximum((scale * ratio * width).astype(np.int64), 1)
    h = np.maximum((scale / ratio * height).astype(np.int64), 1)
    # reference: randrange(W - w), i.e. [0, W - w); the max() only guards w == W
    left = rng.integers(0, np.maximum(width - w, 1))
    top = rng.integers(0, np.maximum(height - h, 1))
    rois = np.stack([left, top, left + w, top + h], axis=1)               # (T, 4)

    iou = pairwise_iou(rois.astype(np.float32), boxes.astype(np.float32))  # (T, G)
    in_range = (iou >= lo_iou) & (iou <= hi_iou)
    ok = in_range.all(axis=1) if require_all else in_range.any(axis=1)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2                           # (G, 2)
    inside = ((centres[None, :, 0] > rois[:, None, 0]) & (centres[None, :, 0] < rois[:, None, 2])
              & (centres[None, :, 1] > rois[:, None, 1]) & (centres[None, :, 1] < rois[:, None, 3]))
    ok &= inside.any(axis=1)
    hits = np.flatnonzero(ok)
    return rois[hits[0]] if hits.size else None


def apply_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, roi: np.ndarray) -> Sample:
    """Crop to `roi`; keep boxes whose centre is strictly inside, clipped and shifted."""
    left, top, right, bottom = (int(v) for v in roi)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep = ((centres[:, 0] > left) & (centres[:, 0] < right)
            & (centres[:, 1] > top) & (centres[:, 1] < bottom))
    kept = boxes[keep].astype(np.float32)
    kept[:, 0::2] = np.clip(kept[:, 0::2], left, right) - left
    kept[:, 1::2] = np.clip(kept[:, 1::2], top, bottom) - top
    return image[top:bottom, left:right], kept, labels[keep]


def random_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                modes: Sequence = CROP_MODES, max_trials: int = 50, require_all: bool = True,
                max_mode_draws: int = 100) -> Sample:
    """SSD random crop: draw a mode, try `max_trials` windows, redraw the mode on failure."""
    if len(boxes) == 0:
        return image, boxes, labels
    height, width = image.shape[:2]
    for _ in range(max_mode_draws):
        mode = modes[rng.integers(len(modes))]
        if mode is None:
            return image, boxes, labels
        roi = find_crop_window(boxes, width, height, rng, mode[0], mode[1], max_trials, require_all)
        if roi is not None:
            return apply_crop(image, boxes, labels, roi)
    return image, boxes, labels


# ---------------------------------------------------------------------- photometric

def _truncating_lut(lut: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """lut -> floor(clip(lut * alpha + beta, 0, 255)): the release's float->uint8 assignment."""
    return np.floor(np.clip(lut * alpha + beta, 0, 255))


def photometric_distort(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                        rng: np.random.Generator, brightness: float = 32.0,
                        contrast: tuple[float, float] = (0.5, 1.5), hue: int = 18,
                        saturation: tuple[float, float] = (0.5, 1.5)) -> Sample:
    """Each with probability 1/2, in this order:
        brightness  p + U(-32, 32)
        contrast    p * U(0.5, 1.5)
        hue         H + U{-18..18} mod 180   (OpenCV uint8 HSV: H in 0..179)
        saturation  S * U(0.5, 1.5)
    each result clipped to [0, 255] and truncated to uint8. Boxes are unchanged.

    Brightness and contrast act per value, so both fold into one 256-entry lookup
    table; hue and saturation likewise into one 3-channel table on the HSV image.
    """
    do_brightness, do_contrast, do_hue, do_saturation = rng.random(4) < 0.5
    identity = np.arange(256, dtype=np.float64)
    if do_brightness or do_contrast:
        lut = identity
        if do_brightness:
            lut = _truncating_lut(lut, beta=rng.uniform(-brightness, brightness))
        if do_contrast:
            lut = _truncating_lut(lut, alpha=rng.uniform(*contrast))
        image = cv2.LUT(image, lut.astype(np.uint8))
    if do_hue or do_saturation:
        h_lut, s_lut = identity, identity
        if do_hue:
            h_lut = (identity + rng.integers(-hue, hue + 1)) % 180
        if do_saturation:
            s_lut = _truncating_lut(identity, alpha=rng.uniform(*saturation))
        lut3 = np.stack([h_lut, s_lut, identity], axis=1).astype(np.uint8).reshape(256, 1, 3)
        hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_BGR2HSV), lut3)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return image, boxes, labels


# ---------------------------------------------------------------------- geometry

def expand(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
           mean: Sequence[float], p: float = 0.6, max_ratio: float = 4.0,
           jitter_aspect: bool = True, max_trials: int = 50) -> Sample:
    """Zoom out: with probability p, place the image on a larger canvas filled with the mean.

    Canvas: s ~ U(1, max_ratio); with `jitter_aspect` (the release) r = sqrt(U(max(.5,
    1/s^2), min(2, s^2))), W' = int(s*r*W), H' = int(s/r*H), trials with s*r < 1 or s/r < 1
    redrawn; the image's top-left corner ~ U{0..W'-W} x U{0..H'-H}. The fill is the mean
    truncated to uint8, as the release's assignment into a uint8 canvas.
    """
    if rng.random() >= p:
        return image, boxes, labels
    height, width = image.shape[:2]
    scale = rng.uniform(1.0, max_ratio, max_trials)
    if jitter_aspect:
        ratio = np.sqrt(rng.uniform(np.maximum(0.5, 1.0 / scale ** 2), np.minimum(2.0, scale ** 2)))
        ws, hs = scale * ratio, scale / ratio
        valid = np.flatnonzero((ws >= 1) & (hs >= 1))
        if valid.size == 0:
            return image, boxes, labels
        ws, hs = ws[valid[0]], hs[valid[0]]
    else:
        ws = hs = scale[0]
    new_w, new_h = int(ws * width), int(hs * height)
    left = int(rng.integers(0, new_w - width + 1))
    top = int(rng.integers(0, new_h - height + 1))
    fill = tuple(float(int(v)) for v in mean)
    canvas = cv2.copyMakeBorder(image, top, new_h - height - top, left, new_w - width - left,
                                cv2.BORDER_CONSTANT, value=fill)
    shifted = boxes.astype(np.float32) + np.array([left, top, left, top], dtype=np.float32)
    return canvas, shifted, labels


def mirror(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
           p: float = 0.5) -> Sample:
    """Horizontal flip with probability p: x1' = W - x2, x2' = W - x1."""
    if rng.random() >= p:
        return image, boxes, labels
    width = image.shape[1]
    flipped = boxes.astype(np.float32).copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return cv2.flip(image, 1), flipped, labels


def resize(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
           size: int, interpolations: Sequence[int] = INTERPOLATIONS) -> Sample:
    """Resize to size x size (aspect not kept) with a random interpolation.

    Boxes come back *normalised* to [0, 1] by the pre-resize width and height, which is
    what the priors and the box coder work in.
    """
    height, width = image.shape[:2]
    interp = interpolations[int(rng.integers(len(interpolations)))]
    out = cv2.resize(image, (size, size), interpolation=interp)
    scale = np.array([width, height, width, height], dtype=np.float32)
    return out, boxes.astype(np.float32) / scale, labels


def filter_small_boxes(boxes: np.ndarray, labels: np.ndarray,
                       min_side: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Keep normalised boxes whose shorter side is > min_side (strict, as the release)."""
    keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > min_side
    return boxes[keep], labels[keep]


# ---------------------------------------------------------------------- network input

def to_network_input(image: np.ndarray, mean: Sequence[float], std: Optional[Sequence[float]] = None,
                     rgb: bool = False) -> np.ndarray:
    """uint8 HWC BGR -> float32 CHW, 0-255 minus `mean` (per channel, BGR order), divided by
    `std` when given (also BGR order); `rgb` puts the channels in RGB order afterwards
    (torchvision-style backbones)."""
    height, width = image.shape[:2]
    out = np.empty((3, height, width), dtype=np.float32)
    # cv2.split gives contiguous planes; subtracting into the output avoids a transpose copy
    for c, plane in enumerate(cv2.split(image)):
        np.subtract(plane, np.float32(mean[c]), out=out[c], dtype=np.float32)
        if std is not None and float(std[c]) != 1.0:
            out[c] /= np.float32(std[c])
    return out[::-1].copy() if rgb else out


def preprocess_for_test(image: np.ndarray, size: int, mean: Sequence[float],
                        interpolation: int = cv2.INTER_LINEAR, std: Optional[Sequence[float]] = None,
                        rgb: bool = False) -> np.ndarray:
    """Evaluation / inference: plain (aspect-changing) linear resize to size x size, minus mean."""
    return to_network_input(cv2.resize(image, (size, size), interpolation=interpolation), mean, std, rgb)


class SSDTrainTransform:
    """The full REFERENCE 1.9 training augmentation for one sample.

    __call__(image uint8 BGR (H, W, 3), boxes (G, 4) pixel corners, labels (G,), rng)
        -> (image float32 (3, S, S), boxes (K, 4) float32 normalised corners, labels (K,))
    """

    def __init__(self, size: int, mean: Sequence[float], expand_p: float = 0.6,
                 expand_max_ratio: float = 4.0, crop_require_all: bool = True,
                 min_box_side: float = 0.01, std: Optional[Sequence[float]] = None, rgb: bool = False):
        self.size = int(size)
        self.mean = tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.rgb = bool(rgb)
        self.expand_p = expand_p
        self.expand_max_ratio = expand_max_ratio
        self.crop_require_all = crop_require_all
        self.min_box_side = min_box_side

    def _plain(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator) -> Sample:
        # images without boxes and the fallback: resized as-is (random interpolation, as the
        # release reuses its training resize for them)
        out, norm_boxes, labels = resize(image, boxes, labels, rng, self.size)
        return to_network_input(out, self.mean, self.std, self.rgb), norm_boxes, labels

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> Sample:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1)
        if len(boxes) == 0:
            return self._plain(image, boxes, labels, rng)
        img, b, lab = random_crop(image, boxes, labels, rng, require_all=self.crop_require_all)
        img, b, lab = photometric_distort(img, b, lab, rng)
        img, b, lab = expand(img, b, lab, rng, self.mean, p=self.expand_p,
                             max_ratio=self.expand_max_ratio)
        img, b, lab = mirror(img, b, lab, rng)
        img, b, lab = resize(img, b, lab, rng, self.size)
        b, lab = filter_small_boxes(b, lab, self.min_box_side)
        if len(b) == 0:
            return self._plain(image, boxes, labels, rng)
        return to_network_input(img, self.mean, self.std, self.rgb), b, lab


class SSDPlainTransform:
    """Training without augmentation (cfg.data.augment = false): the test preprocessing,
    with the boxes normalised to [0, 1]. Same call signature as SSDTrainTransform."""

    def __init__(self, size: int, mean: Sequence[float], std: Optional[Sequence[float]] = None,
                 rgb: bool = False):
        self.size = int(size)
        self.mean = tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.rgb = bool(rgb)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> Sample:
        height, width = image.shape[:2]
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale
        return (preprocess_for_test(image, self.size, self.mean, std=self.std, rgb=self.rgb), boxes,
                np.asarray(labels).reshape(-1))
