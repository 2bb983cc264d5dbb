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
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatewayd.config import Config
from gatewayd.errors import GatewayError, MediaTooLarge, PayloadTooLarge
from gatewayd.http.errors import classify, error_body, error_response
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
    """CORS from the live config. No origins configured: no cross-origin access.

    A preflight is answered here: 204 with the allowed methods and headers, or 403
    ``CORS_REJECTED`` in the error shape of the path's dialect when the origin, the method
    or a request header is not allowed (a browser shows the script nothing of it either way;
    the body is for whoever debugs it).
    """

    METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    #: X-API-Key: /api/v1 clients may authenticate with it (docs/contract/api-v1.md);
    #: Idempotency-Key: sends of the agents API.
    HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "X-API-Key", "Idempotency-Key")
    #: Safelisted by the Fetch standard, yet listed in a preflight when a value is unusual.
    SAFELISTED = ("accept", "accept-language", "content-language")
    ALLOW_METHODS = ", ".join(METHODS)
    ALLOW_HEADERS = ", ".join(HEADERS)
    _ALLOWED_HEADERS = frozenset(h.lower() for h in HEADERS) | frozenset(SAFELISTED)

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _allowed(self, origin: str) -> str | None:
        origins = self.settings().server.cors_origins
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    def _refusal(self, headers: Headers, allowed: str | None) -> str | None:
        """Why a preflight is refused, or None when it is not."""
        if allowed is None:
            return "Cross-origin requests from this origin are not allowed"
        method = headers.get("access-control-request-method", "").strip().upper()
        if method not in self.METHODS:
            return f"Method not allowed cross-origin; allowed: {self.ALLOW_METHODS}"
        asked = headers.get("access-control-request-headers", "")
        refused = sorted(
            {n for n in (p.strip().lower() for p in asked.split(",")) if n} - self._ALLOWED_HEADERS
        )
        if refused:
            names = ", ".join(refused[:10])[:200]  # what the client sent: bounded
            return (
                f"Request headers not allowed cross-origin: {names}; allowed: {self.ALLOW_HEADERS}"
            )
        return None

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, allowed: str | None
    ) -> None:
        refusal = self._refusal(headers, allowed)
        if refusal is not None:
            state = scope.setdefault("state", {})
            state["error_code"] = "CORS_REJECTED"  # counted like every error answer
            body = error_body(scope, "CORS_REJECTED", refusal, None, state.get("trace_id", ""))
            response = JSONResponse(body, status_code=403, headers={"Vary": "Origin"})
            await response(scope, receive, send)
            return
        assert allowed is not None
        response_headers = [
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
            (b"access-control-allow-origin", allowed.encode()),
            (b"access-control-allow-methods", self.ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", self.ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})

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
            await self._preflight(scope, receive, send, headers, allowed)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and allowed:
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = allowed
                out["Access-Control-Expose-Headers"] = "X-Request-ID"
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, with_cors)


#: POST /agents/{agentId}/media carries an image as base64 in JSON.
_MEDIA_PATH = re.compile(r"/agents/[^/]+/media/?")
#: Room for the JSON around the base64 (to, caption, mimetype, filename).
MEDIA_BODY_SLACK = 64 * 1024


def body_limit(config: Config, path: str) -> tuple[int, type[GatewayError]]:
    """The largest body accepted on ``path``, and the error refusing a larger one.

    The media route takes base64 of up to ``media.max_bytes`` (4/3 of it, plus the JSON
    around it) even when ``server.body_limit`` is smaller, and says ``MEDIA_TOO_LARGE``.
    """
    if _MEDIA_PATH.fullmatch(path):
        base64_size = -(-config.media.max_bytes * 4 // 3)  # rounded up
        return max(config.server.body_limit, base64_size + MEDIA_BODY_SLACK), MediaTooLarge
    return config.server.body_limit, PayloadTooLarge


class BodyLimit:
    """Refuse bodies over ``body_limit`` for the path: by Content-Length before reading, and
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
        limit, too_large = body_limit(self.settings(), scope.get("path", ""))
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
                    raise too_large(f"Request body is larger than {limit} bytes")
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
                raise too_large(f"Request body is larger than {limit} bytes")
            await self.app(scope, counting_receive, closing_send)
        except (PayloadTooLarge, MediaTooLarge) as exc:
            if started:
                raise
            await error_response(scope, exc)(scope, receive, closing_send)
