"""Reads of sessions from the runtime (gatewayd/usecases/core.py ``AgentRows``) and the
overview's short cache (gatewayd/usecases/analytics.py ``OverviewCache``), on the real
database and the simulated network: every change is seen by the next read, one user never
reads another's session through them, and both stay bounded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, date, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.metrics import Metrics
from gatewayd.nursery.bus import EventBus
from gatewayd.store import agents as agents_store
from gatewayd.store import keys as keys_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database
from gatewayd.usecases.analytics import Overview, OverviewCache, Tally
from gatewayd.usecases.core import AgentRows, seen
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.gateway_fixtures import Running, make_config
from tests.test_agents import World, wait_for
from tests.test_analytics_api import insert_message
from tests.test_api_v1 import bearer, new_user, scan, wait_connected

PHONE = "6281111111111"


@pytest.fixture
async def gateway_config(pg_dsn: str) -> Config:
    """No AI forwarding, and room for many requests per user."""
    return make_config(pg_dsn, forwarding={"enabled": False}, auth={"requests_per_minute": 10_000})


@pytest.fixture
async def world(database: Database, nursery: trio.Nursery) -> AsyncIterator[World]:
    config = Config.from_mapping({"agents": {"restart_initial": 0.05, "restart_max": 0.5}})
    yield World(database, SimulatedWhatsApp(), Metrics(), EventBus(), config, nursery)


async def _sql(db: Database, query: str, *args: Any) -> None:
    def work(conn: Connection) -> None:
        conn.execute(query.encode(), args)

    await db.run(work)


async def _session(running: Running, token: str, session_id: str) -> dict[str, Any]:
    got = await running.client.get(f"/api/v1/sessions/{session_id}", headers=bearer(token))
    assert got.status_code == 200, got.text
    return dict(got.json()["data"])


async def _listed(running: Running, token: str) -> list[dict[str, Any]]:
    got = await running.client.get("/api/v1/sessions", headers=bearer(token))
    assert got.status_code == 200, got.text
    return list(got.json()["data"])


async def _wait_detail(running: Running, token: str, session_id: str, status: str) -> None:
    with trio.fail_after(10):
        while (await _session(running, token, session_id))["status_detail"] != status:
            await trio.sleep(0.02)


# ------------------------------------------------------------------ over HTTP


async def test_session_reads_see_every_change_at_once(running: Running) -> None:
    """A running session is read from memory (a change made behind the daemon's back is not
    seen) until its runtime changes; then, and after every change made through the API
    (pairing, a rename, the phone unlinking it, a new session, a delete), the next read of it
    and of the list answers the change."""
    db = running.gateway.db
    _, _, token = await new_user(running.client)
    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": "Sales"}, headers=bearer(token)
    )
    session_id = made.json()["data"]["session_id"]
    started = await running.client.post(
        f"/api/v1/sessions/{session_id}/start", headers=bearer(token)
    )
    assert started.json()["data"]["status"] == "qr"
    await _wait_detail(running, token, session_id, "awaiting_qr")
    assert [s["session_name"] for s in await _listed(running, token)] == ["Sales"]

    await _sql(
        db, "UPDATE agents SET name = 'behind its back' WHERE id = %s", uuid.UUID(session_id)
    )
    assert (await _session(running, token, session_id))["session_name"] == "Sales"
    assert [s["session_name"] for s in await _listed(running, token)] == ["Sales"]

    await scan(running.client, session_id, PHONE)
    connected = await wait_connected(running.client, session_id, bearer(token))
    assert connected["phone_number"] == PHONE and connected["last_connected"] is not None
    assert connected["session_name"] == "behind its back"  # read again: the runtime changed
    [listed] = await _listed(running, token)
    assert (listed["status"], listed["phone_number"]) == ("connected", PHONE)
    assert listed["last_connected"] == connected["last_connected"]

    renamed = await running.client.put(
        f"/api/v1/sessions/{session_id}", json={"session_name": "Support"}, headers=bearer(token)
    )
    assert renamed.status_code == 200, renamed.text
    assert (await _session(running, token, session_id))["session_name"] == "Support"
    assert [s["session_name"] for s in await _listed(running, token)] == ["Support"]

    assert (await running.client.post(f"/_sim/agents/{session_id}/logout")).status_code == 200
    await _wait_detail(running, token, session_id, "logged_out")
    assert (await _session(running, token, session_id))["phone_number"] is None
    [listed] = await _listed(running, token)
    assert (listed["status_detail"], listed["phone_number"]) == ("logged_out", None)

    other = await running.client.post(
        "/api/v1/sessions", json={"session_name": "Other"}, headers=bearer(token)
    )
    assert [s["session_name"] for s in await _listed(running, token)] == ["Other", "Support"]
    gone = await running.client.delete(f"/api/v1/sessions/{session_id}", headers=bearer(token))
    assert gone.status_code == 200
    missing = await running.client.get(f"/api/v1/sessions/{session_id}", headers=bearer(token))
    assert missing.status_code == 404
    assert [s["session_id"] for s in await _listed(running, token)] == [
        other.json()["data"]["session_id"]
    ]


async def test_another_user_never_reads_a_cached_session(running: Running) -> None:
    """A session its owner has just read (so it is held in memory) is, for anyone else, exactly
    a missing session on every read route; their list and overview leave it out."""
    _, _, owner = await new_user(running.client)
    _, _, intruder = await new_user(running.client)
    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": "Mine"}, headers=bearer(owner)
    )
    session_id = made.json()["data"]["session_id"]
    await running.client.post(f"/api/v1/sessions/{session_id}/start", headers=bearer(owner))
    await scan(running.client, session_id, PHONE)
    await wait_connected(running.client, session_id, bearer(owner))
    assert len(await _listed(running, owner)) == 1
    assert running.gateway.services.records.get(
        session_id, running.gateway.agents.get(session_id)
    ), "the owner's reads keep the row in memory"
    paths = ["", "/qr", "/messages"]
    for target in (session_id, str(uuid.uuid4())):
        answers = []
        for path in paths:
            got = await running.client.get(
                f"/api/v1/sessions/{target}{path}", headers=bearer(intruder)
            )
            answers.append((got.status_code, got.json()["error"]["code"]))
        analytics = await running.client.get(
            f"/api/v1/analytics/sessions/{target}", headers=bearer(intruder)
        )
        answers.append((analytics.status_code, analytics.json()["error"]["code"]))
        assert answers == [(404, "SESSION_NOT_FOUND")] * 4, target
    assert await _listed(running, intruder) == []
    overview = await running.client.get("/api/v1/analytics/overview", headers=bearer(intruder))
    assert overview.json()["data"]["total_sessions"] == 0
    assert (await _session(running, owner, session_id))["session_name"] == "Mine"


async def test_overview_sessions_and_active_count_are_as_of_the_request(
    running: Running,
) -> None:
    """Within the figures' short life, a new session, a connection and a rename are in the
    next overview; its message counts are the user's alone."""
    _, _, token = await new_user(running.client)
    _, _, other = await new_user(running.client)

    async def overview(who: str = token) -> dict[str, Any]:
        got = await running.client.get("/api/v1/analytics/overview", headers=bearer(who))
        assert got.status_code == 200, got.text
        return dict(got.json()["data"])

    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": "One"}, headers=bearer(token)
    )
    session_id = made.json()["data"]["session_id"]
    await insert_message(running.gateway.db, session_id, datetime.now(UTC))
    first = await overview()
    assert (first["total_sessions"], first["active_sessions"]) == (1, 0)
    assert first["total_messages_today"] == 1
    await running.client.post(f"/api/v1/sessions/{session_id}/start", headers=bearer(token))
    await scan(running.client, session_id, PHONE)
    await wait_connected(running.client, session_id, bearer(token))
    assert (await overview())["active_sessions"] == 1
    await running.client.put(
        f"/api/v1/sessions/{session_id}", json={"session_name": "Renamed"}, headers=bearer(token)
    )
    [top] = (await overview())["top_performing_sessions"]
    assert top["session_name"] == "Renamed"
    await running.client.post(
        "/api/v1/sessions", json={"session_name": "Two"}, headers=bearer(token)
    )
    assert (await overview())["total_sessions"] == 2
    theirs = await overview(other)
    assert (theirs["total_sessions"], theirs["total_messages_today"]) == (0, 0)


