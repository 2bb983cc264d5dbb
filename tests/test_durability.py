"""Nothing lost inside one process: the inbound writer, poison messages, durable replies,
sends recorded before they go out, Idempotency-Key. (Crash tests with real processes are in
tests/test_crash.py.)"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import attrs
import psycopg
import pytest
import structlog
import structlog.testing
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.errors import AgentStopped, GatewayError, IdempotencyConflict
from gatewayd.nursery.commands import Outgoing
from gatewayd.nursery.handle import AgentHandle
from gatewayd.nursery.inbound import InboundWriter
from gatewayd.store import agents as agents_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.messages import StoredInbound
from gatewayd.textsafe import restore
from gatewayd.whatsapp.port import InboundMessage
from tests.test_agents import CUSTOMER, World, wait_for, world  # noqa: F401

CUSTOMER_JID = f"{CUSTOMER}@s.whatsapp.net"


def inbound(text: str, id: str | None = None) -> InboundMessage:
    return InboundMessage(
        id=id or f"3A{uuid.uuid4().hex[:18].upper()}",
        chat=CUSTOMER_JID,
        sender=CUSTOMER_JID,
        timestamp_ms=1_700_000_000_000,
        text=text,
    )


async def rows(db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    def work(conn: Connection) -> list[tuple[Any, ...]]:
        return conn.execute(sql, args).fetchall()

    return await db.run(work)


@pytest.fixture
async def agent_uuid(database: Database) -> uuid.UUID:
    record = await agents_store.create_agent(
        database, agent_id="bot", name="bot", user_id="u1", api_key="k"
    )
    return record.id


# ------------------------------------------------------------------ the inbound writer


async def test_persist_returns_once_the_message_is_committed(
    database: Database, agent_uuid: uuid.UUID, nursery: trio.Nursery
) -> None:
    """When persist returns, another connection already sees the row; a redelivery is None."""
    delivered: list[StoredInbound] = []
    writer = InboundWriter(database, lambda _a, stored: delivered.append(stored))
    await nursery.start(writer.run)
    message = inbound("hello")
    row_id = await writer.persist(agent_uuid, message)
    assert row_id is not None
    seen = await rows(database, "SELECT text, status, attempts FROM messages WHERE id = %s", row_id)
    assert seen == [("hello", "received", 0)]
    assert [d.row_id for d in delivered] == [row_id]
    assert await writer.persist(agent_uuid, message) is None  # WhatsApp redelivered it
    assert len(delivered) == 1


async def test_concurrent_messages_share_transactions(
    database: Database, agent_uuid: uuid.UUID, nursery: trio.Nursery
) -> None:
    """200 callbacks waiting at once are committed in far fewer than 200 transactions."""
    writer = InboundWriter(database, lambda _a, _s: None)
    await nursery.start(writer.run)
    ids: list[int | None] = []

    async def callback(n: int) -> None:
        ids.append(await writer.persist(agent_uuid, inbound(f"m{n}")))

    async with trio.open_nursery() as callbacks:
        for n in range(200):
            callbacks.start_soon(callback, n)
    assert len(set(ids)) == 200 and None not in ids
    assert writer.committed == 200 and writer.batches < 50
    assert await rows(database, "SELECT count(*) FROM messages") == [(200,)]


async def test_a_stopping_writer_commits_what_it_was_handed(
    database: Database, agent_uuid: uuid.UUID, pg_dsn: str
) -> None:
    """Cancelled with messages queued (already acknowledged upstream), the writer commits them."""
    writer = InboundWriter(database, lambda _a, _s: None)
    ids: list[int | None] = []

    async def callback(n: int) -> None:
        ids.append(await writer.persist(agent_uuid, inbound(f"m{n}")))

    # Another session holds the table, so the writer's first commit waits while more queue up.
    blocker = await trio.to_thread.run_sync(psycopg.connect, pg_dsn)
    await trio.to_thread.run_sync(blocker.execute, "LOCK TABLE messages IN EXCLUSIVE MODE")
    async with trio.open_nursery() as outer:
        scope = trio.CancelScope()

        async def run_writer(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await writer.run(task_status=task_status)

        await outer.start(run_writer)
        with trio.fail_after(30):  # without the drain the queued callbacks would wait forever
            await stop_with_queued(
                callbacks_of=callback, scope=scope, blocker=blocker, writer=writer
            )
    await trio.to_thread.run_sync(blocker.close)
    assert len(ids) == 50 and None not in ids
    assert await rows(database, "SELECT count(*) FROM messages") == [(50,)]


async def stop_with_queued(
    *,
    callbacks_of: Any,
    scope: trio.CancelScope,
    blocker: psycopg.Connection[Any],
    writer: InboundWriter,
) -> None:
    """Queue 49 messages behind a blocked commit, cancel the writer, then unblock it."""
    async with trio.open_nursery() as callbacks:
        callbacks.start_soon(callbacks_of, 0)
        await trio.testing.wait_all_tasks_blocked()  # the first commit waits for the lock
        for n in range(1, 50):
            callbacks.start_soon(callbacks_of, n)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.queued() == 49
        scope.cancel()
        await trio.to_thread.run_sync(blocker.rollback)


async def test_a_message_that_cannot_be_stored_is_quarantined_and_the_writer_goes_on(
    database: Database, agent_uuid: uuid.UUID, nursery: trio.Nursery
) -> None:
    """A message whose fields no database can take (an adapter bug) is quarantined by id; the
    messages committed with it in the same round are stored; the writer keeps running."""
    writer = InboundWriter(database, lambda _a, _s: None)
    await nursery.start(writer.run)
    broken = attrs.evolve(inbound("broken", id="3ABROKEN"), push_name=b"\xff")  # type: ignore[arg-type]
    results: dict[str, int | None] = {}

    async def callback(message: InboundMessage) -> None:
        results[message.text or ""] = await writer.persist(agent_uuid, message)

    async with trio.open_nursery() as callbacks:
        for message in (inbound("before"), broken, inbound("after")):
            callbacks.start_soon(callback, message)
    assert results["broken"] is None and results["before"] and results["after"]
    stored = await rows(
        database, "SELECT wa_message_id, text, status, error FROM messages ORDER BY id"
    )
    assert ("3ABROKEN", None, "quarantined", "unstorable: TypeError") in stored
    assert {text for _, text, status, _ in stored if status == "received"} == {"before", "after"}
    assert await writer.persist(agent_uuid, inbound("later")) is not None


async def test_a_database_refusing_every_write_holds_messages_back_instead_of_dropping_them(
    database: Database, agent_uuid: uuid.UUID, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """A read-only database (a failover to a standby) is the database's fault, not the
    messages': they wait, nothing is dropped or quarantined, and all go in once it is writable."""
    name = urlsplit(pg_dsn).path.lstrip("/")

    def read_only(on: bool) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {on}')
            # Sessions read the setting when they start: end every other one.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    await trio.to_thread.run_sync(read_only, True)
    async with open_database(pg_dsn, max_size=2) as db:  # new sessions: read-only
        writer = InboundWriter(db, lambda _a, _s: None)
        await nursery.start(writer.run)
        ids: list[int | None] = []

        async def callback(n: int) -> None:
            ids.append(await writer.persist(agent_uuid, inbound(f"m{n}")))

        async with trio.open_nursery() as callbacks:
            for n in range(8):
                callbacks.start_soon(callback, n)
            with trio.fail_after(30):
                while writer.refusals < 2:  # it met the refusal and keeps trying
                    await trio.sleep(0.05)
            assert ids == []  # still waiting: nothing acknowledged, nothing dropped
            await trio.to_thread.run_sync(read_only, False)
        assert len(ids) == 8 and None not in ids
    assert await rows(
        database, "SELECT count(*), count(*) FILTER (WHERE status = 'received') FROM messages"
    ) == [(8, 8)]


