"""Group-committed send rows (gatewayd/store/outbound.py): many callers, one round, each
caller its own row, its own answer, its own error; and a send's one answer (``Reply``)."""

from __future__ import annotations

import uuid

import attrs
import outcome
import psycopg
import pytest
import trio
import trio.testing

from gatewayd.errors import AgentStopped, Conflict
from gatewayd.nursery.commands import Outgoing, Sent, new_send
from gatewayd.nursery.handle import answer
from gatewayd.store import agents as agents_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.db import Database
from gatewayd.whatsapp.port import Quote

CUSTOMER = "628111000111@s.whatsapp.net"


async def agent(db: Database, name: str) -> uuid.UUID:
    record = await agents_store.create_agent(db, agent_id=name, name=name, user_id="u", api_key="k")
    return record.id


async def rows(db: Database, query: str) -> list[tuple[object, ...]]:
    return await db.run(lambda conn: conn.execute(query).fetchall())


async def xid(db: Database) -> int:
    """The cluster's next transaction id: every transaction that writes takes one (this
    query too), and nothing else writes to the test server meanwhile."""
    got = await rows(db, "SELECT pg_current_xact_id()::text::bigint")
    return int(str(got[0][0]))


async def test_concurrent_sends_each_get_their_own_row(database: Database) -> None:
    """200 sends of 20 agents at once: every caller's id is the row of its own message, with
    its own key, trace id and recipient; ids follow the order of each agent's calls."""
    agents = [await agent(database, f"bot-{i}") for i in range(20)]
    got: dict[str, int | None] = {}

    async def send(n: int) -> None:
        agent_uuid = agents[n % 20]
        message = Outgoing(to=f"6281100{n:05d}@s.whatsapp.net", text=f"message {n}")
        got[f"t{n}"] = await outbound_store.insert_pending(
            database, agent_uuid, message, trace_id=f"t{n}", key=f"k{n}" if n % 3 else None
        )

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(send, n)
    stored = await rows(
        database,
        "SELECT id, trace_id, text, chat_jid, idempotency_key, status, direction FROM messages",
    )
    assert len(stored) == 200
    for row_id, trace_id, text, chat, key, status, direction in stored:
        n = int(str(trace_id)[1:])
        assert got[str(trace_id)] == row_id
        assert (text, chat, status, direction) == (
            f"message {n}",
            f"6281100{n:05d}@s.whatsapp.net",
            "pending",
            "outbound",
        )
        assert key == (f"k{n}" if n % 3 else None)


async def test_a_round_is_one_transaction(database: Database) -> None:
    """Sends that arrive while a round is written share the next one: 100 of them take a
    few transactions, not 100 (a round for the first, then one for those that came meanwhile)."""
    agent_uuid = await agent(database, "bot-a")
    message = Outgoing(to=CUSTOMER, text="hi")
    before = await xid(database)
    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(
                lambda n=n: outbound_store.insert_pending(
                    database, agent_uuid, message, trace_id=str(n), key=None
                )
            )
    assert await xid(database) - before <= 10
    assert await rows(database, "SELECT count(*) FROM messages") == [(100,)]


async def test_a_key_used_twice_in_one_round_records_one_send(
    database: Database, pg_dsn: str
) -> None:
    """Two sends with the same key in the same round: one row; the other caller gets None
    (the supervisor then answers it with the first send's result)."""
    agent_uuid = await agent(database, "bot-a")
    got: dict[str, int | None] = {}

    async def send(name: str, key: str) -> None:
        got[name] = await outbound_store.insert_pending(
            database, agent_uuid, Outgoing(to=CUSTOMER, text=name), trace_id=name, key=key
        )

    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "leader", "other")  # its round waits for the lock
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "a", "k")
            nursery.start_soon(send, "b", "k")
            await trio.testing.wait_all_tasks_blocked()
            blocker.rollback()
    stored = await rows(database, "SELECT id, trace_id FROM messages WHERE idempotency_key = 'k'")
    assert len(stored) == 1
    row_id, winner = stored[0]
    assert got == {"leader": got["leader"], "a": None, "b": None, str(winner): row_id}


async def test_a_bad_row_fails_only_its_own_caller(database: Database) -> None:
    """An agent that no longer exists (its row deleted meanwhile) fails its own send with a
    conflict; the sends of the same round for other agents are recorded."""
    good = await agent(database, "bot-a")
    gone = uuid.uuid4()
    results: dict[str, object] = {}

    async def send(name: str, agent_uuid: uuid.UUID) -> None:
        try:
            results[name] = await outbound_store.insert_pending(
                database, agent_uuid, Outgoing(to=CUSTOMER, text=name), trace_id=name, key=None
            )
        except Conflict as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(send, f"good-{n}", good)
        nursery.start_soon(send, "gone", gone)
    assert isinstance(results.pop("gone"), Conflict)
    stored = await rows(database, "SELECT id, trace_id FROM messages ORDER BY id")
    assert {trace: row_id for row_id, trace in stored} == results


