"""The agents API (docs/contract/agents-api.md), on root paths: /sessions* and /agents/{agentId}/*.

Handlers parse (``gatewayd.http.bodies``), call a use case, render. Success bodies carry
``data``; errors are rendered by the table in ``gatewayd.http.errors``.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.http import bodies
from gatewayd.http.request import bearer_token, optional_bearer, read_json, services, trace_id
from gatewayd.jid import to_contract_jid
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases import messaging, pairing, sessions
from gatewayd.usecases.core import Services
from gatewayd.whatsapp.qr import QrSnapshot, QrState

#: The deployed service's ``liveState.sessionState`` names for our statuses.
SESSION_STATE = {
    "connected": "CONNECTED",
    "awaiting_qr": "QR",
    "disconnected": "DISCONNECTED",
    "auth_failed": "UNPAIRED",
    "stopped": "STOPPED",
    "logged_out": "UNPAIRED",
    "replaced": "CONFLICT",
    "banned": "BANNED",
    "outdated": "OUTDATED",
}


def ok(data: Any, status: int = 200, message: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"data": data}
    if message:
        body["message"] = message
    return JSONResponse(body, status_code=status)


async def qr_image(
    snapshot: QrSnapshot | None, state: QrState | None = None
) -> dict[str, str] | None:
    """The contract's ``{contentType: "image/png", base64}`` for a QR, or None."""
    png = await sessions.qr_png(snapshot, state)
    if png is None:
        return None
    return {"contentType": "image/png", "base64": base64.b64encode(png).decode()}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _admin(request: Request) -> Services:
    found = services(request)
    sessions.require_admin(found, optional_bearer(request))
    return found


# --------------------------------------------------------------------------- sessions


async def create_session(request: Request) -> Response:
    found = _admin(request)
    created = await sessions.create_session(found, bodies.create_session(await read_json(request)))
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
    data["qr"] = await qr_image(created.qr)
    return ok(
        data,
        201 if created.created else 200,
        "Session created: scan the QR" if created.created else "Session reset: scan the QR",
    )


async def get_session(request: Request) -> Response:
    found = _admin(request)
    state = await sessions.session_status(found, bodies.agent_id(request.path_params["agent_id"]))
    record = state.record
    return ok(
        {
            "agentId": record.agent_id,
            "userId": record.user_id,
            "agentName": record.name,
            "status": state.status,
            "statusReason": state.status_reason,
            "persistedStatus": record.status,
            "phoneNumber": record.phone_number,
            "endpointUrlRun": record.endpoint_url_run,
            "lastConnectedAt": _iso(record.last_connected_at),
            "lastDisconnectedAt": _iso(record.last_disconnected_at),
            "createdAt": _iso(record.created_at),
            "updatedAt": _iso(record.updated_at),
            "liveState": {
                "isConnected": state.connected,
                "sessionState": SESSION_STATE.get(state.status, state.status.upper()),
                "isReady": state.connected,
                "hasClient": state.has_client,
                "qr": await qr_image(state.qr, state.qr_state),
            },
        }
    )


async def delete_session(request: Request) -> Response:
    found = _admin(request)
    agent_id = bodies.agent_id(request.path_params["agent_id"])
    unlinked = await sessions.delete_session(found, agent_id)
    # unlinked false: WhatsApp could not be reached, the phone may still list the device.
    body = {"agentId": agent_id, "deleted": True, "unlinked": unlinked}
    return ok(body, message="Session deleted")


async def reconnect_session(request: Request) -> Response:
    found = _admin(request)
    agent_id = bodies.agent_id(request.path_params["agent_id"])
    snapshot = await sessions.reconnect_session(found, agent_id)
    return ok({"agentId": agent_id, "status": "awaiting_qr", "qr": await qr_image(snapshot)})


