"""/api/v1 identity routes: PIN, login, logout, API keys (docs/contract/api-v1.md §4, §5)."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload, Unauthorized
from gatewayd.http.request import read_json, services
from gatewayd.http.v1.common import authed, client_address, credential, iso, ok, public
from gatewayd.usecases import identity
from gatewayd.usecases.identity import KeyInfo, Principal


def basic_pin(header: str | None) -> str:
    """The PIN of ``Authorization: Basic base64("PIN:")``."""
    if not header:
        raise Unauthorized("Send the PIN as HTTP Basic credentials: 'Basic base64(PIN:)'")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Unauthorized("Send the PIN as HTTP Basic credentials: 'Basic base64(PIN:)'")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        # Not a PIN: still a failed login, throttled, counted and logged as malformed.
        return ""
    return decoded.partition(":")[0]


async def generate_pin(request: Request) -> Response:
    found = services(request)
    issued = await identity.generate_pin(found.db, found.identity)
    return ok(
        {"user_id": issued.user_id, "pin": issued.pin},
        "PIN generated successfully. Please save this PIN for login.",
        201,
    )


async def login(request: Request) -> Response:
    found = services(request)
    pin = basic_pin(request.headers.get("authorization"))
    result = await identity.login(
        found.db,
        found.identity,
        pin,
        client=client_address(request),
        throttle=found.limits.logins,
        metrics=found.metrics,
    )
    data = {
        "user_id": result.user_id,
        "token": result.token,
        "pin": pin.strip().upper(),
        "expires_at": iso(result.expires_at),
    }
    return ok(data, "Login successful")


async def logout(request: Request, principal: Principal) -> Response:
    if principal.kind != "jwt":
        raise InvalidPayload(
            "Logout ends a login token; revoke API keys with DELETE /api/v1/keys/{id}"
        )
    found = services(request)
    await identity.logout(found.db, found.identity, credential(request))
    return ok(message="Logout successful")


def _key(info: KeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.name,
        "prefix": info.prefix,
        "created_at": iso(info.created_at),
        "last_used_at": iso(info.last_used_at),
        "revoked_at": iso(info.revoked_at),
    }


async def create_key(request: Request, principal: Principal) -> Response:
    found = services(request)
    body = await read_json(request) if await request.body() else {}
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidPayload("'name' must be a string")
    issued = await identity.create_key(found.db, principal.user_id, name)
    data = {
        "id": issued.id,
        "name": issued.name,
        "key": issued.key,
        "prefix": issued.prefix,
        "created_at": iso(issued.created_at),
    }
    return ok(data, "API key created. Save it now: it is not shown again.", 201)


async def list_keys(request: Request, principal: Principal) -> Response:
    keys = await identity.list_keys(services(request).db, principal.user_id)
    return ok([_key(k) for k in keys], "API keys retrieved successfully")


async def revoke_key(request: Request, principal: Principal) -> Response:
    key_id = request.path_params["key_id"]
    await identity.revoke_key(services(request).db, principal.user_id, key_id)
    return ok(message="API key revoked")


def auth_routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/auth/generate-pin", public(generate_pin), methods=["POST"]),
        Route("/api/v1/auth/login", public(login), methods=["POST"]),
        Route("/api/v1/auth/logout", authed(logout), methods=["POST"]),
        Route("/api/v1/keys", authed(create_key), methods=["POST"]),
        Route("/api/v1/keys", authed(list_keys), methods=["GET"]),
        Route("/api/v1/keys/{key_id}", authed(revoke_key), methods=["DELETE"]),
    ]
