"""Max-IoU assignment of ground-truth boxes to priors / anchors.

Reference semantics (the SSD matcher of the M2Det PyTorch release, REFERENCE 1.8):

1. IoU between every GT (G) and every prior (P), priors in corner form.
2. For each prior, its best GT (argmax over GTs; ties -> the lowest GT index).
3. For each GT, its best prior (argmax over priors; ties -> the lowest prior index).
4. Every GT's best prior is forced onto that GT: its IoU is overwritten with 2 so it
   is positive whatever the threshold. When several GTs share the same best prior the
   reference loops `for j in range(G): best_truth_idx[best_prior_idx[j]] = j`, so the
   **later GT (higher index) wins**; reproduced exactly here.
5. Priors whose (possibly overwritten) best IoU is below `pos_threshold` are background.

With `neg_threshold` set (RetinaNet-style assigners: positive >= 0.5, negative < 0.4),
priors with best IoU in [neg_threshold, pos_threshold) are ignored instead of being
background. No GT -> every prior is background.

`force_all_ties` (mmdetection's `gt_max_assign_all`, on for RetinaNet): step 4 forces every
prior whose IoU with a GT equals that GT's best IoU, not only the first one; anchors of the
same shape at symmetric positions around a GT all become positive. Later GTs still win, and a
GT whose best IoU is 0 forces nothing (mmdetection would force every anchor that misses it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heads.assigners.assignment import Assignment
from heads.box_ops import pairwise_iou
from heads.labels import BACKGROUND, IGNORE


@dataclass
class AssignResult(Assignment):
    """Per-prior assignment (gt_index: the matched GT for positives, BACKGROUND (-1) or IGNORE (-2)).

    max_iou:  (P,) float, each prior's best IoU with any GT (before forcing; 0 with no GT).
    """

    max_iou: np.ndarray


class MaxIoUAssigner:
    """Assign each prior to its best-overlapping GT when that IoU is high enough.

    Args:
        pos_threshold: best IoU >= this -> positive (SSD: 0.5).
        neg_threshold: if given, best IoU < this -> background and the band
            [neg_threshold, pos_threshold) -> IGNORE; if None, everything below
            `pos_threshold` is background (SSD).
        force_best_prior: force each GT's best prior positive (SSD and RetinaNet do;
            guarantees every GT, however small or oddly shaped, trains some prior).
        min_pos_iou: a GT's best prior is only forced when that IoU is >= this. The SSD
            reference forces unconditionally (0.0, and `>=` keeps an IoU of exactly 0).
        force_all_ties: force every prior tied at a GT's best IoU (mmdetection), not just the
            lowest-index one (the SSD reference).
    """

    def __init__(self, pos_threshold: float = 0.5, neg_threshold: float | None = None,
                 force_best_prior: bool = True, min_pos_iou: float = 0.0, force_all_ties: bool = False):
        if neg_threshold is not None and neg_threshold > pos_threshold:
            raise ValueError(f"neg_threshold {neg_threshold} must be <= pos_threshold {pos_threshold}")
        self.pos_threshold = float(pos_threshold)
        self.neg_threshold = None if neg_threshold is None else float(neg_threshold)
        self.force_best_prior = bool(force_best_prior)
        self.min_pos_iou = float(min_pos_iou)
        self.force_all_ties = bool(force_all_ties)

    def assign(self, gt_boxes: np.ndarray, prior_boxes: np.ndarray) -> AssignResult:
        """gt_boxes (G, 4) and prior_boxes (P, 4), both corner form in the same units."""
        num_priors = prior_boxes.shape[0]
        if gt_boxes.shape[0] == 0:
            return AssignResult(np.full(num_priors, BACKGROUND, dtype=np.int64),
                                np.zeros(num_priors, dtype=np.float32))
        return self.assign_from_iou(pairwise_iou(gt_boxes, prior_boxes))

    __call__ = assign

    def assign_from_iou(self, iou: np.ndarray) -> AssignResult:
        """Assignment from a precomputed (G, P) IoU matrix (G >= 1)."""
        num_gts, num_priors = iou.shape
        if num_gts == 0:
            return AssignResult(np.full(num_priors, BACKGROUND, dtype=np.int64),
                                np.zeros(num_priors, dtype=np.float32))
        best_gt = iou.argmax(axis=0)                                   # (P,)
        best_gt_iou = iou[best_gt, np.arange(num_priors)]              # (P,)
        overlap = best_gt_iou.copy()

        if self.force_best_prior:
            best_prior = iou.argmax(axis=1)                            # (G,)
            gts = np.arange(num_gts)
            eligible = iou[gts, best_prior] >= self.min_pos_iou
            gts, best_prior = gts[eligible], best_prior[eligible]
            if self.force_all_ties:
                self._force_ties(iou, gts, best_prior, best_gt, overlap)
            else:
                # "later GT wins": keep the last occurrence of each forced prior. Fancy
                # assignment with repeated indices has no documented order in NumPy, so
                # the winner is picked explicitly.
                uniq, first_in_rev = np.unique(best_prior[::-1], return_index=True)
                best_gt[uniq] = gts[::-1][first_in_rev]
                overlap[uniq] = 2.0

        gt_index = best_gt.astype(np.int64)
        if self.neg_threshold is None:
            gt_index[overlap < self.pos_threshold] = BACKGROUND
        else:
            gt_index[overlap < self.pos_threshold] = IGNORE
            gt_index[overlap < self.neg_threshold] = BACKGROUND
        return AssignResult(gt_index, best_gt_iou)

    @staticmethod
    def _force_ties(iou, gts, best_prior, best_gt, overlap) -> None:
        """Force, in place, every prior tied at the best IoU of one of `gts` (later GT wins)."""
        best = iou[gts, best_prior]                                    # (g,)
        ties = (iou[gts] == best[:, None]) & (best[:, None] > 0)       # (g, P)
        forced = ties.any(axis=0)
        last = ties.shape[0] - 1 - ties[::-1].argmax(axis=0)           # last tied GT per prior
        best_gt[forced] = gts[last[forced]]
        overlap[forced] = 2.0
