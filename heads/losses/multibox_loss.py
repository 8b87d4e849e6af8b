"""SSD MultiBox loss (REFERENCE 1.8), as pure functions of tensors.

    L = (sum_{pos} SmoothL1(loc_p - loc_t) + sum_{pos + mined neg} CE(conf_p, conf_t)) / N

with N = max(number of positive priors in the batch, 1), SmoothL1 with beta = 1 summed
over the 4 coordinates, and the negatives chosen per image by hard-negative mining: the
background priors with the largest cross-entropy, num_neg = min(ratio * num_pos, P - 1).

Deliberate deviation: the reference mines ratio * 0 = 0 negatives in an image without
objects, so such images (COCO keeps them as negatives) teach the network nothing. Here an
image with no positive prior contributes its `empty_image_negatives` hardest negatives
(0 restores the reference exactly); images with objects are mined exactly as the reference.
The MindSpore model zoo calls this the "Multibox MSE loss"; it is this loss.

Everything has static shapes (masks instead of gathers), so it compiles in GRAPH mode.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def smooth_l1(diff, beta: float = 1.0):
    """Elementwise Smooth-L1: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta."""
    ad = ops.abs(diff)
    return ops.where(ad < beta, 0.5 * ad * ad / beta, ad - 0.5 * beta)


def softmax_cross_entropy(logits, labels):
    """Per-element CE: logsumexp(logits) - logits[label]; logits (..., C), labels (...) int."""
    lse = ops.logsumexp(logits, -1)
    picked = ops.gather_elements(logits, -1, ops.expand_dims(labels, -1)).squeeze(-1)
    return lse - picked


def hard_negative_mask(ce, positive, neg_pos_ratio: int = 3, empty_image_negatives: int = 0):
    """Boolean (B, P) mask of mined negatives.

    Per image, background priors are ranked by their cross-entropy `ce` (positives
    count as 0, as in the reference) and the top min(ratio * num_pos, P - 1) are kept;
    an image without positives keeps its top min(empty_image_negatives, P - 1).
    The ranking is computed without gradient.
    """
    ce = ops.stop_gradient(ce)
    num_priors = ce.shape[1]
    mining = ops.where(positive, ops.zeros_like(ce), ce)
    _, order = ops.sort(mining, axis=1, descending=True)
    # rank of every prior in that order: the inverse permutation, rank[order[i]] = i (a scatter;
    # it was a second sort, which cost as much as the first)
    positions = ops.broadcast_to(ops.arange(num_priors, dtype=order.dtype), order.shape)
    rank = ops.tensor_scatter_elements(ops.zeros_like(order), order, positions, axis=1)
    num_pos = positive.astype(ms.int32).sum(axis=1, keepdims=True)
    wanted = ops.where(num_pos > 0, num_pos * neg_pos_ratio, ops.full_like(num_pos, empty_image_negatives))
    num_neg = ops.minimum(wanted, ops.full_like(num_pos, num_priors - 1))
    return ops.logical_and(rank < num_neg, ops.logical_not(positive))


def multibox_loss(loc_p, conf_p, loc_t, conf_t, neg_pos_ratio: int = 3, empty_image_negatives: int = 0):
    """Returns (loc_loss, conf_loss), each already divided by N.

    loc_p, loc_t: (B, P, 4); conf_p: (B, P, C) logits; conf_t: (B, P) int softmax columns,
    0 = background, negative (heads.labels.IGNORE) = ignored: neither positive nor a negative
    candidate (the SSD matcher never emits it, assigners with an ignore band do).
    """
    conf_t = conf_t.astype(ms.int32)
    positive = conf_t > 0
    ignored = conf_t < 0
    pos_f = positive.astype(ms.float32)
    num_pos = ops.maximum(pos_f.sum(), 1.0)

    loc_loss = (smooth_l1(loc_p - loc_t).sum(axis=-1) * pos_f).sum()

    ce = softmax_cross_entropy(conf_p.astype(ms.float32), ops.maximum(conf_t, 0))
    # an ignored prior ranks below every candidate (CE >= 0) and is masked out afterwards
    ce_for_mining = ops.where(ignored, ops.full_like(ce, -1.0), ce)
    negative = hard_negative_mask(ce_for_mining, positive, neg_pos_ratio, empty_image_negatives)
    negative = ops.logical_and(negative, ops.logical_not(ignored))
    selected = ops.logical_or(positive, negative).astype(ms.float32)
    conf_loss = (ce * selected).sum()
    return loc_loss / num_pos, conf_loss / num_pos
