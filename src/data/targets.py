"""SSD training targets: ground truth of one image -> fixed-shape per-prior targets.

The network graph has static shapes, so everything data-dependent (how many GTs, which
prior matches which) is resolved here, in the data pipeline:

    boxes (G, 4) normalised corners, labels (G,) 0-based
        -> assigner (max IoU, REFERENCE 1.8) -> matched GT per prior
        -> loc_t  (P, 4) float32: SSD encoding of the matched GT (REFERENCE 1.8),
                                  zeros for priors that are not positive
           conf_t (P,)   int32:   the softmax column: 0 = background, label + 1 for positives
                                  (heads.labels.softmax_column), IGNORE (-2) for priors the
                                  assigner ignores (never for SSD)

The loss only reads loc_t on positives, so non-positives are left at zero rather than
encoding their (meaningless) best GT as the reference does.
"""
from __future__ import annotations

import numpy as np

from heads.assigners.max_iou import MaxIoUAssigner
from heads.box_coder import SSDBoxCoder
from heads.labels import IGNORE, softmax_column
from heads.priors import center_to_corner


def ground_truth_arrays(boxes, labels) -> tuple[np.ndarray, np.ndarray]:
    """One image's ground truth as (G, 4) float32 boxes and (G,) labels, checked to agree."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    return boxes, labels


class SSDTargetEncoder:
    """Encode one image's GT against fixed priors.

    Args:
        priors: (P, 4) (cx, cy, w, h) in [0, 1], as `SSDPriors.boxes()`.
        box_coder: the SSD coder with the config's variances.
        assigner: decides which GT (if any) each prior learns from.
    """

    def __init__(self, priors: np.ndarray, box_coder: SSDBoxCoder, assigner: MaxIoUAssigner):
        self.priors = np.ascontiguousarray(priors, dtype=np.float32)
        # corner form once, not per image: the IoU runs against it for every sample
        self.prior_corners = np.ascontiguousarray(center_to_corner(self.priors), dtype=np.float32)
        self.box_coder = box_coder
        self.assigner = assigner

    @property
    def num_priors(self) -> int:
        return self.priors.shape[0]

    def __call__(self, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes (G, 4) normalised corners, labels (G,) 0-based -> (loc_t (P, 4), conf_t (P,))."""
        num_priors = self.num_priors
        loc_t = np.zeros((num_priors, 4), dtype=np.float32)
        conf_t = np.zeros(num_priors, dtype=np.int32)
        boxes, labels = ground_truth_arrays(boxes, labels)
        if boxes.shape[0] == 0:
            return loc_t, conf_t

        result = self.assigner.assign(boxes, self.prior_corners)
        pos = np.flatnonzero(result.gt_index >= 0)
        matched = result.gt_index[pos]
        conf_t[pos] = softmax_column(labels[matched].astype(np.int32))
        conf_t[result.gt_index == IGNORE] = IGNORE
        # only positives are encoded: a few hundred rows instead of all P
        loc_t[pos] = self.box_coder.encode(boxes[matched], self.priors[pos])
        return loc_t, conf_t
