"""Outbound rows: every send is written before it goes out.

A row's ``status`` (see sql/003_durability.up.sql) moves ``queued``/``pending`` →
``sending`` → ``sent``, or ends ``failed``, ``unknown`` (the process or the tree died while
WhatsApp had it: never resent, visible instead) or ``expired`` (a reply that waited longer
than ``agents.reply_max_age`` for a connection). A reply row points at its inbound message
(``reply_to``); when the reply reaches a final state, the inbound message is handled in the
same transaction.

The three writes every API send makes (``insert_pending``, ``mark_sending``, ``mark_sent``)
are group-committed: what many agents' sends ask for at the same moment is written in one
statement, a transaction of its own (``_Rounds``), each caller still waiting for its own
row's commit before it goes on. Nothing is written later than before, only together: a
thousand agents sending at their configured rate (1,667 sends a second) need a few hundred
commits a second instead of 5,000.
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs
import cattrs
import outcome
import trio
from psycopg.types.json import Jsonb

from gatewayd.errors import StoreError, StoreUnavailable
from gatewayd.jid import is_group
from gatewayd.nursery.commands import Outgoing
from gatewayd.store.db import Connection, Database
from gatewayd.store.executions import INSERT_EXECUTION, Execution, execution_params

__all__ = [
    "OutboundRow",
    "finish",
    "insert_pending",
    "mark_sending",
    "mark_sent",
    "queue_reply",
    "queued",
    "reconcile",
    "queue",
    "requeue",
    "find_by_key",
    "release_key",
    "KeyedSend",
    "RoundStatistics",
    "round_statistics",
]

_converter = cattrs.Converter()
# Media bytes never go into the row: only replies (text) are resumed after a restart.
_converter.register_unstructure_hook(bytes, lambda _: None)

Final = Literal["failed", "unknown", "expired"]

T = TypeVar("T")
R = TypeVar("R")


@attrs.define
class RoundStatistics:
    """What the rounds of one database's send changes did so far."""

    rounds: int = 0
    #: Changes the rounds held (a send makes three: pending, sending, sent).
    changes: int = 0
    #: Seconds spent writing them, and the longest round.
    seconds: float = 0.0
    longest: float = 0.0

    def add(self, changes: int, seconds: float) -> None:
        self.rounds += 1
        self.changes += changes
        self.seconds += seconds
        self.longest = max(self.longest, seconds)


@attrs.define(eq=False)
class _Entry(Generic[T, R]):
    item: T
    #: Taken into a round: it is being written, or has been.
    taken: bool = False
    result: outcome.Outcome[R] | None = None
    #: Set when the result is in, or (not taken yet) when its caller is to write the next round.
    wake: trio.Event = attrs.Factory(trio.Event)


