"""/api/v1 by agentId: the agent family (docs/contract/api-v1.md §8).

Its clients send ``agentId`` in a JSON body even on GET and DELETE; the query string works
too, and the body wins when both carry one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload, QrTimeout
from gatewayd.http import bodies
from gatewayd.http.request import read_json, services, trace_id
from gatewayd.http.v1.common import authed, iso, ok
from gatewayd.http.v1.render import agent_status, expires_in, qr_data_url
from gatewayd.store import owned
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases import langchain, messaging, sessions, user_sessions
from gatewayd.usecases.identity import Principal
from gatewayd.usecases.sessions import session_state

_HEADER_TEXT = re.compile(r"[\x20-\x7e]+")


async def _body(request: Request) -> dict[str, Any]:
    """The JSON body if there is one (GET and DELETE may carry one here)."""
    if not await request.body():
        return {}
    return await read_json(request)


def _agent_id(body: dict[str, Any], request: Request) -> str:
    value = body.get("agentId", request.query_params.get("agentId"))
    if value is None:
        raise InvalidPayload("'agentId' is required", details={"field": "agentId"})
    return bodies.agent_id(value)


def _user_id(body: dict[str, Any]) -> str | None:
    value = body.get("userId")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidPayload("'userId' must be a string or number", details={"field": "userId"})
    return value


async def _owned(request: Request, principal: Principal) -> tuple[dict[str, Any], AgentRecord]:
    body = await _body(request)
    user_sessions.check_user(principal.user_id, _user_id(body))
    record = await user_sessions.owned_agent(
        services(request), principal.user_id, _agent_id(body, request)
    )
    return body, record


async def create_session(request: Request, principal: Principal) -> Response:
    body = await read_json(request)
    user_sessions.check_user(principal.user_id, _user_id(body))
    agent_id = _agent_id(body, request)
    name = body.get("agentName", agent_id)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidPayload(
            "'agentName' must be a non-empty string", details={"field": "agentName"}
        )
    found = services(request)
    created = await user_sessions.create_for_agent(found, principal.user_id, agent_id, name)
    record = created.record
    data: dict[str, Any]
    if created.already_connected:
        data = {
            "sessionId": str(record.id),
            "agentId": record.agent_id,
            "qrCode": None,
            "status": "connected",
            "expiresIn": None,
        }
        return ok(data, "Session already connected")
    if created.qr is None:
        raise QrTimeout(f"No QR within {found.config.sessions.create_qr_wait:g} s")
    data = {
        "sessionId": str(record.id),
        "agentId": record.agent_id,
        "qrCode": await qr_data_url(created.qr),
        "status": "waiting_scan",
        "expiresIn": expires_in(created.qr),
    }
    return ok(data, "Session created successfully")


async def session_status(request: Request, principal: Principal) -> Response:
    _, record = await _owned(request, principal)
    state = session_state(services(request), record)
    data = {
        "agentId": record.agent_id,
        "status": agent_status(state.status),
        "statusDetail": state.status,
        "phoneNumber": record.phone_number,
        "connectedAt": iso(record.last_connected_at),
    }
    return ok(data)


async def reconnect_session(request: Request, principal: Principal) -> Response:
    _, record = await _owned(request, principal)
    snapshot = await sessions.reconnect_session(services(request), record.agent_id)
    data = {
        "sessionId": str(record.id),
        "agentId": record.agent_id,
        "qrCode": await qr_data_url(snapshot),
        "status": "waiting_scan",
        "expiresIn": expires_in(snapshot),
    }
    return ok(data, "Session reconnected, scan new QR code")


async def delete_session(request: Request, principal: Principal) -> Response:
    _, record = await _owned(request, principal)
    await services(request).agents.delete(record.agent_id)
    return ok(message="Session deleted successfully")


async def session_detail(request: Request, principal: Principal) -> Response:
    _, record = await _owned(request, principal)
    found = services(request)
    state = session_state(found, record)
    activity = await owned.session_activity(found.db, record.id)
    data = {
        "sessionId": str(record.id),
        "agentId": record.agent_id,
        "agentName": record.name,
        "phoneNumber": record.phone_number,
        "status": agent_status(state.status),
        "statusDetail": state.status,
        "connectedAt": iso(record.last_connected_at),
        "incomingMessages": activity.incoming,
        "outgoingMessages": activity.outgoing,
        "langchainExecutions": activity.executions,
        "lastActivity": iso(activity.last_activity),
    }
    return ok(data)


async def send_message(request: Request, principal: Principal) -> Response:
    body, record = await _owned(request, principal)
    kind = body.get("type", "text")
    if kind != "text":
        raise InvalidPayload(
            "Only type 'text' is sent here; send media with POST /api/v1/sessions/{id}/send",
            details={"field": "type"},
        )
    found = services(request)
    key = bodies.idempotency_key(request.headers.get("idempotency-key"))
    message = messaging.TextMessage(
        to=bodies.recipient(body), text=bodies.required_text(body, "message")
    )
    sent = await messaging.send_text(found, record, message, trace_id(request), key)
    data = {
        "messageId": sent.message_id,
        "agentId": record.agent_id,
        "to": sent.to.partition("@")[0],
        "status": "sent",
        "timestamp": iso(datetime.fromtimestamp(sent.timestamp_ms / 1000, UTC)),
    }
    return ok(data, "Message sent successfully")


async def langchain_execute(request: Request, principal: Principal) -> Response:
    body, record = await _owned(request, principal)
    url = bodies.required_text(body, "langchainUrl", limit=2048)
    api_key = bodies.required_text(body, "apiKey", limit=4096)
    if _HEADER_TEXT.fullmatch(api_key) is None:
        # It goes out as ``Authorization: Bearer <apiKey>``: a line break or non-ASCII text
        # cannot be a header value (nor may it split one into two).
        raise InvalidPayload(
            "'apiKey' must be printable ASCII characters", details={"field": "apiKey"}
        )
    given = body.get("input")
    if not isinstance(given, dict):
        raise InvalidPayload("'input' must be an object", details={"field": "input"})
    chat = body.get("sessionId")
    if chat is not None:
        chat = bodies.recipient(body, "sessionId")
    run = langchain.LangchainRequest(url=url, api_key=api_key, input=given, chat=chat)
    result = await langchain.execute(services(request), record, run, trace_id(request))
    data: dict[str, Any] = {
        "executionId": result.execution_id,
        "langchainResponse": result.response,
        "executionTimeMs": result.duration_ms,
    }
    if chat is not None:
        data["replySent"] = result.reply_sent
    return ok(data, "Langchain executed successfully")


def agents_v1_routes() -> list[BaseRoute]:
    """Literal paths, registered before ``/api/v1/sessions/{session_id}``."""
    return [
        Route("/api/v1/sessions/create", authed(create_session), methods=["POST"]),
        Route("/api/v1/sessions/status", authed(session_status), methods=["GET"]),
        Route("/api/v1/sessions/reconnect", authed(reconnect_session), methods=["PUT"]),
        Route("/api/v1/sessions/delete", authed(delete_session), methods=["DELETE"]),
        Route("/api/v1/sessions/detail", authed(session_detail), methods=["GET"]),
        Route("/api/v1/messages/send", authed(send_message), methods=["POST"]),
        Route("/api/v1/langchain/execute", authed(langchain_execute), methods=["POST"]),
    ]
