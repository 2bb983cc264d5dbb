"""The daemon's HTTP edge: one ASGI layer, ``Edge``, in front of Starlette's router.

In one pass over each request and its answer it does what used to be six stacked layers:

* trace id: honour a sane ``X-Request-ID`` or make one; bind it for logs; echo it back;
* metrics: count and time every request, labelled by route template, never the raw path;
* security headers on every answer, unless the route set its own (the dashboard's CSP);
* CORS from the live config, preflights answered here;
* errors: any escaped exception is answered in the error shape of the path's dialect (a 500
  is logged with its stack), counted with its real status, and carries the headers above;
* the body limit: bodies over ``body_limit`` for the path are refused, by Content-Length
  before reading and by counting while streaming.

It also stands in for Starlette's own two layers (gatewayd/http/app.py ``GatewayApp``):
``ServerErrorMiddleware`` (the errors above) and ``ExceptionMiddleware`` (Starlette's
``HTTPException`` for 404 and 405 is rendered here like every other error).

Each request reads the live config through ``settings()``, so a SIGHUP that changes CORS
origins or the body limit takes effect without a restart.

``TraceId`` and ``Errors`` stay as layers of their own for the simulated network's server
(gatewayd/whatsapp/simnet/server.py), which needs nothing else.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException, WebSocketException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

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


#: Set on every answer unless the route set its own (the dashboard and /docs set a CSP).
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)

#: Cross-origin requests may use these methods and headers. X-API-Key: /api/v1 clients may
#: authenticate with it (docs/contract/api-v1.md); Idempotency-Key: sends of the agents API.
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "X-API-Key", "Idempotency-Key")
#: Safelisted by the Fetch standard, yet listed in a preflight when a value is unusual.
CORS_SAFELISTED = ("accept", "accept-language", "content-language")
_ALLOW_METHODS = ", ".join(CORS_METHODS)
_ALLOW_HEADERS = ", ".join(CORS_HEADERS)
_CORS_ALLOWED_HEADERS = frozenset(h.lower() for h in CORS_HEADERS) | frozenset(CORS_SAFELISTED)

_START = "http.response.start"


def _set(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """``MutableHeaders[name] = value``: the first ``name`` replaced, any other removed."""
    found = [i for i, (key, _) in enumerate(headers) if key == name]
    if not found:
        headers.append((name, value))
        return
    for i in reversed(found[1:]):
        del headers[i]
    headers[found[0]] = (name, value)


async def _close_websocket(websocket: WebSocket, exc: Exception) -> None:
    """What Starlette's ExceptionMiddleware does with a WebSocketException."""
    assert isinstance(exc, WebSocketException)
    await websocket.close(code=exc.code, reason=exc.reason)


#: Read by Starlette's routes (``wrap_app_handling_exceptions``) on a WebSocket's scope.
_WEBSOCKET_HANDLERS: tuple[dict[Any, Any], dict[int, Any]] = (
    {WebSocketException: _close_websocket},
    {},
)


