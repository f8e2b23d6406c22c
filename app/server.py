"""The HTTP server: uvicorn with connection hygiene that a bare uvicorn lacks.

uvicorn's own `limit_concurrency` counts open connections, so a few hundred idle sockets
answer every request, `/healthz` included, with 503; and with httptools it has no header
size limit nor a deadline for headers or body. `GuardedProtocol` adds those per connection:
- request headers must arrive within `header_timeout_s` of the connection opening (or of the
  previous response) and fit in `max_header_bytes`, else 431 / close;
- a body must keep arriving: no byte for `body_idle_timeout_s` while the service waits for
  one, or the whole body taking longer than `body_timeout_s`, closes the connection;
- connections past `max_connections` are closed at once.
The limit on work in flight is the application's (`app.middleware.InFlightLimit`), which
never counts `/healthz` and `/readyz`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.middleware import RedactQueryStrings
from app.settings import Settings

log = logging.getLogger("fsdi.http")

_431_BODY = b'{"error": {"code": "headers_too_large", "message": "request headers are too large"}}'
REFUSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
              b"content-type: application/json\r\nconnection: close\r\n"
              b"content-length: " + str(len(_431_BODY)).encode() + b"\r\n\r\n" + _431_BODY)


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header size/time limits, body deadlines and a connection cap.
    The limits are class attributes, set once by `protocol_for(settings)`."""

    max_header_bytes = 64 * 1024
    header_timeout_s = 10.0
    body_idle_timeout_s = 15.0
    body_timeout_s = 120.0
    max_connections = 4096

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._in_headers = True
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("connection refused: %d open (max_connections)", len(self.connections))
            transport.abort()
            return
        self._arm_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _cancel(self) -> None:
        for t in (self._deadline, self._idle):
            if t is not None:
                t.cancel()
        self._deadline = self._idle = None

    def _arm_headers(self) -> None:
        self._cancel()
        self._in_headers, self._header_bytes = True, 0
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire, "headers")

    def _expire(self, what: str) -> None:
        if self.transport.is_closing():
            return
        if what == "idle" and self.flow.read_paused:  # the app is not reading: not the client
            self._idle = self.loop.call_later(self.body_idle_timeout_s, self._expire, "idle")
            return
        if what in ("idle", "body") and self.cycle is not None and self.cycle.response_complete:
            return
        log.info("closing a connection whose %s did not arrive in time", what)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # -- parsing -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        elif self._idle is not None:
            self._idle.cancel()
            self._idle = self.loop.call_later(self.body_idle_timeout_s, self._expire, "idle")
        super().data_received(data)
        # Checked after parsing: a chunk that completes small headers may carry body bytes.
        if self._in_headers and self._header_bytes > self.max_header_bytes \
                and not self.transport.is_closing():
            log.warning("refused request headers over %d bytes", self.max_header_bytes)
            self.transport.write(REFUSE_431)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._cancel()
        self._in_headers = False
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._deadline = self.loop.call_later(self.body_timeout_s, self._expire, "body")
            self._idle = self.loop.call_later(self.body_idle_timeout_s, self._expire, "idle")

    def on_message_complete(self) -> None:
        self._cancel()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle is not None \
                and not self.cycle.more_body:
            self._arm_headers()  # the next request on this connection starts its clock


def protocol_for(settings: Settings) -> type[GuardedProtocol]:
    """A GuardedProtocol class carrying `settings`' limits."""
    return type("FsdiHttpProtocol", (GuardedProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "body_idle_timeout_s": settings.body_idle_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
        "max_connections": settings.max_connections,
    })


def open_file_budget(wanted: int) -> int:
    """Raise the soft open-file limit towards the hard one and return how many connections
    fit under it (leaving room for the database, blobs, models and logs)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + 256)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep what is
        return wanted
    return max(16, min(wanted, soft - 256))


def run(app: Any, settings: Settings, host: str, port: int) -> None:
    """uvicorn with GuardedProtocol; the access log never shows a key from a URL."""
    budget = open_file_budget(settings.max_connections)
    if budget < settings.max_connections:
        log.warning("FSDI_MAX_CONNECTIONS=%d lowered to %d by the open-file limit",
                    settings.max_connections, budget)
        settings = settings.model_copy(update={"max_connections": budget})
    logging.getLogger("uvicorn.access").addFilter(RedactQueryStrings())
    uvicorn.run(app, host=host, port=port, http=protocol_for(settings),  # type: ignore[arg-type]
                limit_concurrency=None, timeout_keep_alive=5, log_level="info",
                h11_max_incomplete_event_size=settings.max_header_bytes)
