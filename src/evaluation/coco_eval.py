"""COCO box evaluation helpers: detections -> COCO results, pycocotools COCOeval -> metrics.

    detect() output (class labels)  --detections_to_coco-->  [{"image_id", "category_id",
    "bbox": [x, y, w, h], "score"}, ...]  --evaluate_coco-->  {"AP", "AP50", ..., "ARl"}
                                                               (+ per-class AP, files in out_dir)

Labels are class labels (heads/labels.py: the dataset's contiguous 0-based labels, which is
what ``detect()`` returns); ``detections_to_coco`` maps them to COCO category ids with the
dataset's ``label -> category id`` list.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

# Names of COCOeval.stats, in its order (maxDets 100 unless the name says otherwise).
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULTS_FILE = "bbox_results.json"
METRICS_FILE = "metrics.json"

LabelMap = Union[Sequence[int], Mapping[int, int], np.ndarray]


def detections_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       label_to_cat_id: LabelMap, *, pixel_offset: bool = False) -> List[Dict[str, Any]]:
    """One image's detections as COCO result dicts.

    Args:
        image_id: the COCO image id.
        boxes: (K, 4) corners (x1, y1, x2, y2) in pixels of the original image.
        scores: (K,).
        labels: (K,) class labels as returned by ``detect()`` (0-based dataset labels).
        label_to_cat_id: dataset label (0-based) -> COCO category id, as a list/array
            (index = label) or a dict.
        pixel_offset: False (default): COCO width = x2 - x1, for boxes in continuous
            coordinates (x2 = x + w). True: width = x2 - x1 + 1, for the "+1 pixel"
            convention (x2 = x + w - 1, as the reference's data loader converts COCO
            boxes). Must match how the dataset turned COCO boxes into corners.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` with
        Python numbers: bbox rounded to 0.01 px, score to 1e-5 (soft-NMS keeps scores
        down to 1e-3).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    dataset_labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not boxes.shape[0] == scores.shape[0] == dataset_labels.shape[0]:
        raise ValueError(f"got {boxes.shape[0]} boxes, {scores.shape[0]} scores and "
                         f"{dataset_labels.shape[0]} labels")
    cat_ids = [_category_id(label_to_cat_id, int(label)) for label in dataset_labels]
    one = 1.0 if pixel_offset else 0.0
    xywh = np.stack([boxes[:, 0], boxes[:, 1],
                     boxes[:, 2] - boxes[:, 0] + one, boxes[:, 3] - boxes[:, 1] + one], axis=1)
    xywh = np.round(xywh, 2)
    return [
        {"image_id": int(image_id), "category_id": cat_id,
         "bbox": [float(v) for v in box], "score": round(float(score), 5)}
        for box, score, cat_id in zip(xywh, scores, cat_ids)
    ]


def _category_id(label_to_cat_id: LabelMap, label: int) -> int:
    try:
        if label < 0 and not isinstance(label_to_cat_id, Mapping):
            raise IndexError  # a negative list index would silently wrap around
        return int(label_to_cat_id[label])
    except (IndexError, KeyError):
        raise ValueError(f"class label {label} has no category id (the dataset has "
                         f"{len(label_to_cat_id)} classes)") from None


def _load_gt(coco_gt: Union[COCO, str, os.PathLike]) -> COCO:
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.fspath(coco_gt))


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detection. ``COCO.loadRes([])`` fails (it looks at the
    first result), so it is built directly; COCOeval then reports 0 where there is
    ground truth and -1 where there is none, exactly as for any other results."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset.get("categories", [])),
                       "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_coco(coco_gt: Union[COCO, str, os.PathLike], results: List[Dict[str, Any]],
                  out_dir: Optional[Union[str, os.PathLike]] = None, per_class: bool = True,
                  img_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """COCO box AP/AR of ``results`` (``detections_to_coco`` dicts) with pycocotools.

    Args:
        coco_gt: ground truth, a ``pycocotools.coco.COCO`` or the path of its JSON.
        results: result dicts of all evaluated images (may be empty).
        out_dir: if given, writes ``bbox_results.json`` (the results) and
            ``metrics.json`` (the 12 stats, ``per_class_AP`` when computed, and
            ``results_json``: the results' path) there, each atomically.
        per_class: also compute the AP (IoU .50:.95, all areas, 100 dets) per category.
        img_ids: evaluate these images only (default: every image of ``coco_gt``);
            ground truth of images left out is not counted as missed.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
        "ARm", "ARl"}`` as floats in [0, 1] (-1 where pycocotools has no ground truth to
        score, e.g. no small objects), plus ``"per_class_AP"``: {category name: AP} when
        ``per_class``, and ``"results_json"`` when ``out_dir`` is given.

    An empty ``results`` does not fail: the stats are what COCOeval computes with no
    detection (0, or -1 without ground truth), and a warning is logged.
    """
    coco_gt = _load_gt(coco_gt)
    results = list(results)
    _check_image_ids(coco_gt, results)
    metrics: Dict[str, Any] = {}
    if out_dir is not None:
        results_json = os.path.join(os.fspath(out_dir), RESULTS_FILE)
        write_json_atomic(results_json, results)

    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            # loadRes adds keys (area, id, ...) to the dicts it gets: give it copies
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
    else:
        logger.warning("no detections to evaluate: every AP/AR is 0 (-1 without ground truth)")
        coco_dt = _empty_results(coco_gt)

    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if img_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in img_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.info("COCO bbox evaluation:\n%s", summary.getvalue().rstrip())

    metrics.update({key: float(v) for key, v in zip(STAT_KEYS, evaluator.stats)})
    if per_class:
        metrics["per_class_AP"] = per_class_ap(evaluator)
    if out_dir is not None:
        metrics["results_json"] = results_json
        write_json_atomic(os.path.join(os.fspath(out_dir), METRICS_FILE), metrics, indent=2)
    return metrics


def _check_image_ids(coco_gt: COCO, results: List[Dict[str, Any]]) -> None:
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to {len(unknown)} image ids not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")


def per_class_ap(evaluator: COCOeval) -> Dict[str, float]:
    """{category name: AP} from an accumulated COCOeval: the mean precision over IoU
    .50:.95 and recall, all areas, the largest maxDets (the definition of the "AP" stat,
    restricted to one category); -1 for a category without ground truth."""
    precision = evaluator.eval["precision"]  # [IoU, recall, category, area, maxDets]
    area_all = evaluator.params.areaRngLbl.index("all")
    table = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, area_all, -1]
        p = p[p > -1]
        name = evaluator.cocoGt.cats[cat_id]["name"]
        table[name] = float(p.mean()) if p.size else -1.0
    return table


def format_per_class_table(per_class: Mapping[str, float], columns: int = 3) -> str:
    """The per-class APs as a text table, ``columns`` (category, AP) pairs per row, AP in
    percent with one decimal ("-" for a category without ground truth)."""
    cells = [(name, "-" if ap < 0 else f"{100 * ap:.1f}") for name, ap in per_class.items()]
    if not cells:
        return ""
    name_w = max(len("category"), *(len(n) for n, _ in cells))
    ap_w = max(len("AP"), *(len(a) for _, a in cells))
    columns = max(1, min(columns, len(cells)))

    def row(pairs):
        return " | ".join(f"{n:<{name_w}} {a:>{ap_w}}" for n, a in pairs)

    header = row([("category", "AP")] * columns)
    lines = [header, "-" * len(header)]
    lines += [row(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return "\n".join(lines)