class Edge:
    """The daemon's one middleware layer (see the module's docstring for what it does).

    Per request it reads the request headers once, wraps ``send`` once (status for the
    metrics, then every header it adds, in one go over the answer's header list) and
    ``receive`` once (the body limit); the metric children are looked up once per route
    template, method and status.

    Any answer that starts before the request body was read to its end (a refusal, or a
    handler that never reads the body) carries ``Connection: close``: the unread rest is
    still on the wire, and a client that reused the connection would lose its next request.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = Headers(scope=scope).get("x-request-id", "")
        trace_id = given if _TRACE_ID_OK.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["trace_id"] = trace_id
        scope["starlette.exception_handlers"] = _WEBSOCKET_HANDLERS
        tokens = structlog.contextvars.bind_contextvars(traceId=trace_id)
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        begin = time.perf_counter()
        given = origin = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if given is None:
                    given = value.decode("latin-1")
            elif name == b"origin":
                if origin is None:
                    origin = value.decode("latin-1")
            elif name == b"content-length":
                if length is None:
                    length = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = True
        trace_id = given if given and _TRACE_ID_OK.fullmatch(given) else uuid.uuid4().hex
        trace_bytes = trace_id.encode("latin-1")
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["trace_id"] = trace_id
        tokens = structlog.contextvars.bind_contextvars(traceId=trace_id)

        allowed: str | None = None
        if origin is not None:
            origins = self.settings().server.cors_origins
            allowed = "*" if "*" in origins else origin if origin in origins else None

        status = 500
        started = preflight = False
        body_done = not chunked and length in (None, "", "0")
        seen = 0
        limit: tuple[int, type[GatewayError]] | None = None

        def limits() -> tuple[int, type[GatewayError]]:
            nonlocal limit
            if limit is None:
                limit = body_limit(self.settings(), scope.get("path", ""))
            return limit

        async def edge_receive() -> Message:
            nonlocal seen, body_done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                most, too_large = limits()
                if seen > most:
                    raise too_large(f"Request body is larger than {most} bytes")
                body_done = not message.get("more_body", False)
            return message

        async def edge_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == _START:
                started = True
                status = message["status"]
                headers = message.get("headers")
                if not isinstance(headers, list):
                    headers = message["headers"] = list(headers or ())
                if not preflight:  # a preflight's answer carries its own CORS headers
                    if not body_done:
                        _set(headers, b"connection", b"close")
                    if allowed:
                        _set(headers, b"access-control-allow-origin", allowed.encode("latin-1"))
                        _set(headers, b"access-control-expose-headers", b"X-Request-ID")
                        vary = [v.decode("latin-1") for k, v in headers if k == b"vary"]
                        _set(headers, b"vary", ", ".join([*vary, "Origin"]).encode("latin-1"))
                present = {key for key, _ in headers}
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                _set(headers, b"x-request-id", trace_bytes)
            await send(message)

        try:
            if origin is not None and scope["method"] == "OPTIONS":
                asked = Headers(scope=scope)
                if "access-control-request-method" in asked:
                    preflight = True
                    await self._preflight(scope, receive, edge_send, asked, allowed)
                    return
            try:
                if length is not None and length.isdigit():
                    most, too_large = limits()
                    if int(length) > most:
                        raise too_large(f"Request body is larger than {most} bytes")
                await self.app(scope, edge_receive, edge_send)
            except HTTPException as exc:  # 404, 405 from the router: Starlette's own
                if started:
                    raise
                await error_response(scope, exc)(scope, receive, edge_send)
            except Exception as exc:
                if classify(exc)[0] >= 500:
                    log.exception(
                        "gatewayd.http.unhandled",
                        path=scope.get("path"),
                        method=scope.get("method"),
                    )
                if started:
                    raise
                await error_response(scope, exc)(scope, receive, edge_send)
        finally:
            self._count(scope, status, time.perf_counter() - begin)
            structlog.contextvars.reset_contextvars(**tokens)

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        method = scope.get("method", "")
        key = (method, template, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.metrics.http_requests.labels(
                method, template, str(status)
            )
        counter.inc()
        timer = self._durations.get(key[:2])
        if timer is None:
            timer = self._durations[key[:2]] = self.metrics.http_duration.labels(method, template)
        timer.observe(seconds)
        code = scope.get("state", {}).get("error_code")
        if code is not None:
            self.metrics.wa_errors.labels(code).inc()
        if _debugging():
            log.debug("gatewayd.http.request", method=method, route=template, status=status)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, allowed: str | None
    ) -> None:
        """A CORS preflight: 204 with the allowed methods and headers, or 403
        ``CORS_REJECTED`` in the error shape of the path's dialect when the origin, the method
        or a request header is not allowed (a browser shows the script nothing of it either
        way; the body is for whoever debugs it). Not subject to the body limit, and without
        the CORS headers of an actual request."""
        refusal = _refusal(headers, allowed)
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
            (b"access-control-allow-methods", _ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", _ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
        ]
        await send({"type": _START, "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})


def _refusal(headers: Headers, allowed: str | None) -> str | None:
    """Why a preflight is refused, or None when it is not."""
    if allowed is None:
        return "Cross-origin requests from this origin are not allowed"
    method = headers.get("access-control-request-method", "").strip().upper()
    if method not in CORS_METHODS:
        return f"Method not allowed cross-origin; allowed: {_ALLOW_METHODS}"
    asked = headers.get("access-control-request-headers", "")
    refused = sorted(
        {n for n in (p.strip().lower() for p in asked.split(",")) if n} - _CORS_ALLOWED_HEADERS
    )
    if refused:
        names = ", ".join(refused[:10])[:200]  # what the client sent: bounded
        return f"Request headers not allowed cross-origin: {names}; allowed: {_ALLOW_HEADERS}"
    return None


def _debugging() -> bool:
    """Whether a debug line would be written, asked without building a logger and running
    its processors only for them to drop the line: gatewayd/log.py keeps the standard
    library's root logger at DEBUG exactly while the live level is debug."""
    return logging.root.isEnabledFor(logging.DEBUG)
