"""What every /api/v1 handler shares: the envelope, the credential, the request budgets.

``authed`` wraps a handler that acts for a user: it finds the credential (``Authorization:
Bearer`` — a login token or an API key — or ``X-API-Key``), authenticates it, spends one request
of that user's budget, and adds the ``RateLimit-*`` headers to the answer. ``public`` wraps a
handler without a user: the budget is the client address's. A refused credential also spends
from the address's budget, so guessing keys or tokens is throttled like guessing PINs
(docs/contract/api-v1.md §4.5, §4.6, §9).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gatewayd.errors import Unauthorized
from gatewayd.http.errors import rate_limit_headers
from gatewayd.http.request import services
from gatewayd.limits import Decision, KeyedLimiter
from gatewayd.usecases import identity
from gatewayd.usecases.identity import Principal

Endpoint = Callable[[Request], Awaitable[Response]]
UserHandler = Callable[[Request, Principal], Awaitable[Response]]


def ok(data: Any = None, message: str | None = None, status: int = 200) -> JSONResponse:
    """The success envelope: ``{"success": true, "message"?, "data"?}``."""
    body: dict[str, Any] = {"success": True}
    if message is not None:
        body["message"] = message
    if data is not None:
        body["data"] = data
    return JSONResponse(body, status_code=status)


@functools.lru_cache(maxsize=4096)
def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z``, as every /api/v1 time is written. Remembered: a list of
    sessions writes the same few stored times on every request (equal instants are written
    alike whatever their zone, so one answer serves them all)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def credential(request: Request) -> str:
    """The credential of a request: a Bearer token, else an ``X-API-Key``."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <token or API key>'")
        return token.strip()
    key = request.headers.get("x-api-key")
    if key is not None and key.strip():
        return key.strip()
    raise Unauthorized("Missing credentials: send 'Authorization: Bearer …' or 'X-API-Key'")


def _spend(limiter: KeyedLimiter, key: str) -> Decision:
    decision = limiter.hit(key)
    decision.raise_if_refused("Too many requests; try again later")
    return decision


def _with_budget(response: Response, decision: Decision) -> Response:
    response.headers.update(
        rate_limit_headers(decision.limit, decision.remaining, decision.reset_seconds)
    )
    return response


def authed(handler: UserHandler) -> Endpoint:
    """An endpoint that acts for the user whose credential the request carries."""

    async def endpoint(request: Request) -> Response:
        found = services(request)
        try:
            principal = await identity.authenticate(found.db, found.identity, credential(request))
        except Unauthorized:
            _spend(found.limits.anonymous, client_address(request))
            raise
        request.state.principal = principal
        decision = _spend(found.limits.users, principal.user_id)
        return _with_budget(await handler(request, principal), decision)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def public(handler: Endpoint) -> Endpoint:
    """An endpoint without a user: the client address's budget applies."""

    async def endpoint(request: Request) -> Response:
        found = services(request)
        decision = _spend(found.limits.anonymous, client_address(request))
        return _with_budget(await handler(request), decision)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