async def test_an_absurdly_long_message_id_is_cut_to_fit_with_the_original_kept(
    database: Database, agent_uuid: uuid.UUID, nursery: trio.Nursery
) -> None:
    """A 10 KB WhatsApp id (too large for the unique index) neither stalls the writer nor is
    dropped: it is stored under its first 128 characters, the whole id kept beside it."""
    writer = InboundWriter(database, lambda _a, _s: None)
    await nursery.start(writer.run)
    long_id = "3A" + "F" * 10_000
    with trio.fail_after(30):
        row_id = await writer.persist(agent_uuid, inbound("long", id=long_id))
        assert await writer.persist(agent_uuid, inbound("next")) is not None
    [(wa_id, payload)] = await rows(
        database, "SELECT wa_message_id, payload FROM messages WHERE id = %s", row_id
    )
    assert wa_id == long_id[:128] and restore(payload["escaped"]["id"]) == long_id


async def test_nul_and_lone_surrogates_are_stored_cleaned_with_the_original_kept(
    database: Database, agent_uuid: uuid.UUID, nursery: trio.Nursery
) -> None:
    """Text PostgreSQL refuses is stored with U+FFFD; the exact original is recoverable."""
    writer = InboundWriter(database, lambda _a, _s: None)
    await nursery.start(writer.run)
    nasty = "a\x00b\ud800c"
    message = InboundMessage(
        id="3AODD\x00ID",
        chat=CUSTOMER_JID,
        sender=CUSTOMER_JID,
        timestamp_ms=10**20,  # far outside any date
        push_name="\udfff",
        text=nasty,
    )
    row_id = await writer.persist(agent_uuid, message)
    assert row_id is not None
    [(text, wa_id, push_name, payload)] = await rows(
        database,
        "SELECT text, wa_message_id, push_name, payload FROM messages WHERE id = %s",
        row_id,
    )
    assert (text, wa_id, push_name) == ("a\ufffdb\ufffdc", "3AODD\ufffdID", "\ufffd")
    assert restore(payload["escaped"]["text"]) == nasty
    assert restore(payload["escaped"]["push_name"]) == "\udfff"
    assert restore(payload["escaped"]["id"]) == "3AODD\x00ID"
    json.dumps(payload)  # the stored payload is plain JSON