class _Rounds(Generic[T, R]):
    """Group commit with no task of its own: many callers' items, one transaction a round.

    The caller that finds no round being written writes one, with its item; items that
    arrive meanwhile wait, and when the round is over the first of them writes the next
    round with every item waiting by then. Idle, a round holds one item and costs what a
    lone transaction did; under load the cost of a transaction (the hand-off to a worker
    thread, the round trips, the WAL flush) is shared by every item that arrived while the
    previous one was written. Only the callers whose items are done, and the one that writes
    next, are woken: a backlog costs nothing per round.

    ``write(items)`` returns one result per item, in order. A round that fails with anything
    but an outage is written again one item per transaction, so a bad row (an agent deleted
    meanwhile) fails its own caller only. Cancelled before its item is taken into a round,
    a caller withdraws it (never written); once taken, the caller waits for the commit and
    gets its result, the cancellation coming at its next checkpoint: what ``Database.run``
    does too, which never abandons a transaction halfway.
    """

    def __init__(
        self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_items: int = 500
    ) -> None:
        self._write = write
        self._max_items = max_items
        self._waiting: deque[_Entry[T, R]] = deque()
        #: A round is being written, or its writer has been woken; False: nothing waits.
        self._writing = False
        self.statistics = RoundStatistics()

    async def submit(self, item: T) -> R:
        entry: _Entry[T, R] = _Entry(item)
        self._waiting.append(entry)
        if not self._writing:
            self._writing = True
        else:
            try:
                await entry.wake.wait()
            except trio.Cancelled:
                if not entry.taken:
                    self._waiting.remove(entry)
                    if entry.wake.is_set():  # it was to write the next round: pass it on
                        self._next_round()
                    raise
                # Ours is being written: its outcome is the caller's to know (see above).
        if not entry.taken:
            await self._write_round()
        if entry.result is None:
            with trio.CancelScope(shield=True):
                await entry.wake.wait()
        assert entry.result is not None
        return entry.result.unwrap()

    async def _write_round(self) -> None:
        count = min(len(self._waiting), self._max_items)
        batch = [self._waiting.popleft() for _ in range(count)]
        for entry in batch:
            entry.taken = True
        try:
            with trio.CancelScope(shield=True):
                began = trio.current_time()
                results = await self._results([entry.item for entry in batch])
                self.statistics.add(count, trio.current_time() - began)
            for entry, result in zip(batch, results, strict=True):
                entry.result = result
        finally:
            for entry in batch:
                if entry.result is None:  # only if the write itself crashed
                    entry.result = outcome.Error(StoreError("the write was interrupted"))
                entry.wake.set()
            self._next_round()

    def _next_round(self) -> None:
        if self._waiting:
            self._waiting[0].wake.set()
        else:
            self._writing = False

    async def _results(self, items: Sequence[T]) -> list[outcome.Outcome[R]]:
        try:
            return [outcome.Value(result) for result in await self._write(items)]
        except StoreUnavailable as exc:
            return [outcome.Error(exc)] * len(items)
        except StoreError as exc:
            if len(items) == 1:
                return [outcome.Error(exc)]
        except Exception as exc:
            return [outcome.Error(exc)] * len(items)
        # One by one: the items that can be written are, each caller gets its own error.
        return [await outcome.acapture(self._one, item) for item in items]

    async def _one(self, item: T) -> R:
        (result,) = await self._write([item])
        return result


@attrs.frozen
class _Pending:
    agent_uuid: uuid.UUID
    message: Outgoing
    trace_id: str | None
    key: str | None


@attrs.frozen
class _Sending:
    row_id: int


@attrs.frozen
class _Sent:
    row_id: int
    wa_message_id: str
    timestamp_ms: int
    result: Mapping[str, Any]


_Change = _Pending | _Sending | _Sent


# A round is one statement (data-modifying CTEs: atomic on its own, so it runs in autocommit,
# from the Trio thread: Database.execute): one round trip however many sends it holds, where a
# transaction of a statement per kind took seven. Its rows come as
# JSON documents (encoded once, in C). Ids of new rows are drawn first, in the order of the
# round, so each caller learns its own, or NULL when its key was used before; the statement
# trigger of sql/009_analytics.up.sql runs once. The parts touch different rows: a row's next
# change is asked for only once its previous one is committed. A round holds only the parts
# it has changes for: an empty part would still be planned and run (the insert's statement
# trigger with it), which made a round of one send's result twice as costly to PostgreSQL.
_PENDING = (
    "pending AS MATERIALIZED ("
    " SELECT nextval('messages_id_seq') AS id, u.* FROM jsonb_to_recordset(%(pending)s)"
    " AS u(n integer, agent_id uuid, type text, chat_jid text, text text, quoted_id text,"
    " media jsonb, trace_id text, is_group boolean, payload jsonb, idempotency_key text)),"
    " inserted AS (INSERT INTO messages (id, agent_id, direction, type, chat_jid, text,"
    " quoted_id, media, status, trace_id, is_group, payload, idempotency_key)"
    " SELECT id, agent_id, 'outbound', type, chat_jid, text, quoted_id, media, 'pending',"
    " trace_id, is_group, payload, idempotency_key FROM pending ORDER BY n"
    " ON CONFLICT (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    " RETURNING id)"
)
_SENDING = (
    "sending AS (UPDATE messages SET status = 'sending' WHERE id = ANY(%(sending)s::bigint[])"
    " AND status IN ('queued', 'pending') RETURNING id)"
)
# A reply sent: its inbound message is handled, in the same statement. (The ids as an
# array, here and above: the primary key is used whatever the planner guesses of a set.)
_SENT = (
    "sent AS (UPDATE messages AS m SET status = 'sent', wa_message_id = v.wa_message_id,"
    " sent_at = to_timestamp(v.ms::double precision / 1000), result = v.result"
    " FROM jsonb_to_recordset(%(sent)s)"
    " AS v(id bigint, wa_message_id text, ms bigint, result jsonb)"
    " WHERE m.id = ANY(%(sent_ids)s::bigint[]) AND m.id = v.id RETURNING m.reply_to),"
    " settled AS (UPDATE messages SET handled_at = now(), outcome = 'replied'"
    " WHERE id = ANY(ARRAY(SELECT reply_to FROM sent WHERE reply_to IS NOT NULL))"
    " AND handled_at IS NULL)"
)


