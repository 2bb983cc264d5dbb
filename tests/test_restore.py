"""Staggered restore and bounded stops, on the real database and the simulated network.

The simulated network's ``stall`` stands for a call stuck in the real library (a connect that
reports nothing yet, a send whose Go call never returns): it hangs until ``unstall``, and
cancellation does not reach it, as it does not reach a Go call in a worker thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import pytest
import structlog
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.errors import AgentStopped, SendTimeout
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import RESTORE_PROGRESS_MIN
from gatewayd.nursery.bus import BusEvent, EventBus
from gatewayd.nursery.commands import Outgoing
from gatewayd.store import agents as agents_store
from gatewayd.store.db import Database
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.test_agents import World, wait_for

CUSTOMER = "6281111111111@s.whatsapp.net"


@pytest.fixture
async def world(database: Database, nursery: trio.Nursery) -> AsyncIterator[World]:
    config = Config.from_mapping(
        {
            "agents": {
                "restart_initial": 0.05,
                "restart_max": 0.5,
                "restore_concurrency": 3,
                "command_timeout": 30.0,
            }
        }
    )
    yield World(database, SimulatedWhatsApp(), Metrics(), EventBus(), config, nursery)


async def _paired_and_stopped(world: World, count: int) -> list[str]:
    """``count`` agents paired once, then the supervisor stopped (they are restorable)."""
    await world.start_supervisor()
    ids = [f"bot-{i:02d}" for i in range(count)]
    for i, agent_id in enumerate(ids):
        await world.paired_agent(agent_id, f"6281234500{i:02d}")
    await world.stop_supervisor()
    return ids


async def _until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.01)


async def test_restore_connects_at_most_restore_concurrency_agents_at_once(world: World) -> None:
    """With every connect hanging, restore starts 3 agents, and one more each time one connects."""
    ids = await _paired_and_stopped(world, 8)
    for agent_id in ids:
        world.sim.stall(agent_id)
    with world.bus.subscribe() as events:
        sup = await world.start_supervisor()
        # The first wave is started before the supervisor reports started; nothing more.
        first = [h.agent_id for h in sup.handles()]
        assert first == ids[:3]
        await _until(lambda: sum(world.sim.stalled_calls(a) for a in ids) == 3)
        assert len(sup.handles()) == 3
        for step, agent_id in enumerate(ids):
            world.sim.unstall(agent_id)

            def connected(e: BusEvent, agent_id: str = agent_id) -> bool:
                return e.agent_id == agent_id and e.data.get("status") == "connected"

            await wait_for(events, connected)
            started = min(3 + step + 1, len(ids))

            def all_started(started: int = started) -> bool:
                return len(sup.handles()) == started

            await _until(all_started)
            await trio.testing.wait_all_tasks_blocked()
            # One connect ended, so exactly one more agent started connecting.
            assert [h.agent_id for h in sup.handles()] == ids[:started]
    assert all(h.connected for h in sup.handles())


async def test_an_agent_stopped_while_waiting_for_its_restore_turn_is_not_started(
    world: World,
) -> None:
    """An agent the operator stops before its restore turn stays stopped."""
    ids = await _paired_and_stopped(world, 4)
    for agent_id in ids:
        world.sim.stall(agent_id)
    with world.bus.subscribe() as events:
        sup = await world.start_supervisor()
        assert [h.agent_id for h in sup.handles()] == ids[:3]
        assert await sup.stop(ids[3]) is True
        world.sim.unstall(ids[0])
        await wait_for(events, lambda e: e.agent_id == ids[0] and e.kind == "status")
    # The freed slot went to the stopped agent's turn, which was skipped.
    await trio.testing.wait_all_tasks_blocked()
    assert [h.agent_id for h in sup.handles()] == ids[:3]
    record = await agents_store.get_agent(world.db, ids[3])
    assert record is not None and record.status == "stopped"
    for agent_id in ids:
        world.sim.unstall(agent_id)


async def test_stop_returns_within_command_timeout_when_a_send_is_stuck(world: World) -> None:
    """A stop whose agent is stuck in a send returns after command_timeout and reports it stuck."""
    # Real time, 1 s: under the autojump clock, the database threads of the stop itself would
    # let the clock jump past any deadline meant to catch an unbounded wait.
    world.config = attrs.evolve(
        world.config, agents=attrs.evolve(world.config.agents, command_timeout=1.0)
    )
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    sup = world.sup
    assert sup is not None
    outcomes: list[BaseException] = []

    async def send() -> None:
        try:
            await sup.send("bot-a", Outgoing(to=CUSTOMER, text="into the void"))
        except (SendTimeout, AgentStopped) as exc:
            outcomes.append(exc)

    world.sim.stall("bot-a")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await _until(lambda: world.sim.stalled_calls("bot-a") == 1)
            with world.bus.subscribe("bot-a") as events:
                with trio.fail_after(20):  # an unbounded stop waits for the stall forever
                    assert await sup.stop("bot-a") is False
                event = await wait_for(events, lambda e: e.kind == "status")
        assert event.data == {"status": "stopped", "reason": "stuck"}
        assert len(outcomes) == 1  # the caller was answered, not left hanging
        assert sup.get("bot-a") is None and sup.stuck_agents() == ["bot-a"]
        record = await agents_store.get_agent(world.db, "bot-a")
        assert record is not None and (record.status, record.status_reason) == ("stopped", "stuck")
        assert (handle.status, handle.status_reason) == ("stopped", "stuck")
    finally:
        world.sim.unstall("bot-a")  # the call comes back
    # The tree ends, and the stop is recorded as asked.
    with trio.fail_after(20):
        await handle.done.wait()
    await _until(lambda: not sup.stuck_agents())

    async def recorded() -> tuple[str, str | None]:
        record = await agents_store.get_agent(world.db, "bot-a")
        assert record is not None
        return record.status, record.status_reason

    with trio.fail_after(20):
        while await recorded() != ("stopped", None):
            await trio.sleep(0.01)


async def test_stop_of_a_healthy_agent_waits_for_its_tree_and_reports_it_ended(
    world: World,
) -> None:
    """A stop with nothing stuck waits for the tree, records the status and returns True."""
    await world.start_supervisor()
    handle = await world.paired_agent("bot-a", "628123450001")
    sup = world.sup
    assert sup is not None
    assert await sup.stop("bot-a", reason="operator") is True
    assert handle.done.is_set() and sup.stuck_agents() == []
    record = await agents_store.get_agent(world.db, "bot-a")
    assert record is not None and (record.status, record.status_reason) == ("stopped", "operator")


async def test_a_long_restore_reports_its_progress(world: World) -> None:
    """Over RESTORE_PROGRESS_MIN agents, restore says how far it is (about ten lines in all,
    the last one the total), so a long start is not silent."""
    ids = await _paired_and_stopped(world, RESTORE_PROGRESS_MIN + 5)
    with structlog.testing.capture_logs() as logs:
        sup = await world.start_supervisor()
        await _until(lambda: len(sup.handles()) == len(ids))
        await _until(lambda: any(e["event"] == "gatewayd.agents.restore_done" for e in logs))
    progress = [e["progress"] for e in logs if e["event"] == "gatewayd.agents.restoring"]
    total = len(ids)
    assert progress == [f"{RESTORE_PROGRESS_MIN}/{total}", f"{total}/{total}"]