# ------------------------------------------------------------------ agents


async def test_poison_text_from_whatsapp_is_forwarded_cleaned_and_the_agent_keeps_running(
    world: World,  # noqa: F811
) -> None:
    """NUL and a lone surrogate from WhatsApp: stored, forwarded cleaned, no restart."""
    seen: list[str | None] = []

    async def forward(handle: AgentHandle, stored: StoredInbound) -> str:
        seen.append(stored.message.text)
        return "recorded"

    await world.start_supervisor(forward=forward)
    agent = await world.paired_agent("bot-a", "628123450001")
    with world.bus.subscribe("bot-a") as events:
        world.sim.inject_text("bot-a", CUSTOMER, "nul\x00here")
        world.sim.inject_text("bot-a", CUSTOMER, "lone\ud800surrogate")
        world.sim.inject_text("bot-a", CUSTOMER, "plain")
        for _ in range(3):
            await wait_for(events, lambda e: e.kind == "handled")
    assert seen == ["nul\ufffdhere", "lone\ufffdsurrogate", "plain"]
    assert agent.restarts == 0
    stored = await rows(world.db, "SELECT text, outcome FROM messages ORDER BY id")
    assert stored == [
        ("nul\ufffdhere", "recorded"),
        ("lone\ufffdsurrogate", "recorded"),
        ("plain", "recorded"),
    ]


