"""The agent runtime on the real database and the simulated network."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.errors import RateLimited, SessionNotReady
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor, record_only
from gatewayd.nursery.bus import BusEvent, EventBus
from gatewayd.nursery.commands import Outgoing
from gatewayd.nursery.handle import AgentHandle
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store.db import Database
from gatewayd.store.messages import StoredInbound
from gatewayd.whatsapp.port import InboundMessage
from gatewayd.whatsapp.sim import SimulatedWhatsApp

CUSTOMER = "6281111111111"


@attrs.define
class World:
    db: Database
    sim: SimulatedWhatsApp
    metrics: Metrics
    bus: EventBus
    config: Config
    nursery: trio.Nursery
    sup: AgentSupervisor | None = None
    cancel: trio.CancelScope | None = None

    async def start_supervisor(
        self, forward: Any = record_only, *, restore: bool = True
    ) -> AgentSupervisor:
        sup = AgentSupervisor(
            db=self.db,
            backend=self.sim,
            metrics=self.metrics,
            bus=self.bus,
            config=lambda: self.config,
            forward=forward,
        )
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await sup.run(restore=restore, task_status=task_status)

        await self.nursery.start(run)
        self.sup, self.cancel = sup, scope
        return sup

    async def stop_supervisor(self) -> None:
        assert self.cancel is not None and self.sup is not None
        handles = self.sup.handles()
        self.cancel.cancel()
        for handle in handles:
            await handle.done.wait()
        await self.sup.finished.wait()  # the shutdown status write included

    async def new_agent(self, agent_id: str) -> None:
        await agents_store.create_agent(
            self.db, agent_id=agent_id, name=agent_id, user_id="u1", api_key="k"
        )

    async def paired_agent(self, agent_id: str, phone: str) -> AgentHandle:
        """Create, start, scan the QR, and wait until connected."""
        assert self.sup is not None
        await self.new_agent(agent_id)
        with self.bus.subscribe(agent_id) as events:
            handle = await self.sup.start(agent_id)
            await wait_for(events, lambda e: e.kind == "qr")
            self.sim.scan(agent_id, phone)
            await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
        return handle


async def wait_for(
    sub: Any, predicate: Callable[[BusEvent], bool], timeout: float = 30
) -> BusEvent:
    # Under autojump_clock a deadline would fire while a database thread runs (the
    # clock jumps whenever every task waits), so virtual-time tests wait unbounded and
    # rely on pytest's faulthandler_timeout for hangs.
    if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        timeout = float("inf")
    with trio.fail_after(timeout):
        async for event in sub:
            if predicate(event):
                return event
    raise AssertionError("subscription ended")


@pytest.fixture
async def world(database: Database, nursery: trio.Nursery) -> AsyncIterator[World]:
    config = Config.from_mapping({"agents": {"restart_initial": 0.05, "restart_max": 0.5}})
    yield World(database, SimulatedWhatsApp(), Metrics(), EventBus(), config, nursery)


async def test_scanning_the_qr_connects_and_persists(world: World) -> None:
    """Pairing by scan stores the device and the connected status with its timestamp."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None
    assert record.status == "connected"
    assert record.last_connected_at is not None
    assert record.device_jid is not None and record.device_jid.startswith("628123450001")
    assert record.phone_number == "628123450001"
    assert handle.connected and handle.qr.latest is None  # the QR is gone once paired


async def test_supervisor_restart_restores_connected_agents(world: World) -> None:
    """Stopping and starting the whole supervisor reconnects every paired agent."""
    await world.start_supervisor()
    await world.paired_agent("bot-a", "628123450001")
    await world.paired_agent("bot-b", "628123450002")
    await world.stop_supervisor()
    for agent_id in ("bot-a", "bot-b"):
        record = await agents_store.get_agent(world.db, agent_id)
        assert record is not None and record.status == "disconnected"
        assert record.status_reason == "shutdown" and record.last_disconnected_at is not None
    with world.bus.subscribe() as events:
        sup = await world.start_supervisor()
        connected: set[str] = set()
        while connected != {"bot-a", "bot-b"}:
            e = await wait_for(
                events, lambda e: e.kind == "status" and e.data["status"] == "connected"
            )
            connected.add(e.agent_id)
    assert all(h.connected for h in sup.handles())
    sent = await sup.send("bot-b", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="after restart"))
    assert world.sim.sent("bot-b")[-1].message_id == sent.message_id


