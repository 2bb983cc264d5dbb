"""/api/v1 sessions by id: the dashboard family (docs/contract/api-v1.md §7)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload
from gatewayd.http import bodies
from gatewayd.http.request import read_json, services, trace_id
from gatewayd.http.v1.common import authed, iso, ok
from gatewayd.http.v1.render import (
    dashboard_status,
    expires_in,
    qr_data_url,
    session_summary,
)
from gatewayd.store import owned
from gatewayd.store.agents import AgentRecord
from gatewayd.store.owned import uptime_percentage
from gatewayd.usecases import pairing, user_sessions
from gatewayd.usecases.core import Services
from gatewayd.usecases.identity import Principal
from gatewayd.usecases.messagelog import LogEntry, MessageQuery, message_log
from gatewayd.usecases.sessions import session_state
from gatewayd.usecases.user_sessions import NewSession, SendRequest, SessionChange
from gatewayd.usecases.webhooks import EVENTS, unknown_events

_SEND_TYPES = ("text", "image", "document", "audio", "video")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
_LIMIT = re.compile(r"[0-9]{1,3}")


def _name(body: dict[str, Any], key: str = "session_name") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise InvalidPayload(f"'{key}' must be 1-100 characters", details={"field": key})
    return value.strip()


def _webhook(body: dict[str, Any]) -> str | None:
    value = body.get("webhook_url")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 2048 or not _URL.fullmatch(value):
        raise InvalidPayload(
            "'webhook_url' must be an absolute http(s) URL", details={"field": "webhook_url"}
        )
    return value


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")
#: Headers a session may not set: the request's own framing and the signature's.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection"}
)


def _events(body: dict[str, Any]) -> list[str]:
    value = body.get("webhook_events")
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise InvalidPayload(
            "'webhook_events' must be a list of event names", details={"field": "webhook_events"}
        )
    unknown = unknown_events(value)
    if unknown:
        raise InvalidPayload(
            f"unknown webhook events {unknown}; known: {', '.join(EVENTS)}",
            details={"field": "webhook_events"},
        )
    return list(dict.fromkeys(value))


def _headers(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("webhook_headers")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 20:
        raise InvalidPayload(
            "'webhook_headers' must be an object of at most 20 headers",
            details={"field": "webhook_headers"},
        )
    headers: dict[str, str] = {}
    for name, text in value.items():
        lowered = name.lower()
        if (
            not _HEADER_NAME.fullmatch(name)
            or lowered in _RESERVED_HEADERS
            or lowered.startswith("webhook-")
            or not isinstance(text, str)
            or len(text) > 4096
            or not all(" " <= c <= "~" or c == "\t" for c in text)
        ):
            raise InvalidPayload(
                f"'webhook_headers' has a header that cannot be sent: {name[:100]!r}",
                details={"field": "webhook_headers"},
            )
        headers[name] = text
    return headers


def webhook_settings(record: AgentRecord, new_secret: str | None) -> dict[str, Any]:
    """A session's webhook settings as answered: custom header values are secrets (masked);
    the signing secret appears only when it was just made."""
    data: dict[str, Any] = {
        "webhook_events": list(record.webhook_events),
        "webhook_headers": {name: "***" for name in record.webhook_headers},
    }
    if new_secret is not None:
        data["webhook_secret"] = new_secret
    return data


async def create_session(request: Request, principal: Principal) -> Response:
    body = await read_json(request)
    new = NewSession(name=_name(body), webhook_url=_webhook(body))
    found = services(request)
    saved = await user_sessions.create(found, principal.user_id, new)
    record = saved.record
    data = {
        **session_summary(session_state(found, record)),
        "qr_code": None,
        "created_at": iso(record.created_at),
        **webhook_settings(record, saved.new_webhook_secret),
    }
    return ok(data, "Session created successfully. Please start the session to get QR code.", 201)


async def list_sessions(request: Request, principal: Principal) -> Response:
    now = datetime.now(UTC)
    states = await user_sessions.list_sessions(services(request), principal.user_id)
    data = [
        {
            **session_summary(state),
            "last_connected": iso(state.record.last_connected_at),
            "uptime_percentage": uptime_percentage(state.record, now),
            "created_at": iso(state.record.created_at),
        }
        for state in states
    ]
    return ok(data, "Sessions retrieved successfully")


async def _owned(request: Request, principal: Principal) -> Any:
    return await user_sessions.owned_session(
        services(request), principal.user_id, request.path_params["session_id"]
    )


async def _read(request: Request, principal: Principal) -> AgentRecord:
    """The session for an answer that changes nothing (from memory while it runs unchanged)."""
    return await user_sessions.read_session(
        services(request), principal.user_id, request.path_params["session_id"]
    )


async def get_session(request: Request, principal: Principal) -> Response:
    found = services(request)
    state = session_state(found, await _read(request, principal))
    record = state.record
    qr = state.qr if state.status == "awaiting_qr" else None
    data = {
        **session_summary(state),
        "qr_code": await qr_data_url(qr, state.qr_state),
        "device_info": record.device_info,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "last_connected": iso(record.last_connected_at),
        **webhook_settings(record, None),
    }
    return ok(data)


async def update_session(request: Request, principal: Principal) -> Response:
    body = await read_json(request)
    fields = ("session_name", "webhook_url", "webhook_events", "webhook_headers")
    rotate = body.get("rotate_webhook_secret", False)
    if not isinstance(rotate, bool):
        raise InvalidPayload(
            "'rotate_webhook_secret' must be true or false",
            details={"field": "rotate_webhook_secret"},
        )
    if not any(field in body for field in fields) and not rotate:
        raise InvalidPayload(f"Give at least one of {', '.join(fields)}, rotate_webhook_secret")
    change = SessionChange(
        name=_name(body) if "session_name" in body else None,
        webhook_url=_webhook(body) if "webhook_url" in body else owned.UNSET,
        webhook_events=_events(body) if "webhook_events" in body else owned.UNSET,
        webhook_headers=_headers(body) if "webhook_headers" in body else owned.UNSET,
        rotate_webhook_secret=rotate,
    )
    found = services(request)
    saved = await user_sessions.update(
        found, principal.user_id, request.path_params["session_id"], change
    )
    record = saved.record
    state = session_state(found, record)
    data = {
        "session_id": str(record.id),
        "session_name": record.name,
        "webhook_url": record.webhook_url,
        "status": dashboard_status(state.status),
        "status_detail": state.status,
        "updated_at": iso(record.updated_at),
        **webhook_settings(record, saved.new_webhook_secret),
    }
    return ok(data, "Session updated successfully")


async def _started(started: user_sessions.Started, message: str) -> dict[str, Any]:
    state = started.state
    data: dict[str, Any] = {
        "session_id": str(state.record.id),
        "status": "qr" if started.qr is not None else dashboard_status(state.status),
        "status_detail": "awaiting_qr" if started.qr is not None else state.status,
    }
    if started.qr is not None:
        data["qr_code"] = await qr_data_url(started.qr)
        data["expires_in"] = expires_in(started.qr)
    data["message"] = message
    return data


async def _start_answer(started: user_sessions.Started, without_qr: str) -> Response:
    message = (
        "Please scan the QR code to connect WhatsApp" if started.qr is not None else without_qr
    )
    return ok(await _started(started, message), message)


async def start_session(request: Request, principal: Principal) -> Response:
    started = await user_sessions.start(services(request), await _owned(request, principal))
    return await _start_answer(started, "Session started")


async def reconnect_session(request: Request, principal: Principal) -> Response:
    started = await user_sessions.reconnect(services(request), await _owned(request, principal))
    return await _start_answer(started, "Session reconnected successfully")


async def delete_session(request: Request, principal: Principal) -> Response:
    found = services(request)
    record = await _owned(request, principal)
    await found.agents.delete(record.agent_id)
    return ok(message="Session deleted successfully")


async def session_qr(request: Request, principal: Principal) -> Response:
    found = services(request)
    state = session_state(found, await _read(request, principal))
    qr = state.qr if state.status == "awaiting_qr" else None
    data = {
        "qr_code": await qr_data_url(qr, state.qr_state),
        "status": dashboard_status(state.status),
        "status_detail": state.status,
        "expires_in": expires_in(qr),
    }
    return ok(data)


def _send_request(body: dict[str, Any]) -> SendRequest:
    kind = body.get("type", "text")
    if kind not in _SEND_TYPES:
        raise InvalidPayload(
            f"'type' must be one of {', '.join(_SEND_TYPES)}", details={"field": "type"}
        )
    content = bodies.text(body, "content", required=kind == "text")
    media_url = body.get("media_url")
    if kind != "text" and (not isinstance(media_url, str) or not _URL.fullmatch(media_url)):
        raise InvalidPayload(
            f"'media_url' (an absolute http(s) URL) is required for type {kind!r}",
            details={"field": "media_url"},
        )
    return SendRequest(
        to=bodies.recipient(body),
        type=kind,
        content=content,
        media_url=media_url if kind != "text" else None,
        quoted_message_id=bodies.quote_id(body, "quoted_message_id"),
        filename=bodies.text(body, "filename", required=False, limit=255),
    )


async def send_message(request: Request, principal: Principal) -> Response:
    found = services(request)
    record = await _owned(request, principal)
    key = bodies.idempotency_key(request.headers.get("idempotency-key"))
    send = _send_request(await read_json(request))
    sent = await user_sessions.send(found, record, send, trace_id(request), key)
    data = {
        "message_id": sent.message_id,
        "status": "sent",
        "timestamp": iso(datetime.fromtimestamp(sent.timestamp_ms / 1000, UTC)),
    }
    return ok(data, "Message sent successfully")


def _time(value: str | None, key: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidPayload(f"'{key}' must be an ISO 8601 time", details={"field": key}) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _message_query(params: Any) -> MessageQuery:
    direction = params.get("direction")
    if direction not in (None, "incoming", "outgoing"):
        raise InvalidPayload(
            "'direction' must be incoming or outgoing", details={"field": "direction"}
        )
    limit_text = params.get("limit", "50")
    # ASCII digits only: str.isdigit() accepts '²' and '５', and int() refuses 5000 digits.
    if _LIMIT.fullmatch(limit_text) is None or not 1 <= int(limit_text) <= 200:
        raise InvalidPayload("'limit' must be 1-200", details={"field": "limit"})
    return MessageQuery(
        direction=direction,
        type=params.get("type"),
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
        limit=int(limit_text),
        cursor=params.get("cursor"),
    )


def _received_media(found: Services, entry: LogEntry) -> str | None:
    """A signed link to a received message's media (sent media is the client's own)."""
    return found.media.url(entry.row_id, entry.type) if entry.direction == "incoming" else None


def _log_entry(entry: LogEntry, media_url: str | None) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "direction": entry.direction,
        "type": entry.type,
        "from": entry.from_,
        "from_lid": entry.from_lid,
        "from_name": entry.from_name,
        "to": entry.to,
        "to_lid": entry.to_lid,
        "content": entry.content,
        "media_url": media_url,
        "is_group": entry.is_group,
        "group_id": entry.group_id,
        "group_name": None,  # §7.10 names it; group names are not stored
        "quoted_message_id": entry.quoted_message_id,
        "status": entry.status,
        "timestamp": iso(entry.timestamp),
    }


async def list_messages(request: Request, principal: Principal) -> Response:
    query = _message_query(request.query_params)
    found = services(request)
    page = await message_log(found.db, await _read(request, principal), query)
    data = {
        "messages": [_log_entry(entry, _received_media(found, entry)) for entry in page.messages],
        "next_cursor": page.next_cursor,
    }
    return ok(data, "Messages retrieved successfully")


async def pair_code(request: Request, principal: Principal) -> Response:
    body = await read_json(request)
    phone = bodies.recipient(body, "phone")
    found = services(request)
    record = await _owned(request, principal)
    code = await pairing.request_pair_code(
        found.agents,
        record.agent_id,
        phone,
        default_country_code=found.config.whatsapp.default_country_code,
    )
    data = {"pair_code": code.code, "expires_in": int(code.expires_in)}
    return ok(
        data, "Type this code on the phone: WhatsApp → Linked devices → Link with phone number"
    )


def sessions_routes() -> list[BaseRoute]:
    by_id = "/api/v1/sessions/{session_id}"
    return [
        Route("/api/v1/sessions", authed(create_session), methods=["POST"]),
        Route("/api/v1/sessions", authed(list_sessions), methods=["GET"]),
        Route(by_id, authed(get_session), methods=["GET"]),
        Route(by_id, authed(update_session), methods=["PUT"]),
        Route(by_id, authed(delete_session), methods=["DELETE"]),
        Route(f"{by_id}/start", authed(start_session), methods=["POST"]),
        Route(f"{by_id}/reconnect", authed(reconnect_session), methods=["POST"]),
        Route(f"{by_id}/qr", authed(session_qr), methods=["GET"]),
        Route(f"{by_id}/send", authed(send_message), methods=["POST"]),
        Route(f"{by_id}/messages", authed(list_messages), methods=["GET"]),
        Route(f"{by_id}/pair-code", authed(pair_code), methods=["POST"]),
    ]
