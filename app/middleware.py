"""ASGI middleware: auth before the body, a streaming body-size cap, a cap on requests in
flight, per-route request metrics, browser security headers, access-log redaction."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import PRINCIPAL, principal
from app.errors import ApiError
from app.services.metrics import Metrics

if TYPE_CHECKING:
    from app.services.runtime import Runtime


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimit:
    """Reject bodies over `limit` bytes: at once from Content-Length, and while streaming
    (chunked bodies too) before the multipart parser buffers more."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _envelope(send, 413, "too_large",
                                    f"request body is larger than {self.limit} bytes")
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return msg

        await self.app(scope, limited, send)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def wrapped(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


async def _envelope(send: Send, status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> None:
    """An error envelope sent straight from the middleware, without reading the body; the
    connection is closed after it so an unread body is never taken as the next request."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


class KeyGate:
    """Every `/api/` request is authenticated from its headers alone, before any body byte
    is read or stored: no key (or a bad one) is a 401 at once, a service still starting a
    503. The verified principal rides in the scope for the route's role check."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        if not self.runtime.ready.is_set():
            await _envelope(send, 503, "not_ready", "the service is starting; retry shortly",
                            {"Retry-After": "2"})
            return
        auth = next((v.decode("latin-1") for k, v in scope["headers"]
                     if k == b"authorization"), None)
        try:
            scope[PRINCIPAL] = await principal(self.runtime, auth)
        except ApiError as e:
            await _envelope(send, e.status, e.code, e.message, e.headers)
            return
        await self.app(scope, receive, send)


class InFlightLimit:
    """At most `limit` requests in progress; past it a 503 with Retry-After. Health and
    readiness probes and metrics never count and are never refused (connections are the
    server's business, see app.server)."""

    EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _envelope(send, 503, "overloaded",
                            f"more than {self.limit} requests in progress; retry shortly",
                            {"Retry-After": "1"})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# Served pages load nothing from elsewhere (a factory network has no internet) and may not
# be framed; /docs sets its own policy for Swagger UI's inline start-up script.
CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
       "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """Browser hygiene on every response: CSP (unless the route set its own), no framing,
    no MIME sniffing, no referrer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, wrapped)


_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&])(?:key|api_key|apikey|access_token|token|auth|authorization|secret|"
    r"password)=)[^&\s]*")
_KEY_LIKE = re.compile(r"fsdi_[A-Za-z0-9_-]{8,}")


def redact_query(text: str) -> str:
    """Secret-looking query values and anything shaped like an FSDI key -> '***'."""
    return _KEY_LIKE.sub("fsdi_***", _SECRET_PARAM.sub(r"\1***", text))


class RedactQueryStrings(logging.Filter):
    """On uvicorn's access log: a key pasted into a URL never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            args[2] = redact_query(str(args[2]))  # (client, method, path?query, ...)
            record.args = tuple(args)
        return True