async def test_a_crashing_tree_restarts_while_another_agent_keeps_sending(world: World) -> None:
    """An exception in one agent's tree restarts only that agent, counted, with backoff."""
    crashes = 0

    async def crashing_forward(handle: AgentHandle, stored: StoredInbound) -> Any:
        nonlocal crashes
        if handle.agent_id == "fragile" and crashes < 2:
            crashes += 1
            return object()  # a forwarder bug: neither an outcome nor a reply
        return "recorded"

    sup = await world.start_supervisor(forward=crashing_forward)
    fragile = await world.paired_agent("fragile", "628123450001")
    await world.paired_agent("steady", "628123450002")
    with world.bus.subscribe("fragile") as fragile_events:
        world.sim.inject_text("fragile", CUSTOMER, "hello")
        sent = []
        for i in range(5):
            sent.append(
                await sup.send("steady", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text=f"m{i}"))
            )
        # The persisted message is re-handed after each restart until it is handled.
        await wait_for(fragile_events, lambda e: e.kind == "handled")
    assert crashes == 2 and fragile.restarts == 2
    restarts = world.metrics.registry.get_sample_value(
        "gatewayd_agent_restarts_total", {"agent": "fragile"}
    )
    assert restarts == 2
    assert (
        world.metrics.registry.get_sample_value(
            "gatewayd_agent_restarts_total", {"agent": "steady"}
        )
        is None
    )
    assert [r.text for r in world.sim.sent("steady")] == [f"m{i}" for i in range(5)]
    assert fragile.connected  # reconnected after the restarts
    assert sup.get("steady") is not None and sup.get("steady").restarts == 0  # type: ignore[union-attr]


async def test_a_message_the_forwarder_chokes_on_is_quarantined_and_the_agent_moves_on(
    world: World,
) -> None:
    """A forwarder exception quarantines that message with its reason; no restart, next one handled."""

    async def choking_forward(handle: AgentHandle, stored: StoredInbound) -> str:
        if stored.message.text == "poison":
            raise ValueError("cannot handle this one")
        return "recorded"

    await world.start_supervisor(forward=choking_forward)
    agent = await world.paired_agent("picky", "628123450003")
    with world.bus.subscribe("picky") as events:
        world.sim.inject_text("picky", CUSTOMER, "poison")
        world.sim.inject_text("picky", CUSTOMER, "fine")
        first = await wait_for(events, lambda e: e.kind == "handled")
        second = await wait_for(events, lambda e: e.kind == "handled")
    assert first.data["outcome"] == "quarantined:ValueError while forwarding"
    assert second.data["outcome"] == "recorded"
    assert agent.restarts == 0

    def rows(conn: Any) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT text, status, outcome, error FROM messages WHERE direction = 'inbound' ORDER BY id"
        ).fetchall()

    assert await world.db.run(rows) == [
        ("poison", "quarantined", "quarantined:ValueError while forwarding",
         "ValueError while forwarding"),
        ("fine", "received", "recorded", None),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "status", "reason"),
    [
        ("log_out", "logged_out", "logged_out:logged_out"),
        ("replace_stream", "replaced", "stream_replaced"),
        ("outdated", "outdated", "client_outdated"),
        ("ban", "banned", "temporary_ban:"),
    ],
)
async def test_terminal_events_stop_reconnects(
    world: World, autojump_clock: trio.testing.MockClock, action: str, status: str, reason: str
) -> None:
    """Logged out, stream replaced, outdated and banned record a status that says so, and never
    reconnect before their time (a ban of an hour: not within ten minutes)."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    device = handle.record.device_jid
    assert device is not None
    attempts_before = len(world.sim.connect_attempts[device])
    ended_at = trio.current_time()
    with world.bus.subscribe("bot-a") as events:
        if action == "ban":
            world.sim.ban("bot-a", 3600)
        else:
            getattr(world.sim, action)("bot-a")
        event = await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == status)
    assert event.data["reason"].startswith(reason)
    await trio.sleep(600)  # ten virtual minutes: a blind reconnect would have happened
    later = world.sim.connect_attempts[device][attempts_before:]
    if action == "ban":  # resumed only after the ban's expiry (virtual times)
        assert all(t >= ended_at + 3600 for t in later), later
    else:
        assert later == []
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None
    if action == "ban" and later:
        pass  # the virtual clock passed the expiry while a database thread ran: resuming
    else:
        assert record.status == status and (record.status_reason or "").startswith(reason)
    if action == "log_out":
        # The device data is gone: forgotten by the client loop once the connection ended,
        # beside the status the event handler records. Virtual minutes may pass while a
        # database thread runs, so this waits for store calls, not for time.
        for _ in range(500):
            record = await agents_store.get_agent(world.db, "bot-a")
            assert record is not None
            if record.device_jid is None:
                break
        assert record.device_jid is None
        assert device not in await world.sim.known_devices()


async def test_a_temporary_ban_resumes_after_its_expiry(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """Banned for 300 s: status banned, no connect attempt before the expiry, connected after."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    device = handle.record.device_jid
    assert device is not None
    with world.bus.subscribe("bot-a") as events:
        banned_at = trio.current_time()
        world.sim.ban("bot-a", 300)
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "banned")
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    attempts = [t for t in world.sim.connect_attempts[device] if t > banned_at]
    assert attempts and min(attempts) >= banned_at + 300
    assert handle.connected