async def test_agents_api_reads_follow_status_and_key_changes(running: Running) -> None:
    """GET /sessions/{agentId} answers a status change at once (the row with it), and a
    re-synced key is the one checked by the very next send."""
    created = await running.client.post(
        "/sessions",
        json={"userId": "u1", "agentId": "bot", "agentName": "Bot", "apikey": "key-1"},
    )
    assert created.status_code == 201, created.text
    await scan(running.client, "bot", PHONE)
    with trio.fail_after(10):
        while (await running.client.get("/sessions/bot")).json()["data"]["status"] != "connected":
            await trio.sleep(0.02)
    data = (await running.client.get("/sessions/bot")).json()["data"]
    assert (data["persistedStatus"], data["phoneNumber"]) == ("connected", PHONE)
    assert data["lastDisconnectedAt"] is None
    body = {"to": "6289999999999", "message": "hi"}
    key1 = {"Authorization": "Bearer key-1"}
    assert (
        await running.client.post("/agents/bot/messages", json=body, headers=key1)
    ).status_code == 200

    handle = running.gateway.agents.get("bot")
    assert handle is not None
    assert (await running.client.post("/_sim/agents/bot/drop")).status_code == 200
    with trio.fail_after(10):
        while handle.status == "connected":
            await trio.sleep(0.005)
    data = (await running.client.get("/sessions/bot")).json()["data"]
    assert data["status"] == data["persistedStatus"] == handle.status
    assert data["lastDisconnectedAt"] is not None

    db = running.gateway.db
    await keys_store.add_key(db, "api_keys", "u1", "key-2")
    key2 = {"Authorization": "Bearer key-2"}
    assert (
        await running.client.post("/agents/bot/messages", json=body, headers=key2)
    ).status_code == 401
    with trio.fail_after(10):  # the re-sync runs in the background
        while (record := await agents_store.get_agent(db, "bot")) and record.api_key != "key-2":
            await trio.sleep(0.01)
    refused = await running.client.post("/agents/bot/messages", json=body, headers=key1)
    assert refused.status_code == 401
    passed = await running.client.post("/agents/bot/messages", json=body, headers=key2)
    assert passed.status_code != 401, passed.text


