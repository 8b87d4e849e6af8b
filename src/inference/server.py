"""A small HTTP scoring endpoint on the standard library's ThreadingHTTPServer.

    POST /score   {"input_data": {"columns": ["image"], "index": [0, 1], "data": ["<base64>", ...]}}
              ->  200 [{"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]}, ...]
    GET /health   200 {"status": "ok", ...}

One entry per image, in the order of `data` (rows may also be one-element lists, pandas "split"
style; "data:image/...;base64," prefixes are accepted). Errors answer a JSON {"error": message}:
400 bad JSON / structure / base64 / not an image, 411 no Content-Length, 413 body, image count or
pixel count over the limits, 503 too many requests in progress, 500 an internal error; the server
keeps serving after every one of them. Requests are handled in threads; the network itself runs
one call at a time (Predictor's lock).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence

import numpy as np

from src.inference.images import ImageRejected, decode_image_bytes
from src.inference.results import detections_to_entry

log = logging.getLogger("m2det.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 16
    max_pixels: int = 40_000_000        # per decoded image (a 8000 x 5000 photo)
    max_pending: int = 8                # requests being decoded or scored at once; more get 503
    timeout_s: float = 30.0             # socket read timeout per request


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


class ScoringServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the predictor, the class names and the limits."""

    daemon_threads = True

    def __init__(self, address, predictor, names: Sequence[str], score_threshold: Optional[float] = 0.3,
                 limits: Limits = Limits()):
        self.predictor = predictor
        self.names = list(names)
        self.score_threshold = score_threshold
        self.limits = limits
        self.pending = threading.BoundedSemaphore(limits.max_pending)
        super().__init__(address, ScoringHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class ScoringHandler(BaseHTTPRequestHandler):
    server: ScoringServer
    server_version = "m2det-serve/1"

    def setup(self):
        self.timeout = self.server.limits.timeout_s
        super().setup()

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _send_json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send_json(status, {"error": message})

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/health":
            self._error(404, "not found: use POST /score or GET /health")
            return
        self._send_json(200, {"status": "ok", "model": self.server.predictor.description,
                              "classes": len(self.server.names), "batch_size": self.server.predictor.batch_size})

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/score":
            self._error(404, "not found: use POST /score or GET /health")
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "Content-Length is required")
            return
        try:
            length = int(length)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._error(400, f"bad Content-Length {self.headers.get('Content-Length')!r}")
            return
        limits = self.server.limits
        if length > limits.max_body_bytes:
            self._error(413, f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes}")
            return
        if not self.server.pending.acquire(blocking=False):
            self._error(503, "too many requests in progress; retry later")
            return
        try:
            try:
                body = self.rfile.read(length)
            except (socket.timeout, ConnectionError):
                self.close_connection = True
                return
            images = parse_request(body, limits)
            detections = self.server.predictor.predict(images, self.server.score_threshold)
            entries = [detections_to_entry(d, image.shape[1], image.shape[0], self.server.names)
                       for d, image in zip(detections, images)]
            self._send_json(200, entries)
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except Exception:  # noqa: BLE001 - answer and keep serving
            log.exception("scoring failed")
            self._error(500, "internal error while scoring (see the server log)")
        finally:
            self.server.pending.release()


def make_server(predictor, names: Sequence[str], host: str = "127.0.0.1", port: int = 8080,
                score_threshold: Optional[float] = 0.3, limits: Limits = Limits()) -> ScoringServer:
    """A bound (not yet serving) server; call `serve_forever()` on it (port 0: any free port)."""
    return ScoringServer((host, port), predictor, names, score_threshold, limits)