async def test_a_caller_cancelled_before_its_round_is_never_written(
    database: Database, pg_dsn: str
) -> None:
    """While a round waits on the database, a caller queued behind it is cancelled: its
    row is never written, the next round writes the others', and the first round's caller
    gets its row."""
    agent_uuid = await agent(database, "bot-a")
    results: dict[str, int | None] = {}

    async def send(name: str) -> None:
        results[name] = await outbound_store.insert_pending(
            database, agent_uuid, Outgoing(to=CUSTOMER, text=name), trace_id=name, key=None
        )

    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")  # inserts wait for it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "first")
            await trio.testing.wait_all_tasks_blocked()
            cancelled = trio.CancelScope()

            async def send_cancelled() -> None:
                with cancelled:
                    await send("cancelled")

            nursery.start_soon(send_cancelled)
            nursery.start_soon(send, "last")
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()
            await trio.testing.wait_all_tasks_blocked()
            blocker.rollback()  # the lock goes: the first round commits, then the next
    stored = await rows(database, "SELECT id, trace_id FROM messages ORDER BY id")
    assert {trace: row_id for row_id, trace in stored} == results
    assert sorted(results) == ["first", "last"]


async def test_sending_and_sent_are_recorded_per_row(database: Database) -> None:
    """mark_sending answers per row (False for a row no longer open); mark_sent records each
    row's own WhatsApp id, time and answer."""
    agent_uuid = await agent(database, "bot-a")
    ids = [
        await outbound_store.insert_pending(
            database, agent_uuid, Outgoing(to=CUSTOMER, text=str(n)), trace_id=None, key=None
        )
        for n in range(6)
    ]
    assert all(i is not None for i in ids)
    row_ids = [i for i in ids if i is not None]
    await outbound_store.release_key(database, row_ids[0], "gone")
    marked: dict[int, bool] = {}

    async def mark(row_id: int) -> None:
        marked[row_id] = await outbound_store.mark_sending(database, row_id)

    async with trio.open_nursery() as nursery:
        for row_id in row_ids:
            nursery.start_soon(mark, row_id)
    assert marked == {row_id: row_id != row_ids[0] for row_id in row_ids}

    async def sent(n: int, row_id: int) -> None:
        await outbound_store.mark_sent(
            database,
            row_id,
            wa_message_id=f"3EB0{n:016X}",
            timestamp_ms=1_700_000_000_000 + n * 1000,
            result={"messageId": f"3EB0{n:016X}"},
        )

    async with trio.open_nursery() as nursery:
        for n, row_id in enumerate(row_ids[1:], 1):
            nursery.start_soon(sent, n, row_id)
    stored = await rows(
        database,
        "SELECT status, wa_message_id, extract(epoch FROM sent_at)::bigint, result->>'messageId'"
        " FROM messages ORDER BY id",
    )
    assert stored[0][:2] == ("failed", None)
    assert stored[1:] == [
        ("sent", f"3EB0{n:016X}", 1_700_000_000 + n, f"3EB0{n:016X}") for n in range(1, 6)
    ]


@pytest.mark.parametrize(
    "kinds",
    [("pending",), ("sending",), ("sent",), ("pending", "sending"), ("pending", "sent"),
     ("sending", "sent"), ("pending", "sending", "sent")],
    ids="+".join,
)  # fmt: skip
async def test_a_round_holding_some_kinds_of_change_answers_each(
    database: Database, kinds: tuple[str, ...]
) -> None:
    """A round is written with only the parts it has changes for: whichever kinds it holds,
    each change gets its own answer and its row its own change."""
    agent_uuid = await agent(database, "bot-a")
    message = Outgoing(to=CUSTOMER, text="hi")
    opened, going, gone = [
        await outbound_store.insert_pending(database, agent_uuid, message, trace_id=None, key=None)
        for _ in range(3)
    ]
    assert opened is not None and going is not None and gone is not None
    assert await outbound_store.mark_sending(database, going)
    assert await outbound_store.mark_sending(database, gone)
    changes: list[outbound_store._Change] = []
    if "pending" in kinds:
        changes.append(outbound_store._Pending(agent_uuid, message, "new", None))
    if "sending" in kinds:  # (a row is changed once a round: its next change waits)
        changes += [outbound_store._Sending(opened), outbound_store._Sending(gone)]
    if "sent" in kinds:
        changes.append(outbound_store._Sent(going, "3EB0SENT", 1_700_000_000_000, {"ok": 1}))
    results = await outbound_store._write_changes(database, changes)
    expected: list[object] = []
    if "pending" in kinds:
        (new_row,) = await rows(database, "SELECT id FROM messages WHERE trace_id = 'new'")
        expected.append(new_row[0])
    if "sending" in kinds:
        expected += [True, False]  # the second one was sending already
    if "sent" in kinds:
        expected.append(None)
    assert results == expected
    statuses = await rows(database, "SELECT id, status, wa_message_id FROM messages ORDER BY id")
    assert statuses[:3] == [
        (opened, "sending" if "sending" in kinds else "pending", None),
        (going, "sent", "3EB0SENT") if "sent" in kinds else (going, "sending", None),
        (gone, "sending", None),
    ]
    assert statuses[3:] == ([(new_row[0], "pending", None)] if "pending" in kinds else [])


