"""What every assigner returns: each anchor's ground-truth index, in heads/labels.py's convention.

    gt_index[i] >= 0          anchor i is positive for GT gt_index[i]
    gt_index[i] == BACKGROUND anchor i is a negative
    gt_index[i] == IGNORE     anchor i takes no part in the classification loss

Assigners add what they alone know (max-IoU: each anchor's best IoU; ATSS: the assigned label
and IoU) by subclassing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heads.labels import BACKGROUND


@dataclass
class Assignment:
    gt_index: np.ndarray

    @property
    def pos_mask(self) -> np.ndarray:
        return self.gt_index >= 0

    @property
    def neg_mask(self) -> np.ndarray:
        return self.gt_index == BACKGROUND

    @property
    def num_pos(self) -> int:
        return int(np.count_nonzero(self.gt_index >= 0))