# ------------------------------------------------------------------ the caches themselves


async def _record(db: Database, agent_id: str) -> AgentRecord:
    record = await agents_store.get_agent(db, agent_id)
    assert record is not None
    return record


async def test_a_row_is_answered_while_its_agent_shows_no_change(world: World) -> None:
    """A row read while its agent ran is answered until the agent's status changes, it
    restarts or stops, or the row is forgotten; a row read before a change is never
    answered, nor one read while the agent was not running."""
    sup = await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    rows = AgentRows()
    record = await _record(world.db, "bot-a")
    rows.put(record, seen(handle), rows.epoch)
    assert rows.get("bot-a", sup.get("bot-a")) is record

    was = seen(handle)  # a read begins...
    with world.bus.subscribe("bot-a") as events:
        world.sim.drop("bot-a")  # ...a status change lands meanwhile...
        await wait_for(events, lambda e: e.kind == "status")
    assert rows.get("bot-a", sup.get("bot-a")) is None
    rows.put(await _record(world.db, "bot-a"), was, rows.epoch)  # ...and is not kept
    assert rows.get("bot-a", sup.get("bot-a")) is None

    with world.bus.subscribe("bot-a") as events:
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    fresh = await _record(world.db, "bot-a")
    rows.put(fresh, seen(handle), rows.epoch)
    assert rows.get("bot-a", sup.get("bot-a")) is fresh
    epoch = rows.epoch
    rows.forget(agent_id="bot-a")
    assert rows.get("bot-a", sup.get("bot-a")) is None
    rows.put(fresh, seen(handle), epoch)  # read before the forget: not kept
    assert rows.get("bot-a", sup.get("bot-a")) is None

    rows.put(fresh, seen(handle), rows.epoch)
    restarted = await sup.restart("bot-a")
    assert restarted is not handle and rows.get("bot-a", sup.get("bot-a")) is None
    rows.put(fresh, seen(restarted), rows.epoch)
    await sup.stop("bot-a")
    assert rows.get("bot-a", sup.get("bot-a")) is None
    rows.put(fresh, None, rows.epoch)  # read while not running: never kept
    assert len(rows) == 0


