"""The agents API (seeds 001/004), on root paths: /sessions* and /agents/{agentId}/*.

Handlers parse, call a use case, render. Success bodies carry ``data``; errors are
rendered by the one table in ``gatewayd.http.errors``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd import messaging, sessions
from gatewayd.errors import InvalidPayload
from gatewayd.http.app import read_json

if TYPE_CHECKING:
    from gatewayd.nursery.supervisor import Gateway

_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _trace(request: Request) -> str:
    return str(request.scope.get("state", {}).get("trace_id", ""))


def _agent_id(value: Any, key: str = "agentId") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _AGENT_ID.fullmatch(value):
        raise InvalidPayload(
            f"'{key}' must be 1-128 characters of letters, digits, '_', '-', '.', ':' or '@'"
        )
    return value


def ok(data: Any, status: int = 200, message: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"data": data}
    if message:
        body["message"] = message
    return JSONResponse(body, status_code=status)


# --------------------------------------------------------------------------- sessions


async def create_session(request: Request) -> Response:
    gateway = _gateway(request)
    sessions.require_admin(gateway, request.headers.get("authorization"))
    body = await read_json(request)
    user_id = body.get("userId")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 128:
        raise InvalidPayload("'userId' must be a non-empty string or number")
    agent_id = _agent_id(body.get("agentId"))
    name = body.get("agentName", agent_id)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidPayload("'agentName' must be a non-empty string")
    apikey = body.get("apikey", body.get("apiKey"))
    if apikey is not None and (not isinstance(apikey, str) or not apikey.strip()):
        raise InvalidPayload("'apikey' must be a non-empty string")
    created = await sessions.create_session(
        gateway, user_id=user_id, agent_id=agent_id, agent_name=name, apikey=apikey
    )
    record = created.record
    data: dict[str, Any] = {
        "agentId": record.agent_id,
        "userId": record.user_id,
        "agentName": record.name,
        "status": "connected" if created.already_connected else record.status,
        "endpointUrlRun": record.endpoint_url_run,
    }
    if created.already_connected:
        return ok(data, 200, "Session already connected")
    data["qr"] = await sessions.qr_image(created.qr)
    return ok(
        data,
        201 if created.created else 200,
        "Session created: scan the QR" if created.created else "Session reset: scan the QR",
    )


async def get_session(request: Request) -> Response:
    gateway = _gateway(request)
    sessions.require_admin(gateway, request.headers.get("authorization"))
    return ok(await sessions.session_status(gateway, _agent_id(request.path_params["agent_id"])))


async def delete_session(request: Request) -> Response:
    gateway = _gateway(request)
    sessions.require_admin(gateway, request.headers.get("authorization"))
    agent_id = _agent_id(request.path_params["agent_id"])
    unlinked = await sessions.delete_session(gateway, agent_id)
    # unlinked false: WhatsApp could not be reached, the phone may still list the device.
    body = {"agentId": agent_id, "deleted": True, "unlinked": unlinked}
    return ok(body, message="Session deleted")


async def reconnect_session(request: Request) -> Response:
    gateway = _gateway(request)
    sessions.require_admin(gateway, request.headers.get("authorization"))
    agent_id = _agent_id(request.path_params["agent_id"])
    snapshot = await sessions.reconnect_session(gateway, agent_id)
    return ok(
        {"agentId": agent_id, "status": "awaiting_qr", "qr": await sessions.qr_image(snapshot)}
    )


async def session_qr(request: Request) -> Response:
    gateway = _gateway(request)
    sessions.require_admin(gateway, request.headers.get("authorization"))
    agent_id = _agent_id(request.path_params["agent_id"])
    snapshot = await sessions.force_qr(gateway, agent_id)
    if snapshot is None:
        return ok(
            {"agentId": agent_id, "status": "connected", "qr": None},
            message="Session already connected",
        )
    return ok(
        {
            "agentId": agent_id,
            "status": "awaiting_qr",
            "qr": await sessions.qr_image(snapshot),
            "expiresIn": round(
                max(0.0, snapshot.expires_at - snapshot.created_at - snapshot.age()), 1
            ),
        }
    )


# --------------------------------------------------------------------------- agents


async def _authorized(request: Request) -> tuple[Gateway, Any]:
    gateway = _gateway(request)
    agent_id = _agent_id(request.path_params["agent_id"])
    record = await sessions.authorize_agent(gateway, agent_id, request.headers.get("authorization"))
    return gateway, record


_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 visible ASCII characters, or absent."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidPayload("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


async def send_message(request: Request) -> Response:
    gateway, record = await _authorized(request)
    key = _idempotency_key(request)
    body = await read_json(request)
    sent = await messaging.send_text(gateway, record, body, _trace(request), key)
    return ok(sent, message="Message sent")


async def send_media(request: Request) -> Response:
    gateway, record = await _authorized(request)
    key = _idempotency_key(request)
    body = await read_json(request)
    sent = await messaging.send_media(gateway, record, body, _trace(request), key)
    return ok(sent, message="Media sent")


async def run_agent(request: Request) -> Response:
    gateway, record = await _authorized(request)
    body = await read_json(request)
    return ok(await messaging.run_ai(gateway, record, body, _trace(request)))


def agents_routes() -> list[BaseRoute]:
    return [
        Route("/sessions", create_session, methods=["POST"]),
        Route("/sessions/{agent_id}", get_session, methods=["GET"]),
        Route("/sessions/{agent_id}", delete_session, methods=["DELETE"]),
        Route("/sessions/{agent_id}/reconnect", reconnect_session, methods=["POST"]),
        Route("/sessions/{agent_id}/qr", session_qr, methods=["POST"]),
        Route("/agents/{agent_id}/messages", send_message, methods=["POST"]),
        Route("/agents/{agent_id}/media", send_media, methods=["POST"]),
        Route("/agents/{agent_id}/run", run_agent, methods=["POST"]),
    ]
