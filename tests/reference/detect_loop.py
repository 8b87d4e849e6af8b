"""Detection post-processing as the M2Det release's test loop writes it: one np.where per class.

Independent of src/postprocess.py (which finds the candidates of all classes in one pass);
tests compare the two. Labels are class labels, 0-based (heads/labels.py).
"""
import numpy as np

from nms import nms, soft_nms


def per_class_loop_detect(boxes, scores, *, score_threshold=0.1, nms_method="linear", nms_threshold=0.3,
                          soft_sigma=0.5, soft_min_score=0.001, keep_per_class=50, max_per_image=100,
                          pixel_offset=True, has_background=True):
    """(boxes (K, 4) float32, scores (K,) float32, labels (K,) int64), by decreasing score."""
    first = 1 if has_background else 0
    kept_all, labels = [], []
    for column in range(first, scores.shape[1]):
        rows = np.where(scores[:, column] > score_threshold)[0]
        if len(rows) == 0:
            continue
        candidates = np.hstack([boxes[rows], scores[rows, column][:, None]]).astype(np.float32)
        if nms_method == "nms":
            kept = nms(candidates, iou_threshold=nms_threshold, pixel_offset=pixel_offset)
        else:
            kept = soft_nms(candidates, method=nms_method, iou_threshold=nms_threshold, sigma=soft_sigma,
                            score_threshold=soft_min_score, pixel_offset=pixel_offset)
        if keep_per_class and keep_per_class > 0:
            kept = kept[:keep_per_class]
        kept_all.append(kept)
        labels += [column - first] * len(kept)
    if not kept_all:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    dets = np.concatenate(kept_all)
    order = np.argsort(-dets[:, 4], kind="stable")
    if max_per_image and max_per_image > 0:
        order = order[:max_per_image]
    return dets[order, :4], dets[order, 4], np.asarray(labels, dtype=np.int64)[order]