@functools.cache
def _round_statement(pending: bool, sending: bool, sent: bool) -> str:
    """The statement of a round with these kinds of change; its rows are (n, id) for each
    pending row (id NULL: its key was used before) and (-1, id) for each row marked sending."""
    parts, rows = [], []
    if pending:
        parts.append(_PENDING)
        rows.append(
            "SELECT pending.n, inserted.id FROM pending LEFT JOIN inserted ON inserted.id = pending.id"
        )
    if sending:
        parts.append(_SENDING)
        rows.append("SELECT -1, id FROM sending")
    if sent:
        parts.append(_SENT)
    # Data-modifying CTEs run whether read or not: a round of sent rows only returns nothing.
    return f"WITH {', '.join(parts)} {' UNION ALL '.join(rows) or 'SELECT -1, NULL WHERE false'}"


async def _write_changes(db: Database, changes: Sequence[_Change]) -> list[object]:
    """One round's changes, in one statement; each change's result, in order."""
    pending: list[dict[str, Any]] = []
    where: list[int] = []  # the change of each pending row
    sending: list[int] = []
    sent: list[dict[str, Any]] = []
    for n, change in enumerate(changes):
        if isinstance(change, _Pending):
            where.append(n)
            pending.append(_pending_row(len(pending), change))
        elif isinstance(change, _Sending):
            sending.append(change.row_id)
        else:
            sent.append(
                {"id": change.row_id, "wa_message_id": change.wa_message_id,
                 "ms": change.timestamp_ms, "result": dict(change.result)}
            )  # fmt: skip
    params: dict[str, Any] = {}
    if pending:
        params["pending"] = Jsonb(pending)
    if sending:
        params["sending"] = sending
    if sent:
        params["sent"] = Jsonb(sent)
        params["sent_ids"] = [row["id"] for row in sent]
    query = _round_statement(bool(pending), bool(sending), bool(sent))
    # Never prepared: a plan made without the round's arrays and documents (PostgreSQL's
    # generic plan, which it may pick for a prepared statement after five executions) made
    # rounds several times slower (docs/psycopg.md).
    rows = (await db.execute(query, params, prepare=False)).rows
    results: list[object] = [None] * len(changes)
    marked: set[int] = set()
    for n, row_id in rows:
        if n >= 0:
            results[where[n]] = None if row_id is None else int(row_id)
        else:
            marked.add(int(row_id))
    for n, change in enumerate(changes):
        if isinstance(change, _Sending):
            results[n] = change.row_id in marked
    return results


def _pending_row(n: int, item: _Pending) -> dict[str, Any]:
    message = item.message
    row = {
        "n": n, "agent_id": str(item.agent_uuid), "type": message.kind, "chat_jid": message.to,
        "text": message.text, "trace_id": item.trace_id, "is_group": is_group(message.to),
        "payload": _unstructured(message), "idempotency_key": item.key,
    }  # fmt: skip
    if message.quote is not None:
        row["quoted_id"] = message.quote.message_id
    if message.data is not None:  # absent, not JSON null: the column stays NULL
        row["media"] = _media_of(message)
    return row