async def test_a_restarted_tree_hands_over_every_stored_message_once(world: World) -> None:  # noqa: F811
    """Messages stored while the forwarder was busy survive a tree restart; none is lost."""
    calls: list[str] = []
    gate = trio.Event()

    async def slow_forward(handle: AgentHandle, stored: StoredInbound) -> str:
        calls.append(stored.message.id)
        await gate.wait()
        return "recorded"

    sup = await world.start_supervisor(forward=slow_forward)
    await world.paired_agent("bot-a", "628123450001")
    injected = [world.sim.inject_text("bot-a", CUSTOMER, f"m{i}").id for i in range(20)]
    with world.bus.subscribe("bot-a") as events:
        # Every message is committed (the writer published it) while the first one is stuck.
        for _ in range(20):
            await wait_for(events, lambda e: e.kind == "message")
    assert calls == injected[:1]
    with world.bus.subscribe("bot-a") as events:
        await sup.restart("bot-a")
        gate.set()
        handled = set()
        while len(handled) < 20:
            event = await wait_for(events, lambda e: e.kind == "handled")
            handled.add(event.data["rowId"])
    # The one in flight at the restart was taken up twice, every other one once.
    assert sorted(calls) == sorted(injected + injected[:1])
    outcomes = await rows(world.db, "SELECT outcome, attempts FROM messages ORDER BY id")
    assert outcomes == [("recorded", 2)] + [("recorded", 1)] * 19


async def test_a_message_that_keeps_killing_its_tree_is_quarantined_and_no_other_is(
    world: World,  # noqa: F811
) -> None:
    """Every forwarding attempt is counted before it starts: a message whose forwarding never
    ends (each time its tree is killed) is quarantined after agents.forward_max_attempts,
    while the messages queued behind it count exactly the one attempt that handles them. One
    reaching an idle forwarder had its first attempt counted in its own insert."""
    handed: list[str] = []
    stuck = trio.Event()

    async def forward(handle: AgentHandle, stored: StoredInbound) -> str:
        handed.append(stored.message.text or "")
        if stored.message.text == "poison":
            stuck.set()
            await trio.sleep_forever()  # as if it killed the process
        return "recorded"

    sup = await world.start_supervisor(forward=forward)
    await world.paired_agent("bot-a", "628123450001")
    with world.bus.subscribe("bot-a") as events:
        world.sim.inject_text("bot-a", CUSTOMER, "first")
        await wait_for(events, lambda e: e.kind == "handled")
    [(attempts,)] = await rows(world.db, "SELECT attempts FROM messages")
    assert attempts == 1
    assert sup.attempts.submitted == 0  # counted in the insert: the forwarder was idle

    world.sim.inject_text("bot-a", CUSTOMER, "poison")
    await stuck.wait()
    with world.bus.subscribe("bot-a") as events:
        for n in range(3):
            world.sim.inject_text("bot-a", CUSTOMER, f"behind {n}")
        for _ in range(3):
            await wait_for(events, lambda e: e.kind == "message")
    limit = world.config.agents.forward_max_attempts
    with world.bus.subscribe("bot-a") as events:
        for _ in range(limit - 1):  # each restart takes the poison up again first
            stuck = trio.Event()
            await sup.restart("bot-a")
            await stuck.wait()
        await sup.restart("bot-a")  # now it is over the limit
        outcomes = {}
        while len(outcomes) < 4:
            event = await wait_for(events, lambda e: e.kind == "handled")
            outcomes[event.data["rowId"]] = event.data["outcome"]
    stored = await rows(
        world.db, "SELECT text, attempts, status, outcome FROM messages ORDER BY id"
    )
    assert stored[0] == ("first", 1, "received", "recorded")
    assert stored[1][:3] == ("poison", limit + 1, "quarantined")
    assert stored[2:] == [(f"behind {n}", 1, "received", "recorded") for n in range(3)]
    assert handed.count("poison") == limit


async def test_a_reply_waits_for_the_connection_and_is_sent_once_it_is_back(
    world: World,  # noqa: F811
) -> None:
    """The AI's reply, produced while disconnected, goes out after reconnecting; then handled."""
    release = trio.Event()

    async def forward(handle: AgentHandle, stored: StoredInbound) -> Outgoing:
        await release.wait()
        return Outgoing(to=stored.message.chat, text=f"re: {stored.message.text}")

    await world.start_supervisor(forward=forward)
    agent = await world.paired_agent("bot-a", "628123450001")
    with world.bus.subscribe("bot-a") as events:
        world.sim.inject_text("bot-a", CUSTOMER, "question")
        await wait_for(events, lambda e: e.kind == "message")
        world.sim.drop("bot-a", back_after=5.0)  # whatsmeow heals the break by itself
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "disconnected")
        release.set()
        handled = await wait_for(events, lambda e: e.kind == "handled")
        assert agent.connected  # only sent once the connection was back
    assert handled.data["outcome"] == "replied"
    texts = [r.text for r in world.sim.sent("bot-a") if r.kind == "text"]
    assert texts == ["re: question"]
    stored = await rows(world.db, "SELECT direction, status, outcome FROM messages ORDER BY id")
    assert stored == [("inbound", "answered", "replied"), ("outbound", "sent", None)]


