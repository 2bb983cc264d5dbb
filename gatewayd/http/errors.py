"""From the project's exceptions to HTTP status codes and error bodies: one table per dialect.

- the agents API (root paths): ``{"error": {"code", "message", "traceId"}}``, with the codes
  of docs/contract/agents-api.md;
- ``/api/v1``: ``{"success": false, "error": {"code", "message", "details"?, "traceId"}}``,
  with the codes of docs/contract/api-v1.md §3.

Which table applies is decided by the request's path, so a handler never chooses.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import Scope

from gatewayd import errors as e
from gatewayd.http.validate import UnsupportedMediaType, escape

Table = tuple[tuple[type[BaseException], int, str], ...]

#: The agents API's table. First match wins, so subclasses come before their bases.
ERROR_TABLE: Table = (
    (e.InvalidPayload, 400, "INVALID_PAYLOAD"),
    (e.AddressRefused, 400, "INVALID_PAYLOAD"),
    (UnsupportedMediaType, 415, "UNSUPPORTED_MEDIA_TYPE"),
    (e.PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
    (e.MediaTooLarge, 413, "MEDIA_TOO_LARGE"),
    (e.Unauthorized, 401, "UNAUTHORIZED"),
    (e.Forbidden, 403, "FORBIDDEN"),
    (e.SessionNotFound, 404, "SESSION_NOT_FOUND"),
    (e.NotFound, 404, "NOT_FOUND"),
    (e.SessionNotReady, 409, "SESSION_NOT_READY"),
    (e.IdempotencyConflict, 409, "IDEMPOTENCY_CONFLICT"),
    (e.NotConnected, 409, "SESSION_NOT_READY"),
    (e.RateLimited, 429, "RATE_LIMITED"),
    (e.RateLimitExceeded, 429, "RATE_LIMITED"),
    (e.AgentStopped, 503, "SESSION_NOT_READY"),
    (e.SendTimeout, 504, "SEND_TIMEOUT"),
    (e.AITimeout, 504, "AI_TIMEOUT"),
    (e.AIDownstreamError, 502, "AI_DOWNSTREAM_ERROR"),
    (e.BadGateway, 502, "BAD_GATEWAY"),
    (e.UpstreamError, 502, "BAD_GATEWAY"),
    (e.WhatsAppError, 502, "BAD_GATEWAY"),
    (e.Conflict, 409, "CONFLICT"),
    (e.StoreUnavailable, 503, "SERVICE_UNAVAILABLE"),
    (e.StoreError, 500, "INTERNAL"),
)

#: The /api/v1 table (docs/contract/api-v1.md §3).
V1_ERROR_TABLE: Table = (
    (UnsupportedMediaType, 415, "UNSUPPORTED_MEDIA_TYPE"),
    (e.InvalidPayload, 400, "INVALID_REQUEST"),
    (e.AddressRefused, 400, "INVALID_REQUEST"),
    (e.PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
    (e.MediaTooLarge, 413, "MEDIA_TOO_LARGE"),
    (e.InvalidApiKey, 401, "INVALID_API_KEY"),
    (e.Unauthorized, 401, "UNAUTHORIZED"),
    (e.Forbidden, 403, "FORBIDDEN"),
    (e.SessionNotFound, 404, "SESSION_NOT_FOUND"),
    (e.NotFound, 404, "NOT_FOUND"),
    (e.QrTimeout, 503, "QR_GENERATION_FAILED"),
    (e.SessionNotReady, 409, "SESSION_NOT_READY"),
    (e.IdempotencyConflict, 409, "IDEMPOTENCY_CONFLICT"),
    (e.NotConnected, 409, "SESSION_NOT_READY"),
    (e.RateLimited, 429, "RATE_LIMIT_EXCEEDED"),
    (e.RateLimitExceeded, 429, "RATE_LIMIT_EXCEEDED"),
    (e.AgentStopped, 503, "SESSION_NOT_READY"),
    (e.SendTimeout, 504, "SEND_TIMEOUT"),
    (e.LangchainFailed, 502, "LANGCHAIN_EXECUTION_FAILED"),
    (e.AITimeout, 504, "AI_TIMEOUT"),
    (e.AIDownstreamError, 502, "AI_DOWNSTREAM_ERROR"),
    (e.UpstreamError, 502, "BAD_GATEWAY"),
    (e.WhatsAppError, 502, "WHATSAPP_CONNECTION_FAILED"),
    (e.Conflict, 409, "CONFLICT"),
    (e.StoreUnavailable, 503, "DATABASE_ERROR"),
    (e.StoreError, 500, "INTERNAL"),
)

#: Starlette's own HTTPExceptions (routing) by status.
HTTP_CODES: dict[int, str] = {
    400: "INVALID_PAYLOAD",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}

V1_HTTP_CODES: dict[int, str] = {**HTTP_CODES, 400: "INVALID_REQUEST", 429: "RATE_LIMIT_EXCEEDED"}

INTERNAL = (500, "INTERNAL", "Internal server error")

#: What a client reads for a database failure: PostgreSQL's own wording (which can quote
#: the values it refused) goes to the log with the stack, never into an answer.
STORE_MESSAGES: tuple[tuple[type[e.StoreError], str], ...] = (
    (e.StoreUnavailable, "The database is unavailable; try again shortly"),
    (e.Conflict, "The change conflicts with existing data"),
    (e.StoreError, INTERNAL[2]),
)


def classify(exc: BaseException, *, v1: bool = False) -> tuple[int, str, str, object]:
    """(status, code, message, details) for any exception, in the agents API's dialect or
    (``v1``) in /api/v1's."""
    if isinstance(exc, HTTPException):
        codes = V1_HTTP_CODES if v1 else HTTP_CODES
        code = codes.get(exc.status_code, "INTERNAL" if exc.status_code >= 500 else "ERROR")
        message = exc.detail if exc.status_code != 404 else "Not found"
        return exc.status_code, code, str(message), None
    for cls, status, code in V1_ERROR_TABLE if v1 else ERROR_TABLE:
        if isinstance(exc, cls):
            assert isinstance(exc, e.GatewayError)
            if isinstance(exc, e.StoreError) and _from_database(exc):
                return status, code, _store_message(exc), None
            if isinstance(exc, e.LangchainFailed) and exc.timed_out:
                status = 504
            if isinstance(exc, e.RateLimitExceeded) and exc.details is None:
                return status, code, exc.message, _limit_details(exc)
            return status, code, exc.message, exc.details
    return *INTERNAL, None


