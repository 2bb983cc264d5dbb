"""Session use cases: create or rehydrate, status, delete, reconnect, force a QR; and the
agents API's key check with lazy key re-sync (docs/contract/agents-api.md).

Both HTTP dialects call these; nothing here knows about requests or responses. Reads of a
running agent's row come from memory (:func:`read_agent`, gatewayd/usecases/core.py
``AgentRows``); what changes a row without its handle forgets it there.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from gatewayd.errors import Conflict, InvalidPayload, QrTimeout, SessionNotFound, Unauthorized
from gatewayd.store import agents as agents_store
from gatewayd.store import keys as keys_store
from gatewayd.usecases.core import Services, seen
from gatewayd.whatsapp.qr import QrSnapshot, QrState, render_qr_png

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()


@attrs.frozen
class CreatedSession:
    created: bool
    already_connected: bool
    record: agents_store.AgentRecord
    qr: QrSnapshot | None


@attrs.frozen
class CreateSession:
    """The agents API's ``POST /sessions``."""

    user_id: str
    agent_id: str
    agent_name: str
    apikey: str | None = None
    #: Without a key of the user's and an ``apikey``, give the agent a key of its own (the
    #: /api/v1 families authenticate users, not agents) instead of refusing.
    issue_key: bool = False


@attrs.frozen
class SessionState:
    """An agent's persisted row and what its running tree knows now."""

    record: agents_store.AgentRecord
    status: str
    status_reason: str | None
    connected: bool
    has_client: bool
    qr: QrSnapshot | None
    qr_state: QrState | None


async def qr_png(snapshot: QrSnapshot | None, state: QrState | None = None) -> bytes | None:
    """The PNG of a QR, or None.

    The agent's QR state renders each QR once; a snapshot that is no longer the latest
    (it rotated meanwhile) is rendered on its own."""
    if snapshot is None:
        return None
    png = await state.png() if state is not None and state.latest is snapshot else None
    if png is None:
        png = await trio.to_thread.run_sync(render_qr_png, snapshot.payload)
    return png


async def first_qr(handle: AgentHandle, wait: float) -> QrSnapshot | None:
    if handle.qr.latest is not None:
        return handle.qr.latest
    return await handle.qr.wait_next(wait)


async def create_session(services: Services, request: CreateSession) -> CreatedSession:
    """POST /sessions: key = the user's latest active key, else ``apikey``; a connected
    agent is left alone; one that exists but is not ready is reset and started again."""
    db, agents = services.db, services.agents
    user_id, agent_id, agent_name = request.user_id, request.agent_id, request.agent_name
    table = services.config.database.api_keys_table
    key = await keys_store.latest_active_key(db, table, user_id) or request.apikey
    if not key and request.issue_key:
        key = agent_key()
    if not key:
        raise InvalidPayload("No active API key for this user and no 'apikey' in the body")
    existing = await agents_store.get_agent(db, agent_id)
    if existing is not None and existing.user_id != user_id:
        raise Conflict(f"agentId {agent_id!r} belongs to another user")
    handle = agents.get(agent_id)
    if existing is not None and handle is not None and handle.connected:
        await keys_store.set_agent_key(db, agent_id, key)
        services.records.forget(agent_id=agent_id)
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
            endpoint_url_run=existing.endpoint_url_run or seeded_endpoint(services, agent_id),
        )
        created = False
    else:
        await agents_store.create_agent(
            db,
            agent_id=agent_id,
            name=agent_name,
            user_id=user_id,
            api_key=key,
            endpoint_url_run=seeded_endpoint(services, agent_id),
        )
        created = True
    services.records.forget(agent_id=agent_id, user_id=user_id)
    handle = await agents.start(agent_id)
    qr = await first_qr(handle, services.config.sessions.create_qr_wait)
    record = await agents_store.get_agent(db, agent_id)
    assert record is not None
    return CreatedSession(created, False, record, qr)


def agent_key() -> str:
    """A key of the agent's own: what its AI backend receives as the Bearer token."""
    return "gwa_" + secrets.token_urlsafe(32)