async def test_a_reply_to_an_idle_outbox_is_written_sending_once(world: World) -> None:  # noqa: F811
    """With nothing else to send, a reply is written ``sending`` together with its message's
    answer and goes out without a second write before WhatsApp has it."""

    async def forward(handle: AgentHandle, stored: StoredInbound) -> Outgoing:
        return Outgoing(to=stored.message.chat, text=f"re: {stored.message.text}")

    await world.start_supervisor(forward=forward)
    await world.paired_agent("bot-a", "628123450001")
    before = outbound_store.round_statistics(world.db).changes
    with world.bus.subscribe("bot-a") as events:
        world.sim.inject_text("bot-a", CUSTOMER, "question")
        handled = await wait_for(events, lambda e: e.kind == "handled")
    assert handled.data["outcome"] == "replied"
    assert outbound_store.round_statistics(world.db).changes - before == 1  # "sent" only
    stored = await rows(world.db, "SELECT direction, status, outcome FROM messages ORDER BY id")
    assert stored == [("inbound", "answered", "replied"), ("outbound", "sent", None)]


class RowLock:
    """A row of ``messages`` locked by another session (its transaction left open), so that
    the writes waiting for it can be held at a chosen moment."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn)

    async def take(self, row_id: int) -> None:
        def lock() -> None:
            self._conn.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (row_id,))

        await trio.to_thread.run_sync(lock)

    async def release(self) -> None:
        await trio.to_thread.run_sync(self._conn.rollback)

    def close(self) -> None:
        self._conn.close()


async def lock_waits(db: Database) -> int:
    [(waiting,)] = await rows(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()",
    )
    return int(waiting)


async def hold_the_reply(world: World) -> tuple[RowLock, trio.Event]:  # noqa: F811
    """An agent whose forwarder answers every message at once, its reply's write held by a
    lock on the message's row; set the event to let the reply be written."""
    lock = RowLock(world.db.dsn)
    answered = trio.Event()

    async def forward(handle: AgentHandle, stored: StoredInbound) -> Outgoing:
        await lock.take(stored.row_id)
        answered.set()
        return Outgoing(to=stored.message.chat, text=f"re: {stored.message.text}")

    await world.start_supervisor(forward=forward)
    return lock, answered


async def test_a_reply_written_sending_for_a_connection_that_broke_is_queued_again(
    world: World,  # noqa: F811
) -> None:
    """The connection breaks while a reply is being written ``sending`` for the idle outbox:
    WhatsApp never had it, so it is queued again and goes out, once, after the connection
    is back."""
    lock, answered = await hold_the_reply(world)
    try:
        agent = await world.paired_agent("bot-a", "628123450001")
        with world.bus.subscribe("bot-a") as events, structlog.testing.capture_logs() as logs:
            world.sim.inject_text("bot-a", CUSTOMER, "question")
            await answered.wait()
            while not await lock_waits(world.db):  # the reply's write waits for the lock
                await trio.sleep(0.01)
            world.sim.drop("bot-a", back_after=2.0)
            await wait_for(
                events, lambda e: e.kind == "status" and e.data["status"] == "disconnected"
            )
            await lock.release()
            handled = await wait_for(events, lambda e: e.kind == "handled")
            assert agent.connected  # sent once the connection was back
    finally:
        lock.close()
    assert handled.data["outcome"] == "replied"
    assert [e["rows"] for e in logs if e["event"] == "gatewayd.send.requeued"] == [1]
    texts = [r.text for r in world.sim.sent("bot-a") if r.kind == "text"]
    assert texts == ["re: question"]
    stored = await rows(world.db, "SELECT direction, status, outcome FROM messages ORDER BY id")
    assert stored == [("inbound", "answered", "replied"), ("outbound", "sent", None)]


