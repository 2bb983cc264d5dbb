"""Sessions as one user owns them: where tenancy of sessions is enforced.

Every query here takes the authenticated user's id and matches it in SQL, so it never returns,
changes or counts another user's row: another user's session is answered exactly like a
missing one (None), as docs/contract/api-v1.md §1 requires. The /api/v1 use cases look
sessions up only through this module; ``session_activity`` takes an agent's row id, which the
caller has from one of the owned lookups.

Also here: the activity counts of §8.6 and the uptime of §7.2 (``uptime_percentage``).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Final

import attrs
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from gatewayd.store import analytics as analytics_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database

__all__ = [
    "UNSET",
    "Activity",
    "Unset",
    "get_by_agent_id",
    "get_session",
    "list_sessions",
    "session_activity",
    "update_session",
    "uptime_percentage",
]

# Every column AgentRecord has, so the rows here are the records store/agents.py returns.
_COLUMNS = ", ".join(field.name for field in attrs.fields(AgentRecord))


class Unset(enum.Enum):
    """The type of ``UNSET``: a field the caller leaves as it is (None may be a value)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


def _one(conn: Connection, where: str, params: tuple[Any, ...]) -> AgentRecord | None:
    with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM agents WHERE {where}", params)
        return cur.fetchone()


async def list_sessions(db: Database, user_id: str) -> list[AgentRecord]:
    """The user's sessions, newest first."""

    def work(conn: Connection) -> list[AgentRecord]:
        with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE user_id = %s"
                " ORDER BY created_at DESC, id DESC",
                (user_id,),
            )
            return cur.fetchall()

    return await db.run(work)


async def get_session(db: Database, user_id: str, session_id: uuid.UUID) -> AgentRecord | None:
    """The user's session with this id; None when missing or another user's."""
    return await db.run(_one, "id = %s AND user_id = %s", (session_id, user_id))


async def get_by_agent_id(db: Database, user_id: str, agent_id: str) -> AgentRecord | None:
    """The user's session with this ``agentId``; None when missing or another user's."""
    return await db.run(_one, "agent_id = %s AND user_id = %s", (agent_id, user_id))


async def update_session(
    db: Database,
    user_id: str,
    session_id: uuid.UUID,
    *,
    name: str | Unset = UNSET,
    webhook_url: str | None | Unset = UNSET,
    webhook_secret: str | None | Unset = UNSET,
    webhook_events: list[str] | Unset = UNSET,
    webhook_headers: dict[str, str] | Unset = UNSET,
) -> AgentRecord | None:
    """Rename the user's session and/or change its webhook (``None`` removes it); fields
    left ``UNSET`` keep their value. The updated record, or None when the session is missing
    or another user's (nothing is changed then)."""
    sets: list[str] = []
    params: list[Any] = []
    if not isinstance(name, Unset):
        sets.append("name = %s")
        params.append(name)
    if not isinstance(webhook_url, Unset):
        sets.append("webhook_url = %s")
        params.append(webhook_url)
    if not isinstance(webhook_secret, Unset):
        sets.append("webhook_secret = %s")
        params.append(webhook_secret)
    if not isinstance(webhook_events, Unset):
        sets.append("webhook_events = %s")
        params.append(webhook_events)
    if not isinstance(webhook_headers, Unset):
        sets.append("webhook_headers = %s")
        params.append(Jsonb(webhook_headers))
    if not sets:
        return await get_session(db, user_id, session_id)
    # Column names are fixed strings chosen above; only values are parameters.
    query = (
        f"UPDATE agents SET {', '.join(sets)}, updated_at = now()"
        f" WHERE id = %s AND user_id = %s RETURNING {_COLUMNS}"
    )

    def work(conn: Connection) -> AgentRecord | None:
        with conn.cursor(row_factory=class_row(AgentRecord)) as cur:
            cur.execute(query.encode(), (*params, session_id, user_id))
            return cur.fetchone()

    return await db.run(work)


@attrs.frozen
class Activity:
    """What a session has done, all time (docs/contract/api-v1.md §8.6)."""

    incoming: int
    outgoing: int
    executions: int
    #: The latest message (either direction) or AI execution; None when there is none.
    last_activity: datetime | None


async def session_activity(db: Database, agent_uuid: uuid.UUID) -> Activity:
    """Messages received and sent (every stored row of each direction, whatever its outcome,
    also those retention has deleted since), AI executions recorded, and the time of the
    latest of them, for one agent: read from the hourly rollups (sql/009_analytics), so the
    cost grows with the hours the agent was active, not with its messages.

    ``agent_uuid`` is the row id of a record from an owned lookup above."""
    totals = await analytics_store.totals(db, agent_uuid)
    return Activity(totals.inbound, totals.outbound, totals.executions, totals.last_activity)


def uptime_percentage(record: AgentRecord, now: datetime) -> float:
    """The share of the session's life (since ``created_at``) spent connected, in percent
    with one decimal (docs/contract/api-v1.md §7.2).

    Ended stretches come from ``connected_seconds``; while the record says ``connected``, the
    running stretch since ``last_connected_at`` is added. A stretch left open by a daemon that
    was killed is not counted once the next run writes the agent's first status
    (gatewayd/store/agents.py ``set_status``): the downtime never counts as connected, and
    the part of that stretch before the crash is lost with it (an undercount). Until then —
    the moments between the restart and the restored agent's first status — the stale row's
    stretch runs on, the downtime included.
    """
    life = (now - record.created_at).total_seconds()
    if life <= 0:
        return 0.0
    connected = record.connected_seconds
    if record.status == "connected" and record.last_connected_at is not None:
        connected += max(0.0, (now - record.last_connected_at).total_seconds())
    return round(min(100.0, max(0.0, 100.0 * connected / life)), 1)
