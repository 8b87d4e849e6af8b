"""The request deadline before the application sees a request: uvicorn's HTTP protocol with a
timer on the headers (an ASGI application is only called once they are complete)."""
from __future__ import annotations

import logging
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("m2det.serve")

REQUEST_STARTED = "m2det_request_started"  # scope state: when the request's first byte arrived
HEADER_TIMEOUT = "m2det_header_timeout_s"   # app state (set by the lifespan): the header deadline


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for the request headers: a connection whose
    headers are not complete `timeout_s` after it opened (or after the first byte of its next
    request) gets 408 and is closed, so trickled headers hold nothing for long either. The time a
    request's first byte arrived goes to the application (scope state), which counts its
    whole-request deadline from it. The deadline is the application's `Limits.timeout_s`, handed
    over in the lifespan state (a class attribute would not reach --workers processes)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][REQUEST_STARTED] = time.monotonic()
        if self._header_timer is None:
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        timeout_s = self.app_state.get(HEADER_TIMEOUT)
        if timeout_s:
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow, timeout_s)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self, timeout_s: float) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.info("%s: request headers not received within %g s; disconnected",
                 "%s:%d" % self.client if self.client else "client", timeout_s)
        body = b'{"error": "request headers not received in time"}'
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
