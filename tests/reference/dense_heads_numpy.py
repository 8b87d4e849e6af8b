"""Straightforward NumPy (float64) re-statements of the dense heads' losses and decoding, written
the way mmdetection's heads read: gather the positives with boolean indexing, then apply the
formulas of REFERENCE 2.3 / 2.4 to them. The heads compute the same with masks and static shapes;
tests/test_heads.py compares the two.

Inputs are one batch: labels (B, N) (class, -1 background, -2 ignored), gt (B, N, 4) pixel
boxes of the assigned GT, anchors (N, 4), level (N,) level index, strides per level.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def focal(x, t, alpha=0.25, gamma=2.0):
    p = sigmoid(x)
    pt = np.where(t == 1, p, 1 - p)
    at = np.where(t == 1, alpha, 1 - alpha)
    return at * (1 - pt) ** gamma * bce(x, t)


def one_hot(labels, c):
    out = np.zeros(labels.shape + (c,))
    ok = (labels >= 0) & (labels < c)
    out[ok, labels[ok]] = 1.0
    return out


def centres(boxes):
    return np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)


def iou_giou(a, b):
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = np.maximum(area(a) + area(b) - inter, 1e-6)
    iou = inter / union
    elt = np.minimum(a[..., :2], b[..., :2])
    erb = np.maximum(a[..., 2:], b[..., 2:])
    ewh = np.clip(erb - elt, 0, None)
    enclose = np.maximum(ewh[..., 0] * ewh[..., 1], 1e-6)
    return iou, iou - (enclose - union) / enclose


def delta_encode(anchors, gt, stds):
    pc, pwh = centres(anchors), anchors[..., 2:] - anchors[..., :2]
    gc, gwh = centres(gt), gt[..., 2:] - gt[..., :2]
    return np.concatenate([(gc - pc) / pwh, np.log(gwh / pwh)], -1) / np.asarray(stds)


def delta_decode(anchors, deltas, stds):
    d = deltas * np.asarray(stds)
    pc, pwh = centres(anchors), anchors[..., 2:] - anchors[..., :2]
    lim = abs(np.log(16 / 1000))
    c = pc + d[..., :2] * pwh
    wh = pwh * np.exp(np.clip(d[..., 2:], -lim, lim))
    return np.concatenate([c - wh / 2, c + wh / 2], -1)


def distance2bbox(points, d):
    return np.concatenate([points - d[..., :2], points + d[..., 2:]], -1)


def _positives(labels, c):
    return (labels >= 0) & (labels < c)


def _num_total(pos):
    return max(sum(max(int(p.sum()), 1) for p in pos), 1)


def retina_loss(cls, deltas, labels, gt, anchors):
    b, n, c = cls.shape
    pos = _positives(labels, c)
    valid = labels != -2
    norm = _num_total(pos)
    loss_cls = focal(cls[valid], one_hot(labels[valid], c)).sum() / norm
    a = np.broadcast_to(anchors, (b, n, 4))
    target = delta_encode(a[pos], gt[pos], (1, 1, 1, 1))
    loss_box = np.abs(deltas[pos] - target).sum() / norm
    return loss_cls, loss_box


def _centerness(points, boxes):
    l = points[:, 0] - boxes[:, 0]
    t = points[:, 1] - boxes[:, 1]
    r = boxes[:, 2] - points[:, 0]
    bo = boxes[:, 3] - points[:, 1]
    return np.sqrt(np.minimum(l, r) / np.maximum(l, r) * np.minimum(t, bo) / np.maximum(t, bo))


def progressive_focal(cls, labels, level, num_levels, norm):
    c = cls.shape[-1]
    pos = _positives(labels, c)
    lvl = np.broadcast_to(level, labels.shape)
    total = 0.0
    for l in range(num_levels):
        in_l = lvl == l
        p = pos & in_l
        if p.any():
            x = cls[p, labels[p]]
            cl = float(np.mean(np.log1p(np.exp(-x))))
        else:
            cl = 2.0
        gamma = np.clip(cl, 1.5, 2.5)
        alpha = 0.5 / gamma
        total += focal(cls[in_l], one_hot(labels[in_l], c), alpha, gamma).sum()
    return total / norm


def atss_loss(cls, deltas, ctr, labels, gt, anchors, level=None, num_levels=None, progressive=False):
    b, n, c = cls.shape
    pos = _positives(labels, c)
    norm = _num_total(pos)
    if progressive:
        loss_cls = progressive_focal(cls, labels, level, num_levels, norm)
    else:
        loss_cls = focal(cls, one_hot(labels, c)).sum() / norm
    a = np.broadcast_to(anchors, (b, n, 4))[pos]
    pred = delta_decode(a, deltas[pos], (0.1, 0.1, 0.2, 0.2))
    target = gt[pos]
    ctr_t = _centerness(centres(a), target)
    _, giou = iou_giou(pred, target)
    loss_box = 2.0 * ((1 - giou) * ctr_t).sum() / max(ctr_t.sum(), 1.0)
    loss_ctr = bce(ctr[..., 0][pos], ctr_t).sum() / norm
    return loss_cls, loss_box, loss_ctr


def integral(reg, reg_max):
    logits = reg.reshape(reg.shape[:-1] + (4, reg_max + 1))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return (p * np.arange(reg_max + 1)).sum(-1)


def gfl_loss(cls, reg, labels, gt, anchors, anchor_strides, reg_max=16):
    b, n, c = cls.shape
    pos = _positives(labels, c)
    norm = _num_total(pos)
    s = np.broadcast_to(anchor_strides.reshape(1, n, 1), (b, n, 1))[pos]
    pts = centres(np.broadcast_to(anchors, (b, n, 4))[pos]) / s
    pred = distance2bbox(pts, integral(reg[pos], reg_max))
    target = gt[pos] / s
    iou, giou = iou_giou(pred, target)
    # QFL: dense target = IoU at the GT class of positives, 0 elsewhere
    t = np.zeros_like(cls)
    t[pos, labels[pos]] = iou
    loss_cls = (bce(cls, t) * np.abs(t - sigmoid(cls)) ** 2).sum() / norm
    w = sigmoid(cls[pos]).max(-1)
    avg = max(w.sum(), 1.0)
    loss_box = 2.0 * ((1 - giou) * w).sum() / avg
    # DFL over the 4 sides
    y = np.clip(np.concatenate([pts - target[:, :2], target[:, 2:] - pts], -1), 0, reg_max - 0.1)
    logits = reg[pos].reshape(-1, 4, reg_max + 1)
    lse = np.log(np.exp(logits).sum(-1))
    yl = np.floor(y).astype(int)
    yr = yl + 1
    ce_l = lse - np.take_along_axis(logits, yl[..., None], -1)[..., 0]
    ce_r = lse - np.take_along_axis(logits, yr[..., None], -1)[..., 0]
    dfl = ce_l * (yr - y) + ce_r * (y - yl)
    loss_dfl = 0.25 * (dfl * w[:, None]).sum() / 4.0 / avg
    return loss_cls, loss_box, loss_dfl


def vfnet_loss(cls, init, refine, labels, gt, anchors):
    b, n, c = cls.shape
    pos = _positives(labels, c)
    num_pos = max(float(pos.sum()), 1.0)
    pts = centres(np.broadcast_to(anchors, (b, n, 4))[pos])
    target = gt[pos]
    init_boxes = distance2bbox(pts, init[pos])
    iou_i, giou_i = iou_giou(init_boxes, target)
    iou_i = np.maximum(iou_i, 1e-6)
    loss_box = 1.5 * ((1 - giou_i) * iou_i).sum() / max(iou_i.sum(), 1.0)
    rf_boxes = distance2bbox(pts, refine[pos])
    iou_r, giou_r = iou_giou(rf_boxes, target)
    iou_r = np.maximum(iou_r, 1e-6)
    loss_rf = 2.0 * ((1 - giou_r) * iou_r).sum() / max(iou_r.sum(), 1.0)
    q = np.zeros_like(cls)
    q[pos, labels[pos]] = iou_r
    p = sigmoid(cls)
    weight = np.where(q > 0, q, 0.75 * p ** 2)
    loss_cls = (bce(cls, q) * weight).sum() / num_pos
    return loss_cls, loss_box, loss_rf
