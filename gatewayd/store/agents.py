"""The agents table: one row per WhatsApp account, its status and its device.

An agent is identified by ``id`` (the /api/v1 session id) or ``agent_id`` (the agents-API path
id), both unique. ``name`` is a label: one user's agents may share it (sql/006_agent_names).
"""

from __future__ import annotations

import uuid
import weakref
from datetime import datetime
from typing import Any

import attrs
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from gatewayd.store.db import Connection, Database

STATUSES = (
    "awaiting_qr",
    "connected",
    "disconnected",
    "auth_failed",
    "stopped",
    "logged_out",
    "replaced",
    "banned",
    "outdated",
)

_COLUMNS = (
    "id, agent_id, name, user_id, api_key, endpoint_url_run, webhook_url, status, status_reason,"
    " last_connected_at, last_disconnected_at, phone_number, lid, device_jid, device_info,"
    " created_at, updated_at, connected_seconds, webhook_secret, webhook_events, webhook_headers"
)


@attrs.frozen(kw_only=True)
class AgentRecord:
    id: uuid.UUID
    agent_id: str
    name: str
    user_id: str
    api_key: str
    endpoint_url_run: str | None
    webhook_url: str | None
    status: str
    status_reason: str | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    phone_number: str | None
    lid: str | None
    device_jid: str | None
    device_info: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    #: Seconds spent connected in stretches that have ended (see ``set_status``).
    connected_seconds: float = 0.0
    #: The webhook's signing key, ``whsec_<base64>`` (gatewayd/usecases/webhooks.py); never logged.
    webhook_secret: str | None = attrs.field(default=None, repr=False)
    #: The events the webhook is sent (sql/008_webhooks).
    webhook_events: list[str] = attrs.field(factory=lambda: ["message.received"])
    #: Extra request headers of the webhook (may carry credentials: never logged).
    webhook_headers: dict[str, str] = attrs.field(factory=dict, repr=False)


def _get(conn: Connection, agent_id: str) -> AgentRecord | None:
    with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM agents WHERE agent_id = %s", (agent_id,))
        return cur.fetchone()


async def get_agent(db: Database, agent_id: str) -> AgentRecord | None:
    return await db.run(_get, agent_id)


async def create_agent(
    db: Database,
    *,
    agent_id: str,
    name: str,
    user_id: str,
    api_key: str,
    endpoint_url_run: str | None = None,
    webhook_url: str | None = None,
    agent_uuid: uuid.UUID | None = None,
    status: str = "awaiting_qr",
) -> AgentRecord:
    """Insert an agent; ``agent_uuid`` chooses its id (else the database draws one)."""
    assert status in STATUSES, status

    def work(conn: Connection) -> AgentRecord:
        with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
            cur.execute(
                "INSERT INTO agents"
                " (id, agent_id, name, user_id, api_key, endpoint_url_run, webhook_url, status)"
                " VALUES (COALESCE(%s, gen_random_uuid()), %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    agent_uuid,
                    agent_id,
                    name,
                    user_id,
                    api_key,
                    endpoint_url_run,
                    webhook_url,
                    status,
                ),
            )
            row = cur.fetchone()
            assert row is not None
            return row

    return await db.run(work)


async def list_restorable(db: Database) -> list[AgentRecord]:
    """Agents with a paired device that the operator has not stopped, and whose session was
    not taken over by another client (restoring that one would take it back, in turns)."""

    def work(conn: Connection) -> list[AgentRecord]:
        with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE device_jid IS NOT NULL"
                " AND status NOT IN ('stopped', 'replaced')"
                " ORDER BY created_at"
            )
            return cur.fetchall()

    return await db.run(work)


