"""Sessions as their user sees them: the /api/v1 families (docs/contract/api-v1.md §7, §8).

Every lookup goes through ``gatewayd.store.owned``, which answers only the authenticated user's
rows: another user's session is ``SessionNotFound``, exactly like a missing one. A session of
either family is the same agent the agents API sees.

Reads (:func:`read_session`, :func:`user_records`) answer a running agent's row from memory
while the runtime shows it unchanged (gatewayd/usecases/core.py ``AgentRows``); a row kept
there is answered only to the user it belongs to, and anyone else's lookup takes the
database path a missing session takes. Changes (start, update, send, delete) read the
database.
"""

from __future__ import annotations

import uuid

import attrs
import structlog
import trio

from gatewayd.errors import BadGateway, Forbidden, QrTimeout, SessionNotFound
from gatewayd.nursery.commands import SendKind
from gatewayd.nursery.webhooks import refresh_webhook
from gatewayd.outbound.guard import check_url, parse_http_url
from gatewayd.store import agents as agents_store
from gatewayd.store import owned
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases import messaging
from gatewayd.usecases.core import Services, seen
from gatewayd.usecases.sessions import (
    CreatedSession,
    CreateSession,
    SessionState,
    agent_key,
    create_session,
    first_qr,
    seeded_endpoint,
    session_state,
)
from gatewayd.usecases.webhooks import new_webhook_secret
from gatewayd.whatsapp.qr import QrSnapshot

log = structlog.get_logger()

#: How long start/reconnect of a linked session wait to answer ``connected``.
CONNECT_WAIT = 10.0


@attrs.frozen
class NewSession:
    name: str
    webhook_url: str | None = None


@attrs.frozen
class SessionChange:
    name: str | None = None
    webhook_url: str | None | owned.Unset = owned.UNSET
    webhook_events: list[str] | owned.Unset = owned.UNSET
    #: Extra request headers for the webhook (an n8n Header Auth credential, say); secrets.
    webhook_headers: dict[str, str] | owned.Unset = owned.UNSET
    #: Replace the signing secret (the new one is answered once).
    rotate_webhook_secret: bool = False


@attrs.frozen
class Saved:
    """A created or changed session, and its webhook signing secret when it was just made
    (shown this once)."""

    record: AgentRecord
    new_webhook_secret: str | None = None


@attrs.frozen
class Started:
    """What a start or reconnect came to: the state now, and the QR to scan if any."""

    state: SessionState
    qr: QrSnapshot | None


@attrs.frozen
class SendRequest:
    """``POST /api/v1/sessions/{id}/send``."""

    to: str
    type: SendKind
    content: str | None = None
    media_url: str | None = None
    quoted_message_id: str | None = None
    filename: str | None = None