async def test_client_outdated_raises_one_operator_alert(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """Every agent refused as outdated: one alert (metric, health degraded), agents stay down."""
    sup = await world.start_supervisor()
    await world.paired_agent("bot-a", "628123450001")
    await world.paired_agent("bot-b", "628123450002")
    with world.bus.subscribe() as events:
        world.sim.outdated("bot-a")
        world.sim.outdated("bot-b")
        seen: set[str] = set()
        while seen != {"bot-a", "bot-b"}:
            e = await wait_for(
                events, lambda e: e.kind == "status" and e.data["status"] == "outdated"
            )
            seen.add(e.agent_id)
    assert world.metrics.registry.get_sample_value("gatewayd_whatsapp_client_outdated") == 1
    health = sup.health()
    assert health["status"] == "degraded" and health["alert"] == "client_outdated"
    assert sup.counts_by_status() == {"outdated": 2}


async def test_lost_connection_reconnects_with_growing_backoff(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """After a drop, failed connects are retried after 1, 2, 4, 8, 16 s (jitter within [d/2, d]), then it connects."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    device = handle.record.device_jid
    assert device is not None
    world.sim.refuse_connections(device, 4)
    with world.bus.subscribe("bot-a") as events:
        dropped_at = trio.current_time()
        world.sim.drop("bot-a")
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "disconnected")
        await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    attempts = [dropped_at, *world.sim.connect_attempts[device][-5:]]
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    # A healthy connection broke, so the schedule starts over at 1 s: 1, 2, 4, 8, 16.
    assert len(gaps) == 5
    for gap, base in zip(gaps, [1.0, 2.0, 4.0, 8.0, 16.0], strict=False):
        assert base / 2 <= gap <= base, (gaps, base)
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None and record.status == "connected"


async def test_inbound_is_persisted_before_it_is_published(world: World) -> None:
    """The bus announces a message only once its row exists in the database."""
    seen_rows: list[bool] = []

    await world.start_supervisor()
    await world.paired_agent("bot-a", "628123450001")
    with world.bus.subscribe("bot-a") as events:
        sent = world.sim.inject_text("bot-a", CUSTOMER, "persist me")
        event = await wait_for(events, lambda e: e.kind == "message")
        row = await world.db.run(
            lambda conn: conn.execute(
                "SELECT wa_message_id, text, direction FROM messages WHERE id = %s",
                (event.data["rowId"],),
            ).fetchone()
        )
        seen_rows.append(row is not None)
    assert seen_rows == [True]
    assert row == (sent.id, "persist me", "inbound")


async def test_unhandled_inbound_is_handed_again_after_a_restart(world: World) -> None:
    """Messages persisted but never handled (a crash between) are forwarded at the next start;
    stale ones are not, and are closed as expired instead of staying open for ever."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    await world.stop_supervisor()
    fresh = InboundMessage(
        id="3EB0FRESH",
        chat=f"{CUSTOMER}@s.whatsapp.net",
        sender=f"{CUSTOMER}@s.whatsapp.net",
        timestamp_ms=1_700_000_000_000,
        text="fresh",
    )
    stale = attrs.evolve(fresh, id="3EB0STALE", text="stale")
    fresh_row = await messages_store.insert_inbound(world.db, handle.id, fresh)
    stale_row = await messages_store.insert_inbound(world.db, handle.id, stale)
    await world.db.run(
        lambda conn: (
            conn.execute(
                "UPDATE messages SET created_at = now() - interval '2 hours' WHERE id = %s",
                (stale_row,),
            )
            and None
        )
    )
    forwarded: list[InboundMessage] = []

    async def forward(h: AgentHandle, stored: StoredInbound) -> str:
        forwarded.append(stored.message)
        return "forwarded"

    with world.bus.subscribe("bot-a") as events:
        await world.start_supervisor(forward=forward)
        await wait_for(events, lambda e: e.kind == "handled")
    assert forwarded == [fresh]  # exactly as it arrived, mentions and all
    outcome = await world.db.run(
        lambda conn: conn.execute(
            "SELECT id, outcome, handled_at IS NOT NULL FROM messages WHERE id IN (%s, %s) ORDER BY id",
            (fresh_row, stale_row),
        ).fetchall()
    )
    assert outcome == [(fresh_row, "forwarded", True), (stale_row, "expired", True)]


async def test_the_501st_queued_send_is_refused_at_once(world: World) -> None:
    """With 500 sends waiting, the next one is RateLimited without waiting; sends need a connection."""
    world.config = attrs.evolve(
        world.config,
        agents=attrs.evolve(world.config.agents, send_rate_per_minute=0.001, send_burst=1),
    )
    sup = await world.start_supervisor()
    await world.new_agent("idle")
    await sup.start("idle")
    with pytest.raises(SessionNotReady):
        await sup.send("idle", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="x"))
    await world.paired_agent("bot-a", "628123450001")
    first = await sup.send(
        "bot-a", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="first")
    )  # the burst token
    assert first.message_id
    handle = sup.get("bot-a")
    assert handle is not None
    async with trio.open_nursery() as nursery:
        for i in range(500):
            message = Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text=f"q{i}")
            nursery.start_soon(sup.send, "bot-a", message)
        with trio.fail_after(60):
            while handle.queue_depth() < 500:  # each send writes its row, then queues
                await trio.sleep(0.01)
        with pytest.raises(RateLimited):
            await sup.send("bot-a", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="one too many"))
        nursery.cancel_scope.cancel()


