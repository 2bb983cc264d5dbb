"""Session use cases of the agents API (seed 001 §6, seed 004): create or rehydrate,
status, delete, reconnect, force a QR; and the Bearer check with lazy key re-sync.

Both HTTP dialects call these; nothing here knows about requests or responses.
"""

from __future__ import annotations

import base64
import hmac
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from gatewayd.errors import Conflict, InvalidPayload, SessionNotFound, SessionNotReady, Unauthorized
from gatewayd.store import agents as agents_store
from gatewayd.store import keys as keys_store
from gatewayd.whatsapp.qr import QrSnapshot, QrState, render_qr_png

if TYPE_CHECKING:
    from gatewayd.nursery.agent import AgentHandle
    from gatewayd.nursery.supervisor import Gateway

log = structlog.get_logger()

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


@attrs.frozen
class CreatedSession:
    created: bool
    already_connected: bool
    record: agents_store.AgentRecord
    qr: QrSnapshot | None


async def qr_image(
    snapshot: QrSnapshot | None, state: QrState | None = None
) -> dict[str, str] | None:
    """The contract's ``{contentType: "image/png", base64}`` for a QR, or None.

    The agent's QR state renders each QR once; a snapshot that is no longer the latest
    (it rotated meanwhile) is rendered on its own."""
    if snapshot is None:
        return None
    png = await state.png() if state is not None and state.latest is snapshot else None
    if png is None:
        png = await trio.to_thread.run_sync(render_qr_png, snapshot.payload)
    return {"contentType": "image/png", "base64": base64.b64encode(png).decode()}


async def _first_qr(handle: AgentHandle, wait: float) -> QrSnapshot | None:
    if handle.qr.latest is not None:
        return handle.qr.latest
    return await handle.qr.wait_next(wait)


async def create_session(
    gateway: Gateway, *, user_id: str, agent_id: str, agent_name: str, apikey: str | None
) -> CreatedSession:
    """POST /sessions: key = the user's latest active key, else ``apikey``; a connected
    agent is left alone; one that exists but is not ready is reset and started again."""
    db, agents = gateway.db, gateway.agents
    key = await keys_store.latest_active_key(db, gateway.config.database.api_keys_table, user_id)
    key = key or apikey
    if not key:
        raise InvalidPayload("No active API key for this user and no 'apikey' in the body")
    existing = await agents_store.get_agent(db, agent_id)
    if existing is not None and existing.user_id != user_id:
        raise Conflict(f"agentId {agent_id!r} belongs to another user")
    handle = agents.get(agent_id)
    if existing is not None and handle is not None and handle.connected:
        await keys_store.set_agent_key(db, agent_id, key)
        return CreatedSession(False, True, existing, None)
    if existing is not None:
        # Exists but not ready: reset it (device, status, name, key) and pair again.
        log.info("gatewayd.session.reset", agentId=agent_id, status=existing.status)
        await agents.logout(agent_id)
        await agents_store.reset_identity(
            db,
            existing.id,
            name=agent_name,
            api_key=key,
            endpoint_url_run=existing.endpoint_url_run or _seeded_endpoint(gateway, agent_id),
        )
        created = False
    else:
        await agents_store.create_agent(
            db,
            agent_id=agent_id,
            name=agent_name,
            user_id=user_id,
            api_key=key,
            endpoint_url_run=_seeded_endpoint(gateway, agent_id),
        )
        created = True
    handle = await agents.start(agent_id)
    qr = await _first_qr(handle, gateway.config.sessions.create_qr_wait)
    record = await agents_store.get_agent(db, agent_id)
    assert record is not None
    return CreatedSession(created, False, record, qr)


def _seeded_endpoint(gateway: Gateway, agent_id: str) -> str | None:
    """``${AI_BACKEND_URL}/agents/{agentId}/execute`` (seed 004), or None without a backend URL."""
    base = gateway.config.ai.backend_url.rstrip("/")
    return f"{base}/agents/{agent_id}/execute" if base else None


