"""The ai_executions table: every AI call, its request, answer, time and outcome."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from gatewayd import textsafe
from gatewayd.store.db import Connection, Database


def _storable(document: dict[str, Any]) -> dict[str, Any]:
    cleaned, escaped = textsafe.clean_tree(document)
    if escaped:
        cleaned["$escaped"] = escaped
    result: dict[str, Any] = cleaned
    return result


async def record_execution(
    db: Database,
    agent_uuid: uuid.UUID,
    *,
    request: dict[str, Any],
    response: dict[str, Any] | None,
    duration: float,
    status: str,
    error: str | None = None,
    trace_id: str | None = None,
    message_id: int | None = None,
) -> int:
    """Record one AI call. Strings PostgreSQL refuses (NUL, lone surrogates) are stored
    cleaned; the originals go under ``"$escaped"`` in the same document (gatewayd/textsafe.py)."""
    request = _storable(request)
    response = _storable(response) if response is not None else None
    error = textsafe.clean(error) if error is not None else None

    def work(conn: Connection) -> int:
        row = conn.execute(
            "INSERT INTO ai_executions (agent_id, message_id, request, response, duration_ms, status, error,"
            " trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                agent_uuid,
                message_id,
                Jsonb(request),
                Jsonb(response) if response is not None else None,
                max(0, round(duration * 1000)),
                status,
                error,
                trace_id,
            ),
        ).fetchone()
        assert row is not None
        return int(row[0])

    return await db.run(work)
