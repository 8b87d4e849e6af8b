"""What the scoring endpoint does with a request body, apart from HTTP: limits, parsing the
seed schema, running the predictor, readiness.

    {"input_data": {"columns": ["image"], "index": [0, 1], "data": ["<base64>", ...]}}
        -> [{"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]}, ...]

Rows may also be one-element lists (pandas "split" style); "data:image/...;base64," prefixes
are accepted. Everything here is synchronous and runs in worker threads of the server.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from src.inference.images import ImageRejected, decode_image_bytes
from src.inference.results import detections_to_entry

log = logging.getLogger("m2det.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server takes on at once."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 16
    max_pixels: int = 40_000_000        # per decoded image (a 8000 x 5000 photo)
    max_pending: int = 8                # requests whose body is in, queued for or in scoring; more get 503
    max_receiving: int = 32             # request bodies being received at once; more get 503
    timeout_s: float = 30.0             # whole-request deadline: body received and scoring started by then


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, limits: Limits) -> list[np.ndarray]:
    """A /score body -> decoded BGR images; RequestError(status, message) for anything unusable."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from exc
    inputs = payload.get("input_data") if isinstance(payload, dict) else None
    if not isinstance(inputs, dict):
        raise RequestError(400, 'expected {"input_data": {"columns": ["image"], "data": [...]}}')
    columns = inputs.get("columns", ["image"])
    if not isinstance(columns, list) or "image" not in columns:
        raise RequestError(400, 'input_data.columns must be a list containing "image"')
    column = columns.index("image")
    rows = inputs.get("data")
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, "input_data.data must be a non-empty list of base64-encoded images")
    if len(rows) > limits.max_images:
        raise RequestError(413, f"{len(rows)} images in one request; the limit is {limits.max_images}")
    index = inputs.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise RequestError(400, f"input_data.index must be a list as long as input_data.data ({len(rows)})")
    images = []
    for i, row in enumerate(rows):
        value = row[column] if isinstance(row, list) and len(row) > column else row
        if not isinstance(value, str):
            raise RequestError(400, f"input_data.data[{i}] must be a base64 string")
        if value.startswith("data:") and "," in value:
            value = value.split(",", 1)[1]
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"input_data.data[{i}] is not valid base64: {exc}") from exc
        try:
            images.append(decode_image_bytes(raw, limits.max_pixels))
        except ImageRejected as exc:
            raise RequestError(exc.status, f"input_data.data[{i}]: {exc}") from exc
    return images


def public_description(description: str) -> str:
    """A model description with every path reduced to its file name ("checkpoint /a/b/m.ckpt" ->
    "checkpoint m.ckpt"): /health is public and must not reveal the server's directory layout."""
    return " ".join(word.replace("\\", "/").rsplit("/", 1)[-1] for word in description.split())


class ScoringService:
    """The predictor, the class names and the limits, plus readiness and a scoring-time estimate.

    `score` is thread-safe (the predictor serialises network calls). `ready` turns true after
    `warm_up` has run one prediction, so the first client never pays for graph compilation.
    """

    WARMUP_SIZE = 64  # any size works: preprocessing resizes to the network's input

    def __init__(self, predictor, names: Sequence[str], score_threshold: Optional[float] = 0.3,
                 limits: Limits = Limits()):
        self.predictor = predictor
        self.names = list(names)
        self.score_threshold = score_threshold
        self.limits = limits
        self.model = public_description(getattr(predictor, "description", "") or "")
        self.ready = False
        self.warmup_error: Optional[str] = None
        self._seconds_per_request = 1.0
        self._stats_lock = threading.Lock()

    def warm_up(self) -> None:
        """One prediction on a grey dummy image (compiles the graph), then ready."""
        start = time.perf_counter()
        try:
            dummy = np.full((self.WARMUP_SIZE, self.WARMUP_SIZE, 3), 114, np.uint8)
            self.predictor.predict([dummy], self.score_threshold)
        except Exception as exc:  # noqa: BLE001 - reported by /health and the log, server stays up
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up prediction failed; /health reports the error")
            return
        self._seconds_per_request = max(time.perf_counter() - start, 1e-3)
        self.ready = True
        log.info("warm-up done in %.2f s: ready", self._seconds_per_request)

    def score(self, body: bytes) -> list[dict]:
        """A request body -> the response entries; RequestError for unusable input."""
        images = parse_request(body, self.limits)
        start = time.perf_counter()
        detections = self.predictor.predict(images, self.score_threshold)
        self._record(time.perf_counter() - start)
        return [detections_to_entry(d, image.shape[1], image.shape[0], self.names)
                for d, image in zip(detections, images)]

    def _record(self, seconds: float) -> None:
        with self._stats_lock:
            self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * seconds

    def retry_after(self, waiting: int) -> int:
        """Seconds a refused client should wait: about the time to score what is already queued."""
        return max(1, math.ceil(self._seconds_per_request * max(waiting, 1)))