async def test_sends_are_recorded_with_their_trace_id(world: World) -> None:
    """A send answers with WhatsApp's id and leaves an outbound row carrying the caller's traceId."""
    sup = await world.start_supervisor()
    await world.paired_agent("bot-a", "628123450001")
    sent = await sup.send(
        "bot-a", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="hi"), trace_id="trace-42"
    )
    row = await world.db.run(
        lambda conn: conn.execute(
            "SELECT wa_message_id, text, trace_id, status FROM messages WHERE id = %s",
            (sent.row_id,),
        ).fetchone()
    )
    assert row == (sent.message_id, "hi", "trace-42", "sent")
    assert (
        world.metrics.registry.get_sample_value(
            "whatsapp_messages_sent_total", {"agentId": "bot-a"}
        )
        == 1
    )


async def test_pairing_qr_rotates_on_schedule_then_fails(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """An unscanned agent shows QRs at 0, 60, 80, 100, 120, 140 s and is auth_failed at 160 s."""
    sup = await world.start_supervisor()
    await world.new_agent("bot-a")
    times: list[float] = []
    with world.bus.subscribe("bot-a") as events:
        start = trio.current_time()
        handle = await sup.start("bot-a")
        while True:
            event = await wait_for(events, lambda e: e.kind in ("qr", "status"), timeout=600)
            if event.kind == "qr":
                times.append(trio.current_time() - start)
                assert (
                    handle.qr.latest is not None
                    and handle.qr.latest.payload == event.data["payload"]
                )
            elif event.data["status"] == "auth_failed":
                failed_at = trio.current_time() - start
                break
    assert times == [0, 60, 80, 100, 120, 140]
    assert failed_at == 160
    assert handle.qr.latest is None
    record = await agents_store.get_agent(world.db, "bot-a")
    assert (
        record is not None
        and record.status == "auth_failed"
        and record.status_reason == "pairing_failed:timeout"
    )


async def test_a_thousand_simulated_agents_start_in_one_process(world: World) -> None:
    """1,000 agents pair and connect in one process (timing is measured in bench/, not here)."""
    sup = await world.start_supervisor()
    ids = [f"agent-{i:04d}" for i in range(1000)]
    await world.db.run(
        lambda conn: conn.cursor().executemany(
            "INSERT INTO agents (agent_id, name, user_id, api_key) VALUES (%s, %s, 'u', 'k')",
            [(i, i) for i in ids],
        )
    )
    with world.bus.subscribe(buffer=10_000) as events:
        for agent_id in ids:
            await sup.start(agent_id)
        connected: set[str] = set()
        with trio.fail_after(300):
            async for event in events:
                if event.kind == "qr":  # a phone scans each QR as it shows
                    world.sim.scan(event.agent_id, "62812" + event.agent_id[-4:].rjust(7, "0"))
                elif event.kind == "status" and event.data["status"] == "connected":
                    connected.add(event.agent_id)
                    if len(connected) == 1000:
                        break
    assert sup.counts_by_status() == {"connected": 1000}
    count = await world.db.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM agents WHERE status = 'connected'"
        ).fetchone()
    )
    assert count == (1000,)