async def session_status(gateway: Gateway, agent_id: str) -> dict[str, Any]:
    """GET /sessions/{agentId}: the persisted row plus the live state."""
    record = await agents_store.get_agent(gateway.db, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    handle = gateway.agents.get(agent_id)
    live_status = (
        handle.status if handle is not None and handle.status != "unknown" else record.status
    )
    return {
        "agentId": record.agent_id,
        "userId": record.user_id,
        "agentName": record.name,
        "status": live_status,
        "statusReason": handle.status_reason if handle is not None else record.status_reason,
        "persistedStatus": record.status,
        "phoneNumber": record.phone_number,
        "endpointUrlRun": record.endpoint_url_run,
        "lastConnectedAt": _iso(record.last_connected_at),
        "lastDisconnectedAt": _iso(record.last_disconnected_at),
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "liveState": {
            "isConnected": bool(handle and handle.connected),
            "sessionState": SESSION_STATE.get(live_status, live_status.upper()),
            "isReady": bool(handle and handle.connected),
            "hasClient": handle is not None,
            "qr": await qr_image(handle.qr.latest, handle.qr) if handle is not None else None,
        },
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def delete_session(gateway: Gateway, agent_id: str) -> bool:
    """Delete the agent; whether WhatsApp was told the device is unlinked."""
    return await gateway.agents.delete(agent_id)


async def reconnect_session(gateway: Gateway, agent_id: str) -> QrSnapshot | None:
    """POST /sessions/{agentId}/reconnect: log out, start again, return the new QR."""
    if await agents_store.get_agent(gateway.db, agent_id) is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    handle = await gateway.agents.new_pairing(agent_id)
    snapshot = await _first_qr(handle, gateway.config.sessions.qr_wait)
    if snapshot is None:
        raise SessionNotReady(f"No QR within {gateway.config.sessions.qr_wait:g} s")
    return snapshot


async def force_qr(gateway: Gateway, agent_id: str) -> QrSnapshot | None:
    """POST /sessions/{agentId}/qr: the current QR, or a new pairing's first one (≤ qr_wait).
    None when the agent is connected (there is nothing to scan)."""
    record = await agents_store.get_agent(gateway.db, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    handle = gateway.agents.get(agent_id)
    if handle is not None and handle.connected:
        return None
    if handle is None or handle.terminal or record.device_jid is not None:
        handle = await gateway.agents.new_pairing(agent_id)
    snapshot = await _first_qr(handle, gateway.config.sessions.qr_wait)
    if snapshot is None:
        raise SessionNotReady(f"No QR within {gateway.config.sessions.qr_wait:g} s")
    return snapshot


# ---------------------------------------------------------------------------- auth


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <api key>'")
    return token.strip()


async def authorize_agent(
    gateway: Gateway, agent_id: str, header: str | None
) -> agents_store.AgentRecord:
    """The Bearer token must equal the agent's key. On a mismatch: 401 now, and the
    agent's key is re-synced in the background to the user's latest active key, so the
    next call with the new key passes (seed 001 §4)."""
    token = bearer_token(header)
    record = await agents_store.get_agent(gateway.db, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    if not hmac.compare_digest(token.encode(), record.api_key.encode()):
        gateway.spawn(resync_key, gateway, record.agent_id, record.user_id)
        raise Unauthorized("Invalid API key for this agent")
    return record


async def resync_key(gateway: Gateway, agent_id: str, user_id: str) -> None:
    try:
        key = await keys_store.latest_active_key(
            gateway.db, gateway.config.database.api_keys_table, user_id
        )
        if key and await keys_store.set_agent_key(gateway.db, agent_id, key):
            log.info("gatewayd.auth.key_resynced", agentId=agent_id)
    except Exception:
        log.warning("gatewayd.auth.key_resync_failed", agentId=agent_id, exc_info=True)


def require_admin(gateway: Gateway, header: str | None) -> None:
    """With ``server.admin_token`` set, /sessions* need it as a Bearer token."""
    expected = gateway.config.server.admin_token
    if not expected:
        return
    token = bearer_token(header)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Invalid admin token")