def _limit_details(exc: e.RateLimitExceeded) -> dict[str, int]:
    return {"limit": exc.limit, "retry_after": _whole_seconds(exc.retry_after)}


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds)) if seconds > 0 else 0


def rate_limit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    """The ``RateLimit-*`` headers of a limited route's answer."""
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, remaining)),
        "RateLimit-Reset": str(_whole_seconds(reset)),
    }


def _headers(exc: BaseException) -> dict[str, str] | None:
    if isinstance(exc, HTTPException):
        return dict(exc.headers) if exc.headers else None
    if isinstance(exc, e.RateLimitExceeded):
        headers = rate_limit_headers(exc.limit, exc.remaining, exc.reset)
        headers["Retry-After"] = str(_whole_seconds(exc.retry_after))
        return headers
    return None


def _from_database(exc: e.StoreError) -> bool:
    # Translated from psycopg by the store's map_exceptions (its details carry the SQLSTATE);
    # a plain StoreError is never ours to explain either.
    details = exc.details
    return type(exc) is e.StoreError or (isinstance(details, dict) and "sqlstate" in details)


def _store_message(exc: e.StoreError) -> str:
    return next(message for cls, message in STORE_MESSAGES if isinstance(exc, cls))


def is_v1(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return path == "/api/v1" or path.startswith("/api/v1/")


def error_body(
    scope: Scope, code: str, message: str, details: object, trace_id: str
) -> dict[str, Any]:
    # A message may quote what the client sent: escape what JSON cannot carry as UTF-8.
    error: dict[str, Any] = {"code": code, "message": escape(message)}
    if is_v1(scope):
        if details is not None:
            error["details"] = details
        error["traceId"] = trace_id
        return {"success": False, "error": error}
    error["traceId"] = trace_id
    return {"error": error}


def error_response(scope: Scope, exc: BaseException) -> JSONResponse:
    status, code, message, details = classify(exc, v1=is_v1(scope))
    state = scope.setdefault("state", {})
    trace_id = state.get("trace_id", "")
    state["error_code"] = code  # RequestMetrics counts whatsapp_errors_total by it
    return JSONResponse(
        error_body(scope, code, message, details, trace_id),
        status_code=status,
        headers=_headers(exc),
    )