async def test_a_reply_written_sending_while_its_agent_stops_is_sent_by_the_next_start(
    world: World,  # noqa: F811
) -> None:
    """The agent is stopped while a reply is being written ``sending`` for its outbox: the
    write completes, the stopping tree queues the reply again, and the agent's next start
    sends it, once."""
    lock, answered = await hold_the_reply(world)
    assert world.sup is not None
    try:
        agent = await world.paired_agent("bot-a", "628123450001")
        with structlog.testing.capture_logs() as logs:
            world.sim.inject_text("bot-a", CUSTOMER, "question")
            await answered.wait()
            while not await lock_waits(world.db):
                await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(world.sup.stop, "bot-a")
                while not agent.cancel_scope.cancel_called:
                    await trio.sleep(0.01)
                await lock.release()
    finally:
        lock.close()
    assert [e["rows"] for e in logs if e["event"] == "gatewayd.send.requeued"] == [1]
    assert await rows(world.db, "SELECT status FROM messages WHERE direction = 'outbound'") == [
        ("queued",)
    ]
    with world.bus.subscribe("bot-a") as events:
        await world.sup.start("bot-a")
        handled = await wait_for(events, lambda e: e.kind == "handled")
    assert handled.data["outcome"] == "replied"
    texts = [r.text for r in world.sim.sent("bot-a") if r.kind == "text"]
    assert texts == ["re: question"]


async def test_a_reply_older_than_the_max_age_is_expired_not_sent(world: World) -> None:  # noqa: F811
    """A queued reply past agents.reply_max_age ends expired; its message is handled so."""
    await world.start_supervisor()
    await world.new_agent("bot-a")
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None
    [(inbound_row,)] = await rows(
        world.db,
        "INSERT INTO messages (agent_id, direction, chat_jid, wa_message_id, status)"
        " VALUES (%s, 'inbound', %s, '3AOLD', 'received') RETURNING id",
        record.id,
        CUSTOMER_JID,
    )
    queued = await outbound_store.queue_reply(
        world.db, record.id, inbound_row, Outgoing(to=CUSTOMER_JID, text="late"), trace_id=None
    )
    assert queued is not None
    reply = queued.row_id
    await rows(
        world.db,
        "UPDATE messages SET created_at = now() - interval '2 hours' WHERE id = %s RETURNING id",
        reply,
    )
    with world.bus.subscribe("bot-a") as events:
        assert world.sup is not None
        await world.sup.start("bot-a")
        await wait_for(events, lambda e: e.kind == "qr")
        world.sim.scan("bot-a", "628123450001")
        handled = await wait_for(events, lambda e: e.kind == "handled")
    assert handled.data == {"rowId": inbound_row, "id": "3AOLD", "outcome": "reply_expired"}
    assert [r for r in world.sim.sent("bot-a") if r.kind == "text"] == []
    assert await rows(world.db, "SELECT status FROM messages WHERE id = %s", reply) == [
        ("expired",)
    ]


async def test_a_retried_idempotency_key_answers_the_first_send(world: World) -> None:  # noqa: F811
    """The same key twice: one message goes out, both callers get its id."""
    sup = await world.start_supervisor()
    await world.paired_agent("bot-a", "628123450001")
    message = Outgoing(to=CUSTOMER_JID, text="pay now")
    first = await sup.send("bot-a", message, idempotency_key="order-17")
    again = await sup.send("bot-a", message, idempotency_key="order-17")
    other = await sup.send("bot-a", message, idempotency_key="order-18")
    assert again == first and other.message_id != first.message_id
    assert [r.text for r in world.sim.sent("bot-a")] == ["pay now", "pay now"]