_by_database: weakref.WeakKeyDictionary[Database, _Rounds[_Change, object]] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[Database, _Rounds[_Change, object]] | None = None  # the daemon has one database


def _rounds(db: Database) -> _Rounds[_Change, object]:
    global _last
    if _last is not None and _last[0] is db:
        return _last[1]
    rounds = _by_database.get(db)
    if rounds is None:
        rounds = _by_database[db] = _Rounds(lambda items: _write_changes(db, items))
    _last = (db, rounds)
    return rounds


async def _submit(db: Database, change: _Change) -> object:
    """Commit ``change`` in the database's next round of send changes."""
    return await _rounds(db).submit(change)


def round_statistics(db: Database) -> RoundStatistics:
    """What the rounds of send changes written on ``db`` did so far (a copy)."""
    return attrs.evolve(_rounds(db).statistics)


@attrs.frozen
class OutboundRow:
    """A queued send as the outbox reads it back."""

    row_id: int
    message: Outgoing
    created_at: datetime
    reply_to: int | None
    trace_id: str | None
    #: The WhatsApp id of the message this replies to.
    reply_to_wa_id: str | None = None


@attrs.frozen
class KeyedSend:
    """What a retried Idempotency-Key finds: the first send's row."""

    row_id: int
    status: str
    wa_message_id: str | None
    timestamp_ms: int | None
    result: Mapping[str, Any] | None


def _unstructured(message: Outgoing) -> dict[str, Any]:
    """The ``payload`` column: the message as the outbox reads it back, without the bytes."""
    raw: dict[str, Any] = _converter.unstructure(message)
    raw.pop("data", None)
    return raw


def _payload(message: Outgoing) -> Jsonb:
    return Jsonb(_unstructured(message))


def _media_of(message: Outgoing) -> dict[str, Any]:
    """The ``media`` column of a media send: what was sent, never the bytes."""
    assert message.data is not None
    return {"mimetype": message.mimetype, "filename": message.filename, "size": len(message.data)}


def _media(message: Outgoing) -> Jsonb | None:
    return None if message.data is None else Jsonb(_media_of(message))


def _insert(
    conn: Connection,
    agent_uuid: uuid.UUID,
    message: Outgoing,
    *,
    status: str,
    trace_id: str | None,
    reply_to: int | None = None,
    key: str | None = None,
) -> int | None:
    row = conn.execute(
        "INSERT INTO messages (agent_id, direction, type, chat_jid, text, quoted_id, media, status,"
        " trace_id, is_group, payload, reply_to, idempotency_key)"
        " VALUES (%s, 'outbound', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        " RETURNING id",
        (
            agent_uuid, message.kind, message.to, message.text,
            message.quote.message_id if message.quote else None,
            _media(message), status, trace_id, is_group(message.to),
            _payload(message), reply_to, key,
        ),
    ).fetchone()  # fmt: skip
    return None if row is None else int(row[0])


async def insert_pending(
    db: Database, agent_uuid: uuid.UUID, message: Outgoing, *, trace_id: str | None, key: str | None
) -> int | None:
    """Record an API send before it is queued; None when ``key`` was used before.

    Committed before it returns, together with the other sends recorded at the same moment.
    """
    row_id = await _submit(db, _Pending(agent_uuid, message, trace_id, key))
    assert row_id is None or isinstance(row_id, int)
    return row_id


async def find_by_key(db: Database, agent_uuid: uuid.UUID, key: str) -> KeyedSend | None:
    def work(conn: Connection) -> KeyedSend | None:
        row = conn.execute(
            "SELECT id, status, wa_message_id, sent_at, result FROM messages"
            " WHERE agent_id = %s AND idempotency_key = %s",
            (agent_uuid, key),
        ).fetchone()
        if row is None:
            return None
        sent_ms = int(row[3].timestamp() * 1000) if row[3] is not None else None
        return KeyedSend(int(row[0]), row[1], row[2], sent_ms, row[4])

    return await db.run(work)