def _uuid(session_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(session_id)
    except ValueError:
        return None


async def owned_session(services: Services, user_id: str, session_id: str) -> AgentRecord:
    """The user's session with that id; anything else (not a UUID, missing, someone else's)
    is the same SessionNotFound."""
    parsed = _uuid(session_id)
    record = None if parsed is None else await owned.get_session(services.db, user_id, parsed)
    if record is None:
        raise SessionNotFound("Session not found")
    return record


async def read_session(services: Services, user_id: str, session_id: str) -> AgentRecord:
    """:func:`owned_session` for a read: the row from memory while the session's agent runs
    unchanged since it was read, else from the database as ``owned_session`` reads it."""
    parsed = _uuid(session_id)
    if parsed is None:
        raise SessionNotFound("Session not found")
    rows, handle = services.records, services.agents.by_id(parsed)

    async def read() -> AgentRecord | None:
        was, epoch = (None if handle is None else seen(handle)), rows.epoch
        found = await owned.get_session(services.db, user_id, parsed)
        if found is not None:
            rows.put(found, was, epoch)
        return found

    if handle is None:
        record = await read()
    else:
        agent_id = handle.agent_id
        record = await rows.row_reads.run(agent_id, lambda: rows.look(agent_id, handle), read)
        if record is not None and (record.user_id != user_id or record.id != parsed):
            record = await read()  # someone else's: read as the missing session it is to us
    if record is None:
        raise SessionNotFound("Session not found")
    return record


async def user_records(services: Services, user_id: str) -> list[AgentRecord]:
    """The user's sessions' rows, newest first: from memory while every one of them runs
    unchanged since they were listed, else from the database."""
    rows, agents = services.records, services.agents

    async def read() -> list[AgentRecord]:
        was, epoch = {h.agent_id: seen(h) for h in agents.handles()}, rows.epoch
        records = await owned.list_sessions(services.db, user_id)
        rows.put_listing(user_id, records, was, epoch)
        return records

    return await rows.list_reads.run(user_id, lambda: rows.look_listing(user_id, agents), read)


async def owned_agent(services: Services, user_id: str, agent_id: str) -> AgentRecord:
    """The user's session with that ``agentId`` (SessionNotFound otherwise, whoever owns it)."""
    record = await owned.get_by_agent_id(services.db, user_id, agent_id)
    if record is None:
        raise SessionNotFound("Session not found", details={"agentId": agent_id})
    return record


def check_user(principal_user: str, claimed: str | None) -> None:
    """A body's ``userId`` must be the authenticated user's (the credential decides)."""
    if claimed is not None and claimed != principal_user:
        raise Forbidden("userId is not the authenticated user")


async def list_sessions(services: Services, user_id: str) -> list[SessionState]:
    return [session_state(services, r) for r in await user_records(services, user_id)]


async def check_webhook_url(services: Services, url: str) -> None:
    """A webhook URL must pass the address guard when it is saved (and again at each
    delivery, since DNS may change): malformed, or resolving to a refused address, is a 400.
    A name that does not resolve now is kept: deliveries retry, and DNS may come back."""
    try:
        await check_url(url, allow_private=services.config.webhooks.allow_private_urls)
    except BadGateway:
        log.info("gatewayd.webhook.url_unresolved", sessionUrlHost=parse_http_url(url)[1])


async def create(services: Services, user_id: str, new: NewSession) -> Saved:
    """A session that exists but is not started (no QR until ``start``)."""
    if new.webhook_url is not None:
        await check_webhook_url(services, new.webhook_url)
    session_uuid = uuid.uuid4()
    agent_id = str(session_uuid)
    record = await agents_store.create_agent(
        services.db,
        agent_id=agent_id,
        name=new.name,
        user_id=user_id,
        api_key=agent_key(),
        endpoint_url_run=seeded_endpoint(services, agent_id),
        webhook_url=new.webhook_url,
        agent_uuid=session_uuid,
        status="stopped",  # created, not started: no QR until start
    )
    services.records.forget(user_id=user_id)
    if new.webhook_url is None:
        return Saved(record)
    secret = new_webhook_secret()
    saved = await owned.update_session(services.db, user_id, record.id, webhook_secret=secret)
    return Saved(saved or record, secret)


async def update(services: Services, user_id: str, session_id: str, change: SessionChange) -> Saved:
    record = await owned_session(services, user_id, session_id)
    if isinstance(change.webhook_url, str):
        await check_webhook_url(services, change.webhook_url)
    url = record.webhook_url if isinstance(change.webhook_url, owned.Unset) else change.webhook_url
    secret: str | None = None
    if url is not None and (change.rotate_webhook_secret or not record.webhook_secret):
        secret = new_webhook_secret()
    updated = await owned.update_session(
        services.db,
        user_id,
        record.id,
        name=change.name if change.name is not None else owned.UNSET,
        webhook_url=change.webhook_url,
        webhook_secret=secret if secret is not None else owned.UNSET,
        webhook_events=change.webhook_events,
        webhook_headers=change.webhook_headers,
    )
    if updated is None:
        raise SessionNotFound("Session not found")
    services.records.forget(agent_id=updated.agent_id, user_id=user_id)
    # The running agent takes the new settings up for its next event.
    await refresh_webhook(services.db, services.agents.get(updated.agent_id))
    return Saved(updated, secret)


async def _connected_within(services: Services, record: AgentRecord, wait: float) -> SessionState:
    handle = services.agents.get(record.agent_id)
    if handle is not None:
        with trio.move_on_after(wait):
            await handle.online.wait()
    fresh = await agents_store.get_agent(services.db, record.agent_id)
    return session_state(services, fresh or record)


async def start(services: Services, record: AgentRecord) -> Started:
    """Connect with the stored device, or (not linked) wait for the first QR."""
    running = services.agents.get(record.agent_id)
    if running is not None and running.connected:
        return Started(session_state(services, record), None)
    if record.device_jid is not None and not (running is not None and running.terminal):
        await services.agents.start(record.agent_id)
        return Started(await _connected_within(services, record, CONNECT_WAIT), None)
    handle = (
        await services.agents.new_pairing(record.agent_id)
        if running is not None and running.terminal
        else await services.agents.start(record.agent_id)
    )
    snapshot = await first_qr(handle, services.config.sessions.create_qr_wait)
    if snapshot is None:
        raise QrTimeout(f"No QR within {services.config.sessions.create_qr_wait:g} s")
    return Started(session_state(services, record), snapshot)


async def reconnect(services: Services, record: AgentRecord) -> Started:
    """Drop the connection and connect again with the same device; a session without a
    device answers as ``start`` does, with a QR."""
    if record.device_jid is None:
        return await start(services, record)
    await services.agents.restart(record.agent_id)
    return Started(await _connected_within(services, record, CONNECT_WAIT), None)


async def create_for_agent(
    services: Services, user_id: str, agent_id: str, agent_name: str
) -> CreatedSession:
    """The agent family's create: the legacy create-or-rehydrate, for this user."""
    return await create_session(
        services,
        CreateSession(user_id=user_id, agent_id=agent_id, agent_name=agent_name, issue_key=True),
    )


async def send(
    services: Services,
    record: AgentRecord,
    request: SendRequest,
    trace_id: str,
    idempotency_key: str | None = None,
) -> messaging.SentMessage:
    if request.type == "text":
        message = messaging.TextMessage(
            to=request.to, text=request.content or "", quote_id=request.quoted_message_id
        )
        return await messaging.send_text(services, record, message, trace_id, idempotency_key)
    media = messaging.MediaMessage(
        to=request.to,
        kind=request.type,
        url=request.media_url,
        caption=None if request.type == "audio" else request.content,
        filename=request.filename,
        quote_id=request.quoted_message_id,
    )
    return await messaging.send_media(services, record, media, trace_id, idempotency_key)
