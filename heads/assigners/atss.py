"""ATSS assignment (adaptive training sample selection, REFERENCE 2.2), NumPy, for the data pipeline.

For anchors (N, 4) and GT boxes (G, 4), both corner pixels, anchors listed level by level:

1. IoU(anchor, GT) and the distance between the anchor centre and the GT centre.
2. Per GT and per level, the k = min(topk, n_level) anchors nearest the GT centre are its
   candidates (K = sum over levels of k candidates per GT). Equal distances: the lower anchor
   index first (so with several anchors per cell, the whole nearest cell before the next).
3. Per GT threshold = mean + std of its K candidates' IoUs, std UNBIASED (ddof = 1, as
   torch.std in the reference). K = 1 makes the std NaN and, as in the reference, that GT
   gets no positive.
4. A candidate is positive for the GT if IoU >= threshold - 1e-9 and the anchor CENTRE lies
   strictly inside the GT: min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01 (pixels). The
   1e-9 slack only absorbs summation rounding, so that a candidate whose IoU equals the
   threshold in exact arithmetic (e.g. all candidates tied, std 0) is positive as the formula
   says, whatever order the mean was summed in. An IoU of 0 can be positive (threshold 0).
5. An anchor positive for several GTs takes the one with the highest IoU; ties go to the
   lowest GT index.
6. No GT: every anchor is background.

Everything is computed in float64 whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from heads.assigners.assignment import Assignment
from heads.box_ops import box_area
from heads.labels import BACKGROUND

THRESHOLD_SLACK = 1e-9
CENTRE_MARGIN = 0.01


@dataclass
class ATSSAssignResult(Assignment):
    """Per-anchor assignment (gt_index: the assigned GT for positives, BACKGROUND otherwise).

    labels:   (N,) int64, the assigned GT's label, BACKGROUND (-1) otherwise (the sigmoid
              losses treat any label outside [0, C) as background).
    iou:      (N,) float32, IoU of the anchor with its assigned GT (0 for background).
    """

    labels: np.ndarray
    iou: np.ndarray


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) corner boxes -> (..., 2) centres."""
    return np.stack([(boxes[..., 0] + boxes[..., 2]) / 2.0, (boxes[..., 1] + boxes[..., 3]) / 2.0], axis=-1)


def nearest_k(distances: np.ndarray, k: int) -> np.ndarray:
    """(G, k) row indices of the k smallest entries of each column of distances (n, G), in
    increasing index order; among equal distances the lower index is taken.

    A partition plus a tie fill instead of a full sort: O(n G) for the (n, G) level blocks.
    """
    n, num_cols = distances.shape
    if k >= n:
        return np.broadcast_to(np.arange(n), (num_cols, n)).copy()
    kth = np.partition(distances, k - 1, axis=0)[k - 1]                 # (G,) k-th smallest
    chosen = distances < kth
    tied = distances == kth
    room = k - chosen.sum(axis=0)                                        # >= 1 by definition of kth
    crowded = np.flatnonzero(tied.sum(axis=0) > room)                   # more ties than room left
    if crowded.size:
        sub = tied[:, crowded]
        tied[:, crowded] = sub & (np.cumsum(sub, axis=0) <= room[crowded])
    chosen |= tied
    _, rows = np.nonzero(chosen.T)                                       # column-major: per GT, sorted
    return rows.reshape(num_cols, k)


def aligned_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[..., :] with b[..., :] for broadcastable corner boxes (..., 4) -> (...)."""
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class ATSSAssigner:
    """Assign anchors to GTs by the ATSS rule (REFERENCE 2.2); see the module docstring."""

    def __init__(self, topk: int = 9):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = int(topk)

    def assign(self, anchors: np.ndarray, num_level_anchors: Sequence[int], gt_boxes: np.ndarray,
               gt_labels: np.ndarray) -> ATSSAssignResult:
        """anchors (N, 4), num_level_anchors summing to N, gt_boxes (G, 4), gt_labels (G,)."""
        num_anchors = anchors.shape[0]
        if sum(num_level_anchors) != num_anchors:
            raise ValueError(f"level counts {list(num_level_anchors)} do not add up to {num_anchors} anchors")
        num_gts = gt_boxes.shape[0]
        if num_gts == 0 or num_anchors == 0:
            return ATSSAssignResult(np.full(num_anchors, BACKGROUND, dtype=np.int64),
                                    np.full(num_anchors, BACKGROUND, dtype=np.int64),
                                    np.zeros(num_anchors, dtype=np.float32))
        anchors = np.asarray(anchors, dtype=np.float64)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)

        centres = box_centres(anchors)                                      # (N, 2)
        gt_centres = box_centres(gt_boxes)                                  # (G, 2)
        dx = centres[:, None, 0] - gt_centres[None, :, 0]
        dy = centres[:, None, 1] - gt_centres[None, :, 1]
        distances = np.sqrt(dx * dx + dy * dy)                              # (N, G)

        candidates, start = [], 0                                           # (G, k_l) per level
        for count in num_level_anchors:
            if count > 0:
                candidates.append(start + nearest_k(distances[start:start + count], min(self.topk, count)))
            start += count
        candidates = np.concatenate(candidates, axis=1)                     # (G, K) anchor indices
        num_candidates = candidates.shape[1]

        cand_boxes = anchors[candidates]                                    # (G, K, 4)
        cand_iou = aligned_iou(cand_boxes, gt_boxes[:, None, :])            # (G, K)
        mean = cand_iou.mean(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = ((cand_iou - mean) ** 2).sum(axis=1, keepdims=True) / (num_candidates - 1)
        threshold = mean + np.sqrt(var)                                     # NaN when K = 1

        cand_centres = centres[candidates]                                  # (G, K, 2)
        box = gt_boxes[:, None, :]
        margin = np.minimum(np.minimum(cand_centres[..., 0] - box[..., 0], cand_centres[..., 1] - box[..., 1]),
                            np.minimum(box[..., 2] - cand_centres[..., 0], box[..., 3] - cand_centres[..., 1]))
        positive = (cand_iou >= threshold - THRESHOLD_SLACK) & (margin > CENTRE_MARGIN)

        # one GT per anchor: highest IoU, then lowest GT index (lexsort's last key is the primary)
        gt_of_pair = np.broadcast_to(np.arange(num_gts)[:, None], candidates.shape)[positive]
        anchor_of_pair = candidates[positive]
        iou_of_pair = cand_iou[positive]
        order = np.lexsort((gt_of_pair, -iou_of_pair, anchor_of_pair))
        first = np.ones(order.size, dtype=bool)
        first[1:] = anchor_of_pair[order[1:]] != anchor_of_pair[order[:-1]]
        winners = order[first]

        gt_index = np.full(num_anchors, BACKGROUND, dtype=np.int64)
        best_iou = np.zeros(num_anchors, dtype=np.float32)
        gt_index[anchor_of_pair[winners]] = gt_of_pair[winners]
        best_iou[anchor_of_pair[winners]] = iou_of_pair[winners]
        labels = np.where(gt_index >= 0, gt_labels[np.maximum(gt_index, 0)], BACKGROUND).astype(np.int64)
        return ATSSAssignResult(gt_index, labels, best_iou)

    __call__ = assign