async def release_key(db: Database, row_id: int, reason: str, *, sending: bool = False) -> None:
    """An API send refused before WhatsApp had it: failed, and its key free again.

    ``sending``: the row was already marked ``sending`` but the client refused before
    sending (not connected), so it may be released too."""
    states = ("pending", "sending") if sending else ("pending",)

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'failed', error = %s, idempotency_key = NULL"
            " WHERE id = %s AND status = ANY(%s)",
            (reason, row_id, list(states)),
        )

    await db.run(work)


# One statement in autocommit (atomic on its own): a single round trip where a transaction
# took five (BEGIN, three statements, COMMIT). The execution is recorded whatever becomes of
# the reply; the reply is inserted only if its message was still waiting for one.
_QUEUE_REPLY = (
    "WITH taken AS (UPDATE messages SET status = 'answered' WHERE id = %(inbound)s"
    " AND status = 'received' AND handled_at IS NULL RETURNING now() AS at),"
    " reply AS (INSERT INTO messages (agent_id, direction, type, chat_jid, text, quoted_id, media,"
    " status, trace_id, is_group, payload, reply_to) SELECT %(agent)s, 'outbound', %(type)s,"
    " %(chat)s, %(text)s, %(quoted)s, %(media)s, %(status)s, %(trace)s, %(group)s, %(payload)s,"
    " %(inbound)s FROM taken RETURNING id){execution}"
    " SELECT reply.id, taken.at FROM taken CROSS JOIN reply"
)
_QUEUE_REPLY_ONLY = _QUEUE_REPLY.format(execution="")
_QUEUE_REPLY_RECORDED = _QUEUE_REPLY.format(execution=f", execution AS ({INSERT_EXECUTION})")


async def queue_reply(
    db: Database,
    agent_uuid: uuid.UUID,
    inbound_row: int,
    message: Outgoing,
    *,
    trace_id: str | None,
    reply_to_wa_id: str | None = None,
    execution: Execution | None = None,
    sending: bool = False,
) -> OutboundRow | None:
    """Durably queue the AI's reply to ``inbound_row``, which becomes ``answered``; the row
    as the outbox would read it back (``reply_to_wa_id``: the WhatsApp id of the message it
    answers). None (and nothing queued) when that message is no longer waiting for an answer
    (handled, quarantined, or answered already by someone else). ``execution``, the AI call
    that produced the reply, is recorded in the same transaction either way.

    ``sending``: the row is written ``sending`` instead of ``queued``, for an outbox about to
    send it at once (one commit less); the caller must send it or ``requeue`` it."""
    stored = attrs.evolve(message, data=None)  # as the outbox reads it back: no bytes
    params: dict[str, Any] = {
        "inbound": inbound_row, "agent": agent_uuid, "type": message.kind, "chat": message.to,
        "text": message.text, "quoted": message.quote.message_id if message.quote else None,
        "media": _media(message), "status": "sending" if sending else "queued",
        "trace": trace_id, "group": is_group(message.to), "payload": _payload(message),
    }  # fmt: skip
    query = _QUEUE_REPLY_ONLY
    if execution is not None:
        params.update(execution_params(execution))
        query = _QUEUE_REPLY_RECORDED

    rows = (await db.execute(query, params)).rows
    if not rows:
        return None
    # now() is the transaction's start, as the row's created_at default.
    [(row_id, created_at)] = rows
    return OutboundRow(int(row_id), stored, created_at, inbound_row, trace_id, reply_to_wa_id)


async def queue(
    db: Database, agent_uuid: uuid.UUID, message: Outgoing, *, trace_id: str | None
) -> int:
    """Durably queue a send nobody waits for (a developer report)."""

    def work(conn: Connection) -> int:
        row_id = _insert(conn, agent_uuid, message, status="queued", trace_id=trace_id)
        assert row_id is not None
        return row_id

    return await db.run(work)