def seeded_endpoint(services: Services, agent_id: str) -> str | None:
    """``${AI_BACKEND_URL}/agents/{agentId}/execute`` (docs/contract/agents-api.md), or None
    without a backend URL."""
    base = services.config.ai.backend_url.rstrip("/")
    return f"{base}/agents/{agent_id}/execute" if base else None


async def read_agent(services: Services, agent_id: str) -> agents_store.AgentRecord | None:
    """The agent's row for a read: from memory while the agent runs and shows no change since
    the row was read (``AgentRows``), else from the database."""
    rows, handle = services.records, services.agents.get(agent_id)

    async def read() -> agents_store.AgentRecord | None:
        was, epoch = (None if handle is None else seen(handle)), rows.epoch
        record = await agents_store.get_agent(services.db, agent_id)
        if record is not None:
            rows.put(record, was, epoch)
        return record

    if handle is None:
        return await read()
    return await rows.row_reads.run(agent_id, lambda: rows.look(agent_id, handle), read)


async def session_status(services: Services, agent_id: str) -> SessionState:
    """The persisted row plus the live state."""
    record = await read_agent(services, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    return session_state(services, record)


def session_state(services: Services, record: agents_store.AgentRecord) -> SessionState:
    handle = services.agents.get(record.agent_id)
    if handle is None:
        return SessionState(record, record.status, record.status_reason, False, False, None, None)
    status = handle.status if handle.status != "unknown" else record.status
    return SessionState(
        record, status, handle.status_reason, handle.connected, True, handle.qr.latest, handle.qr
    )


async def delete_session(services: Services, agent_id: str) -> bool:
    """Delete the agent; whether WhatsApp was told the device is unlinked."""
    return await services.agents.delete(agent_id)


async def reconnect_session(services: Services, agent_id: str) -> QrSnapshot | None:
    """POST /sessions/{agentId}/reconnect: log out, start again, return the new QR."""
    if await agents_store.get_agent(services.db, agent_id) is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    handle = await services.agents.new_pairing(agent_id)
    snapshot = await first_qr(handle, services.config.sessions.qr_wait)
    if snapshot is None:
        raise QrTimeout(f"No QR within {services.config.sessions.qr_wait:g} s")
    return snapshot


async def force_qr(services: Services, agent_id: str) -> QrSnapshot | None:
    """POST /sessions/{agentId}/qr: the current QR, or a new pairing's first one (≤ qr_wait).
    None when the agent is connected (there is nothing to scan)."""
    record = await agents_store.get_agent(services.db, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    handle = services.agents.get(agent_id)
    if handle is not None and handle.connected:
        return None
    if handle is None or handle.terminal or record.device_jid is not None:
        handle = await services.agents.new_pairing(agent_id)
    snapshot = await first_qr(handle, services.config.sessions.qr_wait)
    if snapshot is None:
        raise QrTimeout(f"No QR within {services.config.sessions.qr_wait:g} s")
    return snapshot


# ---------------------------------------------------------------------------- auth


async def authorize_agent(
    services: Services, agent_id: str, token: str
) -> agents_store.AgentRecord:
    """The Bearer token must equal the agent's key. On a mismatch: 401 now, and the
    agent's key is re-synced in the background to the user's latest active key, so the
    next call with the new key passes (docs/contract/agents-api.md). The key is compared with
    the row as :func:`read_agent` has it: a re-sync forgets the row it changed."""
    record = await read_agent(services, agent_id)
    if record is None:
        raise SessionNotFound(f"No session for agent {agent_id!r}")
    if not hmac.compare_digest(token.encode(), record.api_key.encode()):
        services.keysync.request(record.agent_id, record.user_id)
        raise Unauthorized("Invalid API key for this agent")
    return record


def require_admin(services: Services, token: str | None) -> None:
    """With ``server.admin_token`` set, /sessions* need it as a Bearer token."""
    expected = services.config.server.admin_token
    if not expected:
        return
    if token is None:
        raise Unauthorized("Missing Authorization header")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Invalid admin token")