async def session_qr(request: Request) -> Response:
    found = _admin(request)
    agent_id = bodies.agent_id(request.path_params["agent_id"])
    snapshot = await sessions.force_qr(found, agent_id)
    if snapshot is None:
        return ok(
            {"agentId": agent_id, "status": "connected", "qr": None},
            message="Session already connected",
        )
    return ok(
        {
            "agentId": agent_id,
            "status": "awaiting_qr",
            # The payload too: what `gatewayd qr` draws in a terminal.
            "qr": {**(await qr_image(snapshot) or {}), "payload": snapshot.payload},
            "expiresIn": round(snapshot.expires_in(), 1),
        }
    )


async def session_pair_code(request: Request) -> Response:
    found = _admin(request)
    agent_id = bodies.agent_id(request.path_params["agent_id"])
    phone = bodies.recipient(await read_json(request), "phone")
    code = await pairing.request_pair_code(
        found.agents,
        agent_id,
        phone,
        default_country_code=found.config.whatsapp.default_country_code,
    )
    data = {"agentId": agent_id, "pairCode": code.code, "expiresIn": round(code.expires_in, 1)}
    return ok(data, message="Type this code on the phone: Linked devices → Link with phone number")


# --------------------------------------------------------------------------- agents


async def _authorized(request: Request) -> tuple[Services, AgentRecord]:
    found = services(request)
    agent_id = bodies.agent_id(request.path_params["agent_id"])
    token = bearer_token(request.headers.get("authorization"))
    return found, await sessions.authorize_agent(found, agent_id, token)


def sent_body(sent: messaging.SentMessage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messageId": sent.message_id,
        "id": sent.message_id,
        "to": to_contract_jid(sent.to),
        "timestamp": sent.timestamp_ms,
    }
    if sent.mimetype is not None:
        body.update(
            {"mimetype": sent.mimetype, "size": sent.size, "previewPath": sent.preview_path}
        )
    if sent.claimed_mimetype is not None:
        body["claimedMimetype"] = sent.claimed_mimetype
    return body


async def send_message(request: Request) -> Response:
    found, record = await _authorized(request)
    key = bodies.idempotency_key(request.headers.get("idempotency-key"))
    message = bodies.text_message(await read_json(request))
    sent = await messaging.send_text(found, record, message, trace_id(request), key)
    return ok(sent_body(sent), message="Message sent")


async def send_media(request: Request) -> Response:
    found, record = await _authorized(request)
    key = bodies.idempotency_key(request.headers.get("idempotency-key"))
    body = await read_json(request)
    message = bodies.media_message(body, max_bytes=found.config.media.max_bytes)
    sent = await messaging.send_media(found, record, message, trace_id(request), key)
    return ok(sent_body(sent), message="Media sent")


async def run_agent(request: Request) -> Response:
    found, record = await _authorized(request)
    country = found.config.whatsapp.default_country_code
    run = bodies.parse_run_request(await read_json(request), default_country_code=country)
    result = await messaging.run_ai(found, record, run, trace_id(request))
    data = dict(result.body)
    data["replySent"] = result.reply_sent
    if result.message_id is not None:
        data["messageId"] = result.message_id
    if result.reply_error is not None:
        data["replyError"] = result.reply_error
    return ok(data)


def agents_routes() -> list[BaseRoute]:
    return [
        Route("/sessions", create_session, methods=["POST"]),
        Route("/sessions/{agent_id}", get_session, methods=["GET"]),
        Route("/sessions/{agent_id}", delete_session, methods=["DELETE"]),
        Route("/sessions/{agent_id}/reconnect", reconnect_session, methods=["POST"]),
        Route("/sessions/{agent_id}/qr", session_qr, methods=["POST"]),
        Route("/sessions/{agent_id}/pair-code", session_pair_code, methods=["POST"]),
        Route("/agents/{agent_id}/messages", send_message, methods=["POST"]),
        Route("/agents/{agent_id}/media", send_media, methods=["POST"]),
        Route("/agents/{agent_id}/run", run_agent, methods=["POST"]),
    ]