# Ends the connected stretch the row holds, if any (SET expressions see the old row): it is
# added to connected_seconds only when this run of the daemon (``_run_of``) began it. A row
# left 'connected' by a daemon that was killed carries another run's token, and its stretch,
# whose end nobody recorded, is dropped rather than stretched over the time the daemon was
# down. The same applies on connected -> connected (a restart, or a restore after a crash).
_END_STRETCH = (
    "connected_seconds = connected_seconds + CASE WHEN status = 'connected'"
    " AND connected_run = %(run)s AND last_connected_at IS NOT NULL"
    " THEN greatest(0, extract(epoch FROM now() - last_connected_at))::double precision"
    " ELSE 0 END"
)

_runs: weakref.WeakKeyDictionary[Database, uuid.UUID] = weakref.WeakKeyDictionary()


def _run_of(db: Database) -> uuid.UUID:
    """A token for this run of the daemon: one per open database (the daemon opens one)."""
    run = _runs.get(db)
    if run is None:
        run = _runs[db] = uuid.uuid4()
    return run


async def set_status(db: Database, agent_uuid: uuid.UUID, status: str, reason: str | None) -> None:
    """Persist a status transition with the timestamps that go with it; leaving (or
    re-entering) ``connected`` adds the ended stretch to ``connected_seconds``."""
    assert status in STATUSES, status
    params = {"s": status, "r": reason, "id": agent_uuid, "run": _run_of(db)}

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE agents SET status = %(s)s, status_reason = %(r)s, updated_at = now(),"
            f" {_END_STRETCH},"
            " last_connected_at = CASE WHEN %(s)s = 'connected' THEN now() ELSE last_connected_at END,"
            " connected_run = CASE WHEN %(s)s = 'connected' THEN %(run)s ELSE NULL END,"
            " last_disconnected_at = CASE WHEN %(s)s <> 'connected' AND status = 'connected'"
            "   THEN now() ELSE last_disconnected_at END"
            " WHERE id = %(id)s",
            params,
        )

    await db.run(work)


async def mark_all_disconnected(db: Database, agent_uuids: list[uuid.UUID], reason: str) -> None:
    """One statement for a whole shutdown: connected agents become disconnected."""

    params = {"r": reason, "ids": agent_uuids, "run": _run_of(db)}

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE agents SET status = 'disconnected', status_reason = %(r)s, updated_at = now(),"
            f" {_END_STRETCH}, connected_run = NULL,"
            " last_disconnected_at = now() WHERE id = ANY(%(ids)s) AND status = 'connected'",
            params,
        )

    await db.run(work)


async def set_lid(db: Database, agent_uuid: uuid.UUID, lid: str) -> None:
    """Remember the account's LID (looked up after pairing did not capture it)."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE agents SET lid = %s, updated_at = now() WHERE id = %s", (lid, agent_uuid)
        )

    await db.run(work)


async def set_device(
    db: Database,
    agent_uuid: uuid.UUID,
    *,
    device_jid: str | None,
    phone_number: str | None = None,
    lid: str | None = None,
    device_info: dict[str, Any] | None = None,
) -> None:
    """Record the paired device (or clear it with ``device_jid=None``)."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE agents SET device_jid = %s, phone_number = %s, lid = %s, device_info = %s,"
            " updated_at = now() WHERE id = %s",
            (
                device_jid,
                phone_number,
                lid,
                Jsonb(device_info) if device_info else None,
                agent_uuid,
            ),
        )

    await db.run(work)


async def reset_identity(
    db: Database, agent_uuid: uuid.UUID, *, name: str, api_key: str, endpoint_url_run: str | None
) -> None:
    """A session created again: new name and key, back to awaiting_qr (history kept)."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE agents SET name = %s, api_key = %s, endpoint_url_run = %s, status = 'awaiting_qr',"
            " status_reason = NULL, updated_at = now() WHERE id = %s",
            (name, api_key, endpoint_url_run, agent_uuid),
        )

    await db.run(work)


async def delete_agent(db: Database, agent_uuid: uuid.UUID) -> None:
    def work(conn: Connection) -> None:
        conn.execute("DELETE FROM agents WHERE id = %s", (agent_uuid,))

    await db.run(work)
