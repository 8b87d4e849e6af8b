"""Training targets of the dense one-stage heads: one image's GT -> fixed-shape per-anchor targets.

    boxes (G, 4) normalised to the network input, labels (G,) 0-based, input (H, W)
        -> anchors of that input size (`AnchorLayout`, the same `AnchorGenerator` values the head
           builds in its graph)
        -> assigner: ATSS (topk 9, REFERENCE 2.2) or max-IoU (RetinaNet: >= 0.5 positive, < 0.4
           background, ignored between, every GT's best anchor forced positive)
        -> labels (N,) int32:   class 0..C-1, -1 background, -2 ignored (max-IoU only)
           boxes  (N, 4) float32: the assigned GT box in input pixels, zeros where not positive

Everything the losses need beyond that (IoUs, centerness, deltas, distances) is computed by
the head in its graph from these two arrays, so every dense head takes the same targets:
`head.loss(outputs, labels, boxes)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from heads.anchors import AnchorGenerator
from heads.assigners.atss import ATSSAssigner
from heads.assigners.max_iou import MaxIoUAssigner
from heads.labels import BACKGROUND, IGNORE
from src.data.targets import ground_truth_arrays

ASSIGNERS = ("atss", "max_iou")


@dataclass
class AnchorLayout:
    """The anchors of a dense head for each network input size it will see.

    generator: the head's `AnchorGenerator` (strides = the head's level strides).
    feature_sizes: {(H, W) of the network input: [(h_l, w_l) per level]}, by shape arithmetic
        (src.builder.build_priors fills it for the test size and every training size).
    assigner: how the data pipeline assigns targets to these anchors, "atss" or "max_iou".
    test_hw: the test input (H, W) (for `num_priors`).
    """

    generator: AnchorGenerator
    feature_sizes: dict
    assigner: str = "atss"
    test_hw: tuple = ()
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_sizes(self) -> list[tuple[int, int]]:
        return sorted(self.feature_sizes)

    def anchors(self, input_hw: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """(N, 4) float32 corner-pixel anchors and per-level counts for an input of input_hw."""
        key = (int(input_hw[0]), int(input_hw[1]))
        if key not in self._cache:
            if key not in self.feature_sizes:
                raise ValueError(f"no anchor layout for a {key[0]}x{key[1]} input (known: {self.input_sizes})")
            self._cache[key] = self.generator.grid_anchors(self.feature_sizes[key])
        return self._cache[key]

    def num_anchors(self, input_hw: Sequence[int]) -> int:
        return int(self.anchors(input_hw)[0].shape[0])

    def num_priors(self) -> int:
        """Anchors at the test input size (the analogue of `SSDPriors.num_priors`)."""
        return self.num_anchors(self.test_hw)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}      # workers rebuild what they need instead of receiving copies
        return state


class DenseTargetEncoder:
    """Assign one image's GT to the anchors of its input size.

    Args:
        layout: the head's anchors per input size.
        assigner: "atss" (ATSS, RetinaNet-free heads) or "max_iou" (RetinaNet).
        atss_topk: candidates per level for ATSS (9).
        pos_iou, neg_iou: max-IoU thresholds (0.5, 0.4).
    """

    def __init__(self, layout: AnchorLayout, assigner: str = "atss", atss_topk: int = 9,
                 pos_iou: float = 0.5, neg_iou: float = 0.4):
        if assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {ASSIGNERS}, got {assigner!r}")
        self.layout = layout
        self.kind = assigner
        self.atss = ATSSAssigner(atss_topk)
        self.max_iou = MaxIoUAssigner(pos_threshold=pos_iou, neg_threshold=neg_iou, force_best_prior=True,
                                      min_pos_iou=0.0, force_all_ties=True)

    def __call__(self, boxes: np.ndarray, labels: np.ndarray, input_hw: Sequence[int]):
        """boxes (G, 4) normalised to the input, labels (G,) -> (labels (N,) int32, boxes (N, 4) pixels)."""
        anchors, counts = self.layout.anchors(input_hw)
        num = anchors.shape[0]
        out_labels = np.full(num, BACKGROUND, dtype=np.int32)
        out_boxes = np.zeros((num, 4), dtype=np.float32)
        boxes, labels = ground_truth_arrays(boxes, labels)
        if boxes.shape[0] == 0:
            return out_labels, out_boxes
        h, w = int(input_hw[0]), int(input_hw[1])
        pixels = boxes * np.array([w, h, w, h], dtype=np.float32)
        if self.kind == "atss":
            gt_index = self.atss.assign(anchors, counts, pixels, labels).gt_index
        else:
            gt_index = self.max_iou.assign(pixels, anchors).gt_index
            out_labels[gt_index == IGNORE] = IGNORE
        pos = np.flatnonzero(gt_index >= 0)
        out_labels[pos] = labels[gt_index[pos]].astype(np.int32)
        out_boxes[pos] = pixels[gt_index[pos]]
        return out_labels, out_boxes
