"""Evaluation: COCO box AP of post-processed detections (see ``coco_eval``)."""
from src.evaluation.coco_eval import (
    METRICS_FILE,
    RESULTS_FILE,
    STAT_KEYS,
    detections_to_coco,
    evaluate_coco,
    format_per_class_table,
    per_class_ap,
)

__all__ = [
    "METRICS_FILE", "RESULTS_FILE", "STAT_KEYS", "detections_to_coco", "evaluate_coco",
    "format_per_class_table", "per_class_ap",
]