async def test_an_unknown_send_is_never_sent_again_for_its_key(world: World) -> None:  # noqa: F811
    """A send left 'sending' by a dead process is unknown at start; its key refuses a resend."""
    await world.new_agent("bot-a")
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None
    stuck = await outbound_store.insert_pending(
        world.db, record.id, Outgoing(to=CUSTOMER_JID, text="hi"), trace_id=None, key="k1"
    )
    never = await outbound_store.insert_pending(
        world.db, record.id, Outgoing(to=CUSTOMER_JID, text="hi"), trace_id=None, key="k2"
    )
    assert stuck is not None and never is not None
    assert await outbound_store.mark_sending(world.db, stuck)
    sup = await world.start_supervisor()  # the next process start reconciles
    statuses = await rows(world.db, "SELECT id, status, idempotency_key FROM messages ORDER BY id")
    assert statuses == [(stuck, "unknown", "k1"), (never, "failed", None)]
    with world.bus.subscribe("bot-a") as events:
        await sup.start("bot-a")
        await wait_for(events, lambda e: e.kind == "qr")
        world.sim.scan("bot-a", "628123450001")
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    with pytest.raises(IdempotencyConflict):
        await sup.send("bot-a", Outgoing(to=CUSTOMER_JID, text="hi"), idempotency_key="k1")
    sent = await sup.send("bot-a", Outgoing(to=CUSTOMER_JID, text="hi"), idempotency_key="k2")
    assert [r.message_id for r in world.sim.sent("bot-a")] == [sent.message_id]


async def test_a_message_the_adapter_cannot_read_is_quarantined_with_its_raw_bytes(
    world: World,  # noqa: F811
) -> None:
    """An unreadable message is kept (raw bytes, reason), never forwarded; the agent carries on."""
    calls: list[str] = []

    async def forward(handle: AgentHandle, stored: StoredInbound) -> str:
        calls.append(stored.message.text or "")
        return "recorded"

    await world.start_supervisor(forward=forward)
    agent = await world.paired_agent("bot-a", "628123450001")
    with world.bus.subscribe("bot-a") as events:
        world.sim.inject_unreadable(
            "bot-a", b"\x00\xffgarbage", "DecodeError", message_id="3AX\x00"
        )
        world.sim.inject_unreadable("bot-a", b"no id at all", "KeyError")
        world.sim.inject_text("bot-a", CUSTOMER, "after")
        await wait_for(events, lambda e: e.kind == "handled")
    assert calls == ["after"] and agent.restarts == 0
    kept = await rows(
        world.db,
        "SELECT wa_message_id, status, outcome, payload->>'raw' FROM messages"
        " WHERE status = 'quarantined' ORDER BY id",
    )
    assert kept[0] == ("3AX\ufffd", "quarantined", "quarantined:DecodeError", "AP9nYXJiYWdl")
    assert kept[1][0].startswith("unreadable:") and kept[1][2] == "quarantined:KeyError"


async def test_a_send_still_queued_when_its_agent_restarts_is_refused_and_its_key_freed(
    world: World,  # noqa: F811
) -> None:
    """A queued API send whose agent is restarted: its caller hears at once that it was not
    sent, the row is failed, and a retry with the same key goes out once."""
    world.config = Config.from_mapping(
        {"agents": {"send_rate_per_minute": 0.001, "send_burst": 1, "restart_initial": 0.05}}
    )
    sup = await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    await sup.send("bot-a", Outgoing(to=CUSTOMER_JID, text="first"))  # takes the only token
    outcome: list[BaseException] = []

    async def queued() -> None:
        try:
            await sup.send("bot-a", Outgoing(to=CUSTOMER_JID, text="second"), idempotency_key="K")
        except GatewayError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as callers:
        callers.start_soon(queued)
        with trio.fail_after(30):
            while handle.queue_depth() < 1:
                await trio.sleep(0.01)
        with world.bus.subscribe("bot-a") as events:
            await sup.restart("bot-a")
            await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    assert [type(e) for e in outcome] == [AgentStopped]
    assert await rows(
        world.db, "SELECT status, idempotency_key FROM messages WHERE text = 'second'"
    ) == [("failed", None)]
    sent = await sup.send("bot-a", Outgoing(to=CUSTOMER_JID, text="second"), idempotency_key="K")
    assert [r.message_id for r in world.sim.sent("bot-a") if r.text == "second"] == [
        sent.message_id
    ]
