"""The message log of a session (gatewayd/usecases/messagelog.py), against a real PostgreSQL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gatewayd.errors import InvalidPayload
from gatewayd.jid import lid_of
from gatewayd.nursery.commands import Outgoing
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database
from gatewayd.usecases.messagelog import (
    LogEntry,
    MessagePage,
    MessageQuery,
    decode_cursor,
    encode_cursor,
    message_log,
)
from gatewayd.whatsapp.port import InboundMessage

T0 = datetime(2024, 12, 1, 10, 0, tzinfo=UTC)
AGENT_PHONE = "6289876543210"
AGENT_LID = "100000000000001"


async def _agent(db: Database, agent_id: str = "agent-a") -> AgentRecord:
    record = await agents_store.create_agent(
        db, agent_id=agent_id, name="bot", user_id="user-a", api_key="k"
    )
    await agents_store.set_device(
        db,
        record.id,
        device_jid=f"{AGENT_PHONE}:7@s.whatsapp.net",
        phone_number=AGENT_PHONE,
        lid=f"{AGENT_LID}@lid",
    )
    fresh = await agents_store.get_agent(db, agent_id)
    assert fresh is not None
    return fresh


async def _sql(db: Database, query: str, *args: Any) -> None:
    def work(conn: Connection) -> None:
        conn.execute(query.encode(), args)

    await db.run(work)


async def _rows(db: Database, agent: AgentRecord, count: int, *, tie_every: int = 3) -> None:
    """``count`` rows, alternating direction and type; every ``tie_every`` rows share one
    recorded time, so the id has to break ties."""
    await _sql(
        db,
        "INSERT INTO messages (agent_id, direction, type, chat_jid, status, wa_message_id,"
        " text, created_at)"
        " SELECT %s, CASE WHEN g %% 2 = 0 THEN 'inbound' ELSE 'outbound' END,"
        "  CASE WHEN g %% 5 = 0 THEN 'image' ELSE 'text' END, '6281234567890@s.whatsapp.net',"
        "  CASE WHEN g %% 2 = 0 THEN 'received' ELSE 'sent' END, 'WA' || g, 'n' || g,"
        "  %s + make_interval(secs => g / %s)"
        " FROM generate_series(1, %s) AS g",
        agent.id,
        T0,
        tie_every,
        count,
    )


async def _all_pages(db: Database, agent: AgentRecord, **query: Any) -> list[MessagePage]:
    pages: list[MessagePage] = []
    cursor: str | None = None
    while True:
        page = await message_log(db, agent, MessageQuery(cursor=cursor, **query))
        pages.append(page)
        cursor = page.next_cursor
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


def _key(entry: LogEntry) -> tuple[datetime, int]:
    assert entry.message_id is not None
    return entry.timestamp, int(entry.message_id.removeprefix("WA"))


async def test_pages_cover_every_row_once_newest_first(database: Database) -> None:
    """120 rows in pages of 50 come as 50/50/20, newest first, with no duplicate or gap."""
    agent = await _agent(database)
    await _rows(database, agent, 120)

    pages = await _all_pages(database, agent, limit=50)

    assert [len(p.messages) for p in pages] == [50, 50, 20]
    assert pages[-1].next_cursor is None
    entries = [e for p in pages for e in p.messages]
    ids = [e.message_id for e in entries]
    assert sorted(ids, key=lambda i: int(str(i)[2:])) == [f"WA{g}" for g in range(1, 121)]
    # Newest first; rows of one recorded time by descending row id (the keyset's tiebreak).
    keys = [_key(e) for e in entries]
    assert keys == sorted(keys, reverse=True)


async def test_rows_stored_between_pages_do_not_shift_them(database: Database) -> None:
    """A message stored after the first page neither repeats nor hides an older row."""
    agent = await _agent(database)
    await _rows(database, agent, 30)
    first = await message_log(database, agent, MessageQuery(limit=10))
    await _sql(
        database,
        "INSERT INTO messages (agent_id, direction, chat_jid, wa_message_id, created_at)"
        " VALUES (%s, 'inbound', '6281234567890@s.whatsapp.net', 'NEW', %s)",
        agent.id,
        T0 + timedelta(days=1),
    )
    second = await message_log(database, agent, MessageQuery(limit=10, cursor=first.next_cursor))
    assert [e.message_id for e in second.messages] == [f"WA{g}" for g in range(20, 10, -1)]


async def test_filters_narrow_the_log(database: Database) -> None:
    """direction, type, since (inclusive) and until (exclusive) each narrow the rows, and
    pages of a filtered log continue with the same filter."""
    agent = await _agent(database)
    await _rows(database, agent, 60, tie_every=1)  # row g recorded at T0 + g seconds

    incoming = [e for p in await _all_pages(database, agent, direction="incoming", limit=7)
                for e in p.messages]  # fmt: skip
    assert [e.message_id for e in incoming] == [f"WA{g}" for g in range(60, 0, -2)]
    assert {(e.direction, e.status) for e in incoming} == {("incoming", "received")}

    outgoing = await message_log(database, agent, MessageQuery(direction="outgoing"))
    assert {(e.direction, e.status) for e in outgoing.messages} == {("outgoing", "sent")}
    assert len(outgoing.messages) == 30 and outgoing.next_cursor is None

    images = await message_log(database, agent, MessageQuery(type="image"))
    assert [e.message_id for e in images.messages] == [f"WA{g}" for g in range(60, 0, -5)]

    window = MessageQuery(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20))
    page = await message_log(database, agent, window)
    assert [e.message_id for e in page.messages] == [f"WA{g}" for g in range(19, 9, -1)]

    naive = MessageQuery(since=datetime(2024, 12, 1, 10, 0, 55), direction="outgoing")
    page = await message_log(database, agent, naive)  # a time without zone is UTC
    assert [e.message_id for e in page.messages] == ["WA59", "WA57", "WA55"]

    assert (await message_log(database, agent, MessageQuery(type="location"))).messages == []


async def test_entries_name_both_forms_of_each_party(database: Database) -> None:
    """Incoming messages come from the sender to the agent, outgoing ones from the agent to
    the chat; phone and LID digits are filled where the rows or the agent know them."""
    agent = await _agent(database)
    private = InboundMessage(
        id="IN1",
        chat="6281234567890@s.whatsapp.net",
        sender="6281234567890@s.whatsapp.net",
        sender_lid="200000000000002@lid",
        timestamp_ms=1_733_047_500_000,
        push_name="John Doe",
        text="Hello!",
    )
    group = InboundMessage(
        id="IN2",
        chat="120363025246125486@g.us",
        sender="200000000000003@lid",
        timestamp_ms=1_733_047_501_000,
        is_group=True,
        push_name="Jane",
        text="hi all",
        quoted_id="OUT0",
    )
    for message in (private, group):
        await messages_store.insert_inbound(database, agent.id, message)
    await messages_store.insert_outbound(
        database,
        agent.id,
        chat="300000000000004@lid",
        type="image",
        text="caption",
        wa_message_id="OUT1",
        timestamp_ms=1_733_047_502_000,
        quoted_id="IN1",
    )
    row = await outbound_store.insert_pending(
        database,
        agent.id,
        Outgoing(to="120363025246125486@g.us", text="to the group"),
        trace_id=None,
        key=None,
    )
    assert row is not None

    page = await message_log(database, agent, MessageQuery())
    by_id = {e.message_id: e for e in page.messages}
    assert len(page.messages) == 4

    assert by_id["IN1"] == LogEntry(
        row_id=by_id["IN1"].row_id,
        message_id="IN1",
        direction="incoming",
        type="text",
        from_="6281234567890",
        from_lid="200000000000002",
        from_name="John Doe",
        to=AGENT_PHONE,
        to_lid=AGENT_LID,
        content="Hello!",
        is_group=False,
        group_id=None,
        quoted_message_id=None,
        status="received",
        timestamp=by_id["IN1"].timestamp,
    )
    in_group = by_id["IN2"]
    assert (in_group.from_, in_group.from_lid, in_group.from_name) == (
        None,
        "200000000000003",
        "Jane",
    )
    assert (in_group.is_group, in_group.group_id, in_group.quoted_message_id) == (
        True,
        "120363025246125486",
        "OUT0",
    )
    sent = by_id["OUT1"]
    assert (sent.from_, sent.from_lid, sent.to, sent.to_lid) == (
        AGENT_PHONE,
        AGENT_LID,
        None,
        "300000000000004",
    )
    assert (sent.type, sent.content, sent.status, sent.from_name) == (
        "image",
        "caption",
        "sent",
        None,
    )
    pending = by_id[None]  # not yet handed to WhatsApp: no WhatsApp id
    assert (pending.status, pending.to, pending.is_group, pending.group_id) == (
        "queued",
        None,
        True,
        "120363025246125486",
    )


async def test_outgoing_statuses_use_the_logs_words(database: Database) -> None:
    """Each stored outbound status maps to queued, sending, sent, failed or unknown."""
    agent = await _agent(database)
    stored = ["queued", "pending", "sending", "sent", "failed", "unknown", "expired"]
    for i, status in enumerate(stored):
        await _sql(
            database,
            "INSERT INTO messages (agent_id, direction, chat_jid, status, wa_message_id,"
            " created_at) VALUES (%s, 'outbound', '6281234567890@s.whatsapp.net', %s, %s, %s)",
            agent.id,
            status,
            status,
            T0 + timedelta(seconds=i),
        )
    page = await message_log(database, agent, MessageQuery())
    assert {e.message_id: e.status for e in page.messages} == {
        "queued": "queued",
        "pending": "queued",
        "sending": "sending",
        "sent": "sent",
        "failed": "failed",
        "unknown": "unknown",
        "expired": "failed",
    }


async def test_the_log_is_the_agents_own(database: Database) -> None:
    """Another agent's messages never appear in an agent's log."""
    agent = await _agent(database)
    neighbour = await _agent(database, "agent-b")
    await _rows(database, neighbour, 5)
    assert (await message_log(database, agent, MessageQuery())).messages == []
    assert len((await message_log(database, neighbour, MessageQuery())).messages) == 5


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "%%%%",
        "eyJ0Ijo",  # truncated
        "x" * 1000,
        "é",
        _b64(b"\xff\xfe"),
        _b64(b"[1, 2]"),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00"}'),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00", "i": "7"}'),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00", "i": true}'),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00", "i": -1}'),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00", "i": 99999999999999999999}'),
        _b64(b'{"t": "2024-12-01T10:00:00", "i": 7}'),  # no zone
        _b64(b'{"t": "yesterday", "i": 7}'),
        _b64(b'{"t": 1733047200, "i": 7}'),
        _b64(b'{"t": "2024-12-01T10:00:00+00:00", "i": 7, "x": 1}'),
    ],
)
async def test_a_garbled_cursor_is_invalid_payload(database: Database, cursor: str) -> None:
    """A cursor that is not one the log wrote is refused as InvalidPayload naming the field."""
    agent = await _agent(database)
    with pytest.raises(InvalidPayload) as caught:
        await message_log(database, agent, MessageQuery(cursor=cursor))
    assert caught.value.details == {"field": "cursor"}


def test_a_cursor_round_trips() -> None:
    """decode_cursor reads back exactly the position encode_cursor wrote, microseconds kept."""
    at = datetime(2024, 12, 1, 10, 5, 0, 123456, tzinfo=UTC)
    cursor = encode_cursor(at, 42)
    assert "=" not in cursor and json.loads(base64.urlsafe_b64decode(cursor + "==")) == {
        "t": "2024-12-01T10:05:00.123456+00:00",
        "i": 42,
    }
    assert decode_cursor(cursor) == (at, 42)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": True}, "limit"),
        ({"direction": "inbound"}, "direction"),
        ({"type": "gif"}, "type"),
    ],
)
def test_out_of_range_queries_are_invalid_payload(fields: dict[str, Any], field: str) -> None:
    """A limit outside 1–200, an unknown direction or type is refused, naming the field."""
    with pytest.raises(InvalidPayload) as caught:
        MessageQuery(**fields)
    assert caught.value.details == {"field": field}
    assert MessageQuery(limit=200).limit == 200 and MessageQuery().limit == 50


@pytest.mark.parametrize(
    ("jid", "digits"),
    [
        ("200000000000002@lid", "200000000000002"),
        ("200000000000002:3@lid", "200000000000002"),
        ("200000000000002@LID", "200000000000002"),
        ("6281234567890@s.whatsapp.net", None),
        ("120363025246125486@g.us", None),
        ("abc@lid", None),
        ("200000000000002", None),
    ],
)
def test_lid_of_reads_the_digits_of_a_lid_jid(jid: str, digits: str | None) -> None:
    """lid_of answers the digits of a …@lid JID (device dropped) and None for anything else."""
    assert lid_of(jid) == digits