async def queued(db: Database, agent_uuid: uuid.UUID, limit: int) -> list[OutboundRow]:
    """The agent's queued sends, oldest first."""

    def work(conn: Connection) -> list[OutboundRow]:
        rows = conn.execute(
            "SELECT o.id, o.payload, o.created_at, o.reply_to, o.trace_id, i.wa_message_id"
            " FROM messages o LEFT JOIN messages i ON i.id = o.reply_to"
            " WHERE o.agent_id = %s AND o.direction = 'outbound' AND o.status = 'queued'"
            " ORDER BY o.id LIMIT %s",
            (agent_uuid, limit),
        ).fetchall()
        return [
            OutboundRow(int(r[0]), _converter.structure(r[1], Outgoing), r[2], r[3], r[4], r[5])
            for r in rows
        ]

    return await db.run(work)


async def mark_sending(db: Database, row_id: int) -> bool:
    """The row is about to be handed to WhatsApp; False when it is no longer open.

    Committed before it returns (with the other sends about to go out at the same moment).
    """
    marked = await _submit(db, _Sending(row_id))
    assert isinstance(marked, bool)
    return marked


def _settle_inbound(conn: Connection, row_id: int, outcome: str) -> None:
    conn.execute(
        "UPDATE messages SET handled_at = now(), outcome = %s WHERE id ="
        " (SELECT reply_to FROM messages WHERE id = %s) AND handled_at IS NULL",
        (outcome, row_id),
    )


async def mark_sent(
    db: Database, row_id: int, *, wa_message_id: str, timestamp_ms: int, result: Mapping[str, Any]
) -> None:
    """WhatsApp took the message (at ``timestamp_ms``); a reply's inbound message is handled
    (``replied``) in the same transaction. Committed before it returns, with the other sends
    that went out at the same moment."""
    await _submit(db, _Sent(row_id, wa_message_id, timestamp_ms, result))


async def finish(
    db: Database, row_id: int, status: Final, error: str, result: Mapping[str, Any] | None = None
) -> None:
    """End a send without a WhatsApp id; its inbound message becomes ``reply_<status>``."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = %s, error = %s, result = %s WHERE id = %s",
            (status, error[:1000], Jsonb(dict(result)) if result else None, row_id),
        )
        _settle_inbound(conn, row_id, f"reply_{status}")

    await db.run(work)


async def requeue(db: Database, *row_ids: int, reply_to: int | None = None) -> None:
    """Rows WhatsApp never had (not connected; written ``sending`` for a send that did not
    happen) are ``queued`` again: they may go out later. ``reply_to``: also the reply to that
    inbound message, if it is ``sending`` (one whose commit's answer was lost)."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'queued' WHERE status = 'sending'"
            " AND (id = ANY(%s) OR (reply_to = %s AND direction = 'outbound'))",
            (list(row_ids), reply_to),
        )

    await db.run_autocommit(work)


async def reconcile(db: Database) -> dict[str, int]:
    """At process start: sends a dead process left behind.

    ``sending`` becomes ``unknown`` (WhatsApp may have it; never resent). ``pending`` API
    sends become ``failed`` (never handed over; their callers are gone and may retry with
    their key, which is freed). Counts by new status.
    """

    def work(conn: Connection) -> dict[str, int]:
        unknown = conn.execute(
            "UPDATE messages SET status = 'unknown', error = 'the daemon stopped while sending'"
            " WHERE direction = 'outbound' AND status = 'sending' RETURNING id"
        ).fetchall()
        for (row_id,) in unknown:
            _settle_inbound(conn, row_id, "reply_unknown")
        failed = conn.execute(
            "UPDATE messages SET status = 'failed', error = 'the daemon stopped before sending',"
            " idempotency_key = NULL WHERE direction = 'outbound' AND status = 'pending'"
            " RETURNING id"
        ).fetchall()
        return {"unknown": len(unknown), "failed": len(failed)}

    return await db.run(work)