async def test_every_line_of_an_agent_tree_carries_its_agent_id(world: World) -> None:
    """Lines logged inside an agent's tree carry agentId, and not the traceId of the request that started it."""
    import io
    import json

    import structlog

    from gatewayd.log import configure_logging

    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    try:
        sup = await world.start_supervisor()
        with structlog.contextvars.bound_contextvars(traceId="the-creating-request"):
            await world.paired_agent("bot-log", "628123450077")
        world.sim.inject_text("bot-log", CUSTOMER, "hello")
        await sup.send(
            "bot-log", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="out"), trace_id="send-trace"
        )
        with world.bus.subscribe("bot-log") as events:
            world.sim.drop("bot-log")
            await wait_for(events, lambda e: e.kind == "status" and e.data["status"] == "connected")
    finally:
        configure_logging("info", "json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    tree = [
        line
        for line in lines
        if str(line["event"]).startswith(("gatewayd.agent.", "gatewayd.send.", "gatewayd.inbound."))
    ]
    assert {line["event"] for line in tree} >= {
        "gatewayd.agent.started",
        "gatewayd.agent.status",
        "gatewayd.send.sent",
        "gatewayd.agent.reconnecting",
    }
    assert all(line.get("agentId") == "bot-log" for line in tree), tree
    assert not any(line.get("traceId") == "the-creating-request" for line in tree)
    sent = [line for line in tree if line["event"] == "gatewayd.send.sent"]
    assert sent[0]["traceId"] == "send-trace"


async def test_logging_out_an_offline_agent_reaches_whatsapp_briefly(world: World) -> None:
    """An agent that is not connected is connected briefly to be logged out (the phone stops
    listing it); the messages waiting for it are all stored first; when WhatsApp cannot be
    reached, the logout says so."""
    sup = await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    device = handle.record.device_jid
    assert device is not None
    await sup.stop("bot-a")
    attempts = len(world.sim.connect_attempts[device])
    waiting = [
        world.sim.inject_text("bot-a", CUSTOMER, f"while you were away {n}").id for n in range(20)
    ]
    assert await sup.logout("bot-a") is True
    assert len(world.sim.connect_attempts[device]) == attempts + 1
    assert world.sim.account("bot-a") is None  # the network unlinked it
    stored = await world.db.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM messages WHERE wa_message_id = ANY(%s)", (waiting,)
        ).fetchone()
    )
    assert stored == (len(waiting),)  # the whole backlog, not only what came before the logout

    other = await world.paired_agent("bot-b", "628123450002")
    other_device = other.record.device_jid
    assert other_device is not None
    await sup.stop("bot-b")
    world.sim.refuse_connections(other_device, 100)
    assert await sup.delete("bot-b") is False  # WhatsApp could not be told
