"""The one middleware stack, as plain ASGI classes (outermost first):

TraceId → RequestMetrics → SecurityHeaders → Cors → Errors → BodyLimit → (Starlette)

Errors sits inside the header middlewares so error answers carry CORS and security
headers, and inside RequestMetrics so they are counted with their real status.

Each reads the live config through ``settings()`` on every request, so a SIGHUP that
changes CORS origins or the body limit takes effect without a restart.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatewayd.config import Config
from gatewayd.errors import PayloadTooLarge
from gatewayd.http.errors import classify, error_response
from gatewayd.metrics import Metrics

log = structlog.get_logger()

Settings = Callable[[], Config]

_TRACE_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class TraceId:
    """Honour a sane ``X-Request-ID`` or make one; bind it for logs; echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        trace_id = given if _TRACE_ID_OK.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["trace_id"] = trace_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = trace_id
            await send(message)

        with structlog.contextvars.bound_contextvars(traceId=trace_id):
            await self.app(scope, receive, send_with_id)


class Errors:
    """Render any escaped exception as a 500 in the error shape, logged with its stack.

    Starlette's ServerErrorMiddleware would re-raise after answering, and hypercorn
    would log the same failure a second time; this answers and stops there.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            status = classify(exc)[0]
            if status >= 500:
                log.exception(
                    "gatewayd.http.unhandled", path=scope.get("path"), method=scope.get("method")
                )
            if started:
                raise
            await error_response(scope, exc)(scope, receive, send)


class RequestMetrics:
    """Count requests and time them, labelled by route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        begin = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            self.metrics.http_duration.labels(method, template).observe(time.perf_counter() - begin)
            code = scope.get("state", {}).get("error_code")
            if code is not None:
                self.metrics.wa_errors.labels(code).inc()
            log.debug("gatewayd.http.request", method=method, route=template, status=status)


class SecurityHeaders:
    HEADERS = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class Cors:
    """CORS from the live config. No origins configured: no cross-origin access."""

    ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _allowed(self, origin: str) -> str | None:
        origins = self.settings().server.cors_origins
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self._allowed(origin)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            status = 204 if allowed else 403
            response_headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
            if allowed:
                response_headers += [
                    (b"access-control-allow-origin", allowed.encode()),
                    (b"access-control-allow-methods", self.ALLOW_METHODS.encode()),
                    (b"access-control-allow-headers", self.ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", b"600"),
                ]
            await send(
                {"type": "http.response.start", "status": status, "headers": response_headers}
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and allowed:
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = allowed
                out["Access-Control-Expose-Headers"] = "X-Request-ID"
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, with_cors)


class BodyLimit:
    """Refuse bodies over ``server.body_limit``: by Content-Length before reading, and
    by counting while streaming (chunked bodies have no length to check).

    Any answer that starts before the request body was read to its end (a refusal, or a
    handler that never reads the body) carries ``Connection: close``: the unread rest is
    still on the wire, and a client that reused the connection would lose its next request.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings().server.body_limit
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        body_done = "transfer-encoding" not in headers and length in ("", "0")
        started = False
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen, body_done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
                body_done = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        try:
            if length.isdigit() and int(length) > limit:
                raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
            await self.app(scope, counting_receive, closing_send)
        except PayloadTooLarge as exc:
            if started:
                raise
            await error_response(scope, exc)(scope, receive, closing_send)