@pytest.mark.parametrize("count", [1, 3])
async def test_a_reply_sent_settles_its_inbound_message(database: Database, count: int) -> None:
    """A reply marked sent (alone or in a round with others) makes its inbound message
    handled (``replied``) in the same transaction."""
    agent_uuid = await agent(database, "bot-a")
    inbound_ids = [
        (
            await rows(
                database,
                "INSERT INTO messages (agent_id, direction, chat_jid, wa_message_id, status)"
                f" VALUES ('{agent_uuid}', 'inbound', '{CUSTOMER}', '3A{n:018X}', 'received')"
                " RETURNING id",
            )
        )[0][0]
        for n in range(count)
    ]
    replies = []
    for inbound in inbound_ids:
        reply = await outbound_store.queue_reply(
            database, agent_uuid, int(str(inbound)), Outgoing(to=CUSTOMER, text="ok"), trace_id=None
        )
        assert reply is not None and await outbound_store.mark_sending(database, reply.row_id)
        replies.append(reply.row_id)
    async with trio.open_nursery() as nursery:
        for n, reply in enumerate(replies):
            nursery.start_soon(
                lambda n=n, reply=reply: outbound_store.mark_sent(
                    database, reply, wa_message_id=f"3EB{n}", timestamp_ms=0, result={}
                )
            )
    stored = await rows(
        database, "SELECT outcome FROM messages WHERE direction = 'inbound' ORDER BY id"
    )
    assert stored == [("replied",)] * count


@pytest.mark.parametrize(
    "message",
    [
        Outgoing(to=CUSTOMER, text="plain"),
        Outgoing(
            to="120363025246125486@g.us",
            text="look ☺",
            quote=Quote(message_id="3A0123456789ABCDEF01", sender=CUSTOMER, chat=CUSTOMER),
            mentions=(CUSTOMER,),
        ),
        Outgoing(
            to=CUSTOMER,
            kind="image",
            text="caption",
            data=b"\xff\xd8\xff" * 10,
            mimetype="image/jpeg",
            filename="a.jpg",
        ),  # fmt: skip
        Outgoing(to=CUSTOMER, kind="audio", data=b"OggS", mimetype="audio/ogg", ptt=True),
    ],
    ids=["text", "group-quote-mention", "image", "voice-note"],
)
async def test_a_grouped_row_holds_what_a_lone_row_does(
    database: Database, message: Outgoing
) -> None:
    """The round's statement writes the columns the one-row statement of a queued send
    writes: type, chat, text, quote, media description (never the bytes), group flag, and a
    payload the outbox reads back as the same message minus its bytes."""
    agent_uuid = await agent(database, "bot-a")
    pending = await outbound_store.insert_pending(
        database, agent_uuid, message, trace_id="t", key=None
    )
    queued = await outbound_store.queue(database, agent_uuid, message, trace_id="t")
    columns = (
        "agent_id, direction, type, chat_jid, text, quoted_id, media, trace_id, is_group,"
        " payload, reply_to, idempotency_key, wa_message_id, handled_at"
    )
    by_id = {
        row[0]: row[1:]
        for row in await rows(database, f"SELECT id, {columns}, status FROM messages")
    }
    assert by_id[pending][:-1] == by_id[queued][:-1]
    assert (by_id[pending][-1], by_id[queued][-1]) == ("pending", "queued")
    (back,) = await outbound_store.queued(database, agent_uuid, 10)
    assert back.message == attrs.evolve(message, data=None)


async def test_a_reply_goes_to_a_caller_still_waiting_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The send worker's answer reaches the caller waiting in its ``async with``; after the
    caller gave up (a timeout), answering is a no-op, as is a second answer."""
    command, reply = new_send(1, Outgoing(to=CUSTOMER, text="hi"))
    sent = Sent(message_id="3EB0AA", timestamp_ms=1, row_id=1)
    async with reply:
        answer(command, outcome.Value(sent))
        answer(command, outcome.Error(AgentStopped("late")))  # ignored: already answered
        assert (await reply.receive()).unwrap() == sent
    command, reply = new_send(2, Outgoing(to=CUSTOMER, text="hi"))
    async with reply:
        with trio.move_on_after(0.01):
            await reply.receive()
    answer(command, outcome.Value(sent))  # the caller left: nobody to tell
    with pytest.raises(trio.BrokenResourceError):
        command.reply.send_nowait(outcome.Value(sent))
