"""The one table from the project's exceptions to HTTP status codes and error bodies.

Two dialects share it (see API.md):

- the agents API (root paths): ``{"error": {"code", "message", "traceId"}}``
- ``/api/v1``: ``{"success": false, "error": {"code", "message", "details"?, "traceId"}}``
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import Scope

from gatewayd import errors as e
from gatewayd.http.validate import UnsupportedMediaType, escape

#: First match wins, so subclasses come before their bases.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
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

INTERNAL = (500, "INTERNAL", "Internal server error")

#: What a client reads for a database failure: PostgreSQL's own wording (which can quote
#: the values it refused) goes to the log with the stack, never into an answer.
STORE_MESSAGES: tuple[tuple[type[e.StoreError], str], ...] = (
    (e.StoreUnavailable, "The database is unavailable; try again shortly"),
    (e.Conflict, "The change conflicts with existing data"),
    (e.StoreError, INTERNAL[2]),
)


def classify(exc: BaseException) -> tuple[int, str, str, object]:
    """(status, code, message, details) for any exception."""
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "INTERNAL" if exc.status_code >= 500 else "ERROR")
        message = exc.detail if exc.status_code != 404 else "Not found"
        return exc.status_code, code, str(message), None
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            assert isinstance(exc, e.GatewayError)
            if isinstance(exc, e.StoreError) and _from_database(exc):
                return status, code, _store_message(exc), None
            return status, code, exc.message, exc.details
    return *INTERNAL, None


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
    status, code, message, details = classify(exc)
    state = scope.setdefault("state", {})
    trace_id = state.get("trace_id", "")
    state["error_code"] = code  # RequestMetrics counts whatsapp_errors_total by it
    headers = getattr(exc, "headers", None) if isinstance(exc, HTTPException) else None
    return JSONResponse(
        error_body(scope, code, message, details, trace_id), status_code=status, headers=headers
    )
