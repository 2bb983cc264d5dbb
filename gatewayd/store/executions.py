"""The ai_executions table: every AI call, its request, answer, time and outcome."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
from psycopg.types.json import Jsonb

from gatewayd import textsafe
from gatewayd.store.db import Connection, Database


def _storable(document: dict[str, Any]) -> dict[str, Any]:
    cleaned, escaped = textsafe.clean_tree(document)
    if escaped:
        cleaned["$escaped"] = escaped
    result: dict[str, Any] = cleaned
    return result


@attrs.frozen(kw_only=True)
class Execution:
    """One AI call as ai_executions keeps it, ready to be written (``insert_execution``)."""

    agent_uuid: uuid.UUID
    request: dict[str, Any]
    response: dict[str, Any] | None
    duration: float
    status: str
    error: str | None = None
    trace_id: str | None = None
    message_id: int | None = None


#: The insert of one execution, with its parameters named as ``execution_params`` names them
#: (also a part of gatewayd/store/outbound.py's reply statement).
INSERT_EXECUTION = (
    "INSERT INTO ai_executions (agent_id, message_id, request, response, duration_ms, status,"
    " error, trace_id) VALUES (%(x_agent)s, %(x_message)s, %(x_request)s, %(x_response)s,"
    " %(x_ms)s, %(x_status)s, %(x_error)s, %(x_trace)s)"
)


def execution_params(execution: Execution) -> dict[str, Any]:
    """The parameters of ``INSERT_EXECUTION``. Strings PostgreSQL refuses (NUL, lone
    surrogates) are stored cleaned; the originals go under ``"$escaped"`` in the same document
    (gatewayd/textsafe.py)."""
    response, error = execution.response, execution.error
    return {
        "x_agent": execution.agent_uuid,
        "x_message": execution.message_id,
        "x_request": Jsonb(_storable(execution.request)),
        "x_response": Jsonb(_storable(response)) if response is not None else None,
        "x_ms": max(0, round(execution.duration * 1000)),
        "x_status": execution.status,
        "x_error": textsafe.clean(error) if error is not None else None,
        "x_trace": execution.trace_id,
    }


def insert_execution(conn: Connection, execution: Execution) -> int:
    """Write ``execution`` in the caller's transaction; its id."""
    row = conn.execute(INSERT_EXECUTION + " RETURNING id", execution_params(execution)).fetchone()
    assert row is not None
    return int(row[0])


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
    """Record one AI call in a transaction of its own (``insert_execution``)."""
    execution = Execution(
        agent_uuid=agent_uuid, request=request, response=response, duration=duration,
        status=status, error=error, trace_id=trace_id, message_id=message_id,
    )  # fmt: skip
    return await db.run(insert_execution, execution)
