"""One image's detections as the JSON entry of the scoring endpoint and of infer.py.

    {"boxes": [{"box": {"topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2},
                "label": "name", "score": 0.87}, ...]}

Coordinates are fractions of the image width / height, clipped to [0, 1]; boxes come by
decreasing score (the order of src/postprocess.detect).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from src.postprocess import Detections

DIGITS = 6


def detections_to_entry(dets: Detections, width: int, height: int, names: Sequence[str]) -> dict:
    """`dets` in pixels of a width x height image -> {"boxes": [...]}.
    Labels are class labels (0-based): the name of label l is names[l].
    """
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.clip(np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4) / scale, 0.0, 1.0)
    out = []
    for (x1, y1, x2, y2), score, label in zip(boxes, dets.scores, dets.labels):
        k = int(label)
        out.append({"box": {"topX": round(float(x1), DIGITS), "topY": round(float(y1), DIGITS),
                            "bottomX": round(float(x2), DIGITS), "bottomY": round(float(y2), DIGITS)},
                    "label": names[k] if 0 <= k < len(names) else f"class_{k}",
                    "score": round(float(score), DIGITS)})
    return {"boxes": out}