async def test_a_row_is_read_again_after_the_ttl(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """Whatever the runtime shows, a row is answered for ``ttl`` seconds at most (the backstop
    for changes made by another process)."""
    sup = await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    rows = AgentRows(ttl=30)
    record = await _record(world.db, "bot-a")
    rows.put(record, seen(handle), rows.epoch)
    await trio.sleep(29)
    assert rows.get("bot-a", sup.get("bot-a")) is record
    await trio.sleep(1)
    assert rows.get("bot-a", sup.get("bot-a")) is None
    # Lapsed: it may stand in while one request reads it again (gatewayd/usecases/identity.py
    # ``OneRead``), until twice the TTL.
    assert rows.look("bot-a", sup.get("bot-a")) == (record, False)
    await trio.sleep(30)
    assert rows.look("bot-a", sup.get("bot-a")) is None and len(rows) == 0


async def test_a_list_is_kept_only_while_every_session_runs_and_rows_are_bounded(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """A user's list is answered again only when every session in it was running when it was
    read and still shows no change; the rows kept are bounded, least recently used first."""
    sup = await world.start_supervisor()
    handles = [await world.paired_agent(f"bot-{n}", f"62812345000{n}") for n in range(3)]
    records = [await _record(world.db, h.agent_id) for h in handles]
    was = {h.agent_id: seen(h) for h in sup.handles()}
    rows = AgentRows(size=3)
    rows.put_listing("u1", records, was, rows.epoch)
    assert rows.listing("u1", sup) == records
    await trio.sleep(rows.ttl)
    assert rows.listing("u1", sup) is None  # lapsed: it may stand in while read again
    assert rows.look_listing("u1", sup) == (records, False)
    rows.put_listing("u1", records, was, rows.epoch)
    rows.forget(user_id="u1")
    assert rows.listing("u1", sup) is None

    await world.new_agent("stopped")  # one session not running: the list is not kept
    stopped = await _record(world.db, "stopped")
    rows.put_listing("u1", [*records, stopped], was, rows.epoch)
    assert rows.listing("u1", sup) is None

    rows.put_listing("u1", records, was, rows.epoch)
    with world.bus.subscribe("bot-1") as events:
        world.sim.drop("bot-1")
        await wait_for(events, lambda e: e.kind == "status")
    assert rows.listing("u1", sup) is None  # one of them changed

    rows.put_listing("u1", records, was, rows.epoch)  # what was seen before the change
    assert rows.listing("u1", sup) is None
    small = AgentRows(size=2)
    for handle, record in zip(handles, records, strict=True):
        small.put(record, seen(handle), small.epoch)
    assert len(small) == 2
    assert small.get("bot-0", sup.get("bot-0")) is None
    assert small.get("bot-2", sup.get("bot-2")) is records[2]


def _overview(total: int) -> Overview:
    return Overview(
        total_sessions=total,
        active_sessions=0,
        today=0,
        this_week=0,
        this_month=0,
        month=Tally(),
        top=[],
    )


async def test_an_overview_is_kept_briefly_for_the_same_sessions(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """An overview is answered again while its figures are younger than the TTL, for the same
    user, zone and day and the very same session rows only; the cache is bounded."""
    await world.new_agent("bot-a")
    record = await _record(world.db, "bot-a")
    renamed = attrs.evolve(record, name="renamed")  # the session's row changed
    computed: list[Overview] = []

    async def work() -> Overview:
        computed.append(_overview(len(computed)))
        return computed[-1]

    cache = OverviewCache(size=2, ttl=1.0)
    day = date(2026, 1, 5)
    first = await cache.get(("u1", "UTC", day), [record], work)
    await trio.sleep(0.9)
    assert await cache.get(("u1", "UTC", day), [record], work) is first
    for key, rows in [
        (("u2", "UTC", day), [record]),
        (("u1", "Asia/Jakarta", day), [record]),
        (("u1", "UTC", date(2026, 1, 6)), [record]),
        (("u1", "UTC", day), [renamed]),
    ]:
        assert await cache.get(key, rows, work) is computed[-1] is not first
    assert len(computed) == 5 and len(cache) == 2
    kept = await cache.get(("u1", "UTC", day), [renamed], work)
    assert await cache.get(("u1", "UTC", day), [attrs.evolve(renamed)], work) is kept  # equal
    await trio.sleep(1.1)
    assert await cache.get(("u1", "UTC", day), [renamed], work) is not kept  # aged: read anew


async def test_aged_figures_are_read_once_and_never_answered_past_twice_the_ttl(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """When the figures have aged, one request reads them anew; the others meanwhile get the
    previous figures while those are younger than twice the TTL, and wait for the new ones
    after that."""
    await world.new_agent("bot-a")
    records = [await _record(world.db, "bot-a")]
    key = ("u1", "UTC", date(2026, 1, 5))
    cache = OverviewCache(ttl=1.0)
    computed: list[Overview] = []

    async def slow(seconds: float) -> Overview:
        await trio.sleep(seconds)
        computed.append(_overview(len(computed)))
        return computed[-1]

    first = await cache.get(key, records, lambda: slow(0))
    await trio.sleep(1.5)  # aged, younger than twice the TTL
    answers: list[Overview] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(answers, cache.get(key, records, lambda: slow(1))))
        await trio.sleep(0.1)
        assert await cache.get(key, records, lambda: slow(0)) is first  # the previous figures
        await trio.sleep(0.5)  # 2.1 s old now: too old to answer, so wait for the new ones
        assert await cache.get(key, records, lambda: slow(0)) is computed[-1] is not first
    assert answers == [computed[-1]] and len(computed) == 2

    await trio.sleep(2.5)  # long aged: everyone waits for the one read
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lambda: _append(answers, cache.get(key, records, lambda: slow(0.3))))
    assert len(computed) == 3 and answers[1:] == [computed[-1]] * 5


async def _append(answers: list[Overview], pending: Awaitable[Overview]) -> None:
    answers.append(await pending)
