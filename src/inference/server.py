"""The HTTP scoring endpoint: a Starlette (ASGI) application served by uvicorn.

    POST /score   the seed schema (src/inference/scoring.py) -> 200 one entry per image
    GET /health   200 {"status": "ok", "ready": true, ...} after the warm-up prediction;
                  503 {"status": "warming up" | "failed", "ready": false, ...} before (or if it failed)

Every request has one deadline (Limits.timeout_s) from its first byte (from the connection's
opening for the first request): headers not complete by then get 408 and a closed connection
(DeadlineHttpProtocol). A /score request passes these gates in order; every refusal is a JSON
{"error": message}:
  1. Content-Length missing (411) or over max_body_bytes (413): answered at once. The connection
     stays open, so uvicorn reads and discards the unread body instead of the kernel resetting it.
  2. More than max_receiving bodies already being received: 503 with Retry-After.
  3. The body is read completely before the request may queue for the model, within the same
     deadline (not a timeout per read), so a client trickling its body gets 408 and is
     disconnected without ever holding model capacity.
  4. More than max_pending requests queued for or in scoring: 503 with Retry-After (an estimate
     of the time to score the queue).
  5. Scoring must start before the deadline (else 503 with Retry-After); then parsing (400/413
     for bad input), prediction and formatting run in a worker thread; 500 on an internal error.
Before the warm-up has finished /score answers 503 with Retry-After. A client that disconnects
costs one INFO line, not a traceback. The listen backlog is uvicorn's (2048 by default), so a
burst of connections waits to be accepted instead of being refused.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Optional

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from src.inference.http_deadline import HEADER_TIMEOUT, REQUEST_STARTED, DeadlineHttpProtocol
from src.inference.scoring import Limits, RequestError, ScoringService

log = logging.getLogger("m2det.serve")

# Two scoring threads: one request is decoded and pre-processed while another runs the network
# (the predictor lets one network call run at a time); more only add GIL contention.
SCORING_THREADS = 2


class _Gates:
    """Counters of the gates above; touched only from the event loop, so no locks."""

    def __init__(self, service: ScoringService):
        self.service = service
        self.receiving = 0
        self.pending = 0
        self.scoring = anyio.Semaphore(SCORING_THREADS)


def _error(status: int, message: str, retry_after: Optional[int] = None, close: bool = False) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "client"


async def _read_body(request: Request, limits: Limits, deadline: float) -> bytes:
    """The whole body, or TimeoutError at the deadline / RequestError(413) past the size limit."""
    chunks, size = [], 0
    with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:  # a client sending more than its Content-Length said
                raise RequestError(413, f"request body exceeds the limit of {limits.max_body_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


async def _score(request: Request) -> JSONResponse:
    gates: _Gates = request.app.state.gates
    service, limits = gates.service, gates.service.limits
    # the deadline runs from the request's first byte (DeadlineHttpProtocol), headers included
    deadline = request.scope.get("state", {}).get(REQUEST_STARTED, time.monotonic()) + limits.timeout_s
    if not service.ready:
        return _error(503, "the model is warming up; retry later", retry_after=service.retry_after(1))
    length = request.headers.get("content-length")
    if length is None:
        return _error(411, "Content-Length is required")
    try:
        length = int(length)
        if length < 0:
            raise ValueError(length)
    except ValueError:
        return _error(400, f"bad Content-Length {request.headers.get('content-length')!r}")
    if length > limits.max_body_bytes:
        return _error(413, f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes}")
    if gates.receiving >= limits.max_receiving:
        return _error(503, "too many requests being received; retry later", retry_after=1)

    gates.receiving += 1
    try:
        body = await _read_body(request, limits, deadline)
    except TimeoutError:
        log.info("%s: request body not received within %.0f s; disconnected", _client(request), limits.timeout_s)
        return _error(408, f"request body not received within {limits.timeout_s:g} s", close=True)
    except ClientDisconnect:
        log.info("%s disconnected while sending its request", _client(request))
        return _error(400, "client disconnected")  # uvicorn drops it: nobody is listening
    except RequestError as exc:
        return _error(exc.status, str(exc), close=True)
    finally:
        gates.receiving -= 1

    if gates.pending >= limits.max_pending:
        return _error(503, "too many requests in progress; retry later",
                      retry_after=service.retry_after(gates.pending))
    gates.pending += 1
    try:
        started = False
        with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
            await gates.scoring.acquire()
            started = True
        if not started:
            return _error(503, "the request could not be scored before its deadline; retry later",
                          retry_after=service.retry_after(gates.pending))
        try:
            entries = await anyio.to_thread.run_sync(service.score, body)
        finally:
            gates.scoring.release()
    except RequestError as exc:
        return _error(exc.status, str(exc))
    except Exception:  # noqa: BLE001 - answer and keep serving
        log.exception("scoring failed")
        return _error(500, "internal error while scoring (see the server log)")
    finally:
        gates.pending -= 1
    return JSONResponse(entries)


async def _health(request: Request) -> JSONResponse:
    gates: _Gates = request.app.state.gates
    service = gates.service
    body = {"status": "ok" if service.ready else ("failed" if service.warmup_error else "warming up"),
            "ready": service.ready, "model": service.model, "classes": len(service.names),
            "batch_size": service.predictor.batch_size, "pending": gates.pending}
    if service.warmup_error:
        body["error"] = service.warmup_error
    return JSONResponse(body, status_code=200 if service.ready else 503)


async def _not_found(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, "not found: use POST /score or GET /health")


def create_app(service: ScoringService, warm_up: bool = True) -> Starlette:
    """The ASGI application. With `warm_up`, one prediction runs in the background at startup and
    /health reports ready after it; without, the service is taken as ready at once."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.gates = _Gates(service)
        async with anyio.create_task_group() as tasks:
            if warm_up and not service.ready:
                tasks.start_soon(lambda: anyio.to_thread.run_sync(service.warm_up, abandon_on_cancel=True))
            else:
                service.ready = True
            yield {HEADER_TIMEOUT: service.limits.timeout_s}
            tasks.cancel_scope.cancel()

    routes = [Route("/score", _score, methods=["POST"]), Route("/health", _health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: _not_found, 405: _not_found})


def uvicorn_options(host: str = "127.0.0.1", port: int = 8080, workers: int = 1, access_log: bool = True,
                    keep_alive_s: int = 5, graceful_shutdown_s: int = 30, backlog: int = 2048,
                    configure_logging: bool = True) -> dict:
    """uvicorn settings used by serve.py, the tests and the benchmark: the httptools parser (its
    discarding of unread bodies is what gate 1 relies on) with the header deadline, lifespan on
    (the warm-up), no websockets."""
    options = dict(host=host, port=port, workers=workers, http=DeadlineHttpProtocol,
                   loop="asyncio", ws="none",
                   lifespan="on", access_log=access_log, timeout_keep_alive=keep_alive_s,
                   timeout_graceful_shutdown=graceful_shutdown_s, backlog=backlog, server_header=False)
    if not configure_logging:
        options["log_config"] = None
    return options


class BackgroundServer:
    """uvicorn serving `app` in a daemon thread on a socket bound here (port 0: a free port), for
    tests and benchmarks; use as a context manager so it is always shut down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **options):
        options.setdefault("access_log", False)
        options.setdefault("configure_logging", False)
        self.config = uvicorn.Config(app, **uvicorn_options(host, port, **options))
        self.server = uvicorn.Server(self.config)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(self.config.backlog)
        self.server_address = self.socket.getsockname()[:2]
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        stop_at = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > stop_at:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
