"""What handlers read from a request: its JSON body, credentials, trace id, and the services."""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request

from gatewayd.errors import Unauthorized
from gatewayd.http.validate import check_content_type, parse_body
from gatewayd.usecases.core import Services

#: Bodies larger than this are parsed in a worker thread, so the event loop keeps serving.
PARSE_INLINE_BYTES = 64 * 1024
SIM_PREFIX = "/_sim/"


async def read_json(request: Request, *, any_text: bool | None = None) -> dict[str, Any]:
    """The request's JSON object, checked whole by ``gatewayd.http.validate``: InvalidPayload
    (or UnsupportedMediaType) says what is wrong before any handler acts on it.

    Strings with NUL or lone surrogates are refused unless ``any_text``; by default they
    pass only under ``/_sim/``, whose bodies stand for what WhatsApp sends, not for a client.
    """
    if any_text is None:
        any_text = request.url.path.startswith(SIM_PREFIX)
    check_content_type(request.headers.get("content-type"))
    body = await request.body()
    if len(body) <= PARSE_INLINE_BYTES:
        return parse_body(body, any_text=any_text)
    return await trio.to_thread.run_sync(lambda: parse_body(body, any_text=any_text))


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def trace_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("trace_id", ""))


def bearer_token(header: str | None, *, what: str = "api key") -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise Unauthorized("Missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"Authorization must be 'Bearer <{what}>'")
    return token.strip()


def optional_bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    return None if header is None else bearer_token(header)
