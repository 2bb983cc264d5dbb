"""How much one simulated agent costs: RSS, start/restore time, idle CPU, first sends.

    flock /tmp/bench.lock .venv/bin/python bench/agents.py [--agents 1000] [--idle 5]

Runs the real supervisor on the simulated network against an embedded PostgreSQL in
a temporary directory. Every figure is printed next to a baseline measured in the same run,
so the numbers compare like with like on this machine: zero agents for memory and idle CPU,
an unstaggered restore for the restore.

Restore: the supervisor is stopped and a new one restores every paired agent, first with the
staggered connect policy as configured (``agents.restore_concurrency``, 8 by default: an
agent holds its slot until its first status), then, as the baseline, with every agent
connecting at once. Restore time runs from the new supervisor's start until every agent has
reported ``connected``.

First send after restore: the moment an agent reports ``connected`` (the first moment an API
client can see it ready), one text send is made to it through ``AgentSupervisor.send``, the
agent command path the HTTP send routes reach through gatewayd/usecases/messaging.py; its
wait is the time until the simulated network has the message (the time the network records
for the send), while the other agents are still restoring. Printed: the worst and median
wait, and when the last agent's first send went out, counted from the start of the restore.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import attrs
import psutil
import trio

from gatewayd.config import Config
from gatewayd.log import configure_logging
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.commands import Outgoing
from gatewayd.store.db import open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up
from gatewayd.whatsapp.sim import SimulatedWhatsApp

PROC = psutil.Process()
CUSTOMER = "6281111111111@s.whatsapp.net"


def rss_mib() -> float:
    gc.collect()
    return PROC.memory_info().rss / 2**20


async def idle_cpu(seconds: float) -> float:
    """CPU seconds this process used per wall second while nothing happens."""
    before = PROC.cpu_times()
    begin = time.perf_counter()
    await trio.sleep(seconds)
    after = PROC.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / (time.perf_counter() - begin)


async def run_supervisor(sup: AgentSupervisor, nursery: trio.Nursery) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await sup.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def wait_connected(bus: EventBus, sim: SimulatedWhatsApp, n: int, scan: bool) -> None:
    connected: set[str] = set()
    with bus.subscribe(buffer=4 * n + 16) as events:
        async for event in events:
            if scan and event.kind == "qr":
                sim.scan(event.agent_id, "628" + event.agent_id.split("-")[1].rjust(9, "0"))
            elif event.kind == "status" and event.data["status"] == "connected":
                connected.add(event.agent_id)
                if len(connected) == n:
                    return


@attrs.define
class Restore:
    """One restore of every agent, and the first send each made once connected."""

    seconds: float = 0.0
    #: Connected → the network had the first send, per agent (seconds).
    waits: list[float] = attrs.Factory(list)
    #: Restore began → the last agent's first send was on the network (seconds).
    last_sent: float = 0.0
    failed: int = 0


async def restore_and_send(
    sup: AgentSupervisor, nursery: trio.Nursery, bus: EventBus, sim: SimulatedWhatsApp, n: int
) -> tuple[Restore, trio.CancelScope]:
    """Start ``sup`` (it restores every agent); send once to each agent as it connects."""
    restore = Restore()
    begin = 0.0

    async def first_send(agent_id: str, connected_at: float) -> None:
        try:
            sent = await sup.send(agent_id, Outgoing(to=CUSTOMER, text="Back online."))
        except Exception:
            restore.failed += 1
            return
        at = next(r.at for r in sim.sent(agent_id) if r.message_id == sent.message_id)
        restore.waits.append(at - connected_at)
        restore.last_sent = max(restore.last_sent, at - begin)

    async def watch(*, task_status: trio.TaskStatus[None]) -> None:
        connected: set[str] = set()
        with bus.subscribe(buffer=4 * n + 16) as events:
            task_status.started()
            async with trio.open_nursery() as sends:
                async for event in events:
                    if event.kind == "status" and event.data["status"] == "connected":
                        sends.start_soon(first_send, event.agent_id, trio.current_time())
                        connected.add(event.agent_id)
                        if len(connected) == n:
                            restore.seconds = trio.current_time() - begin
                            break

    async with trio.open_nursery() as waiting:
        await waiting.start(watch)
        begin = trio.current_time()
        scope = await run_supervisor(sup, nursery)
    return restore, scope


def restore_line(name: str, restore: Restore, n: int) -> None:
    waits = sorted(restore.waits)
    print(f"{name:<29}{restore.seconds:8.2f} s     ({restore.seconds / n * 1000:.2f} ms/agent)")
    print(
        f"  first send after connected  worst {waits[-1] * 1000:.1f} ms,"
        f" median {statistics.median(waits) * 1000:.1f} ms, {len(waits)} sent,"
        f" {restore.failed} failed; the last one out {restore.last_sent:.2f} s after the"
        " restore began"
    )


async def main(n: int, idle: float) -> None:
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        dsn = await trio.to_thread.run_sync(server.start)
        try:
            async with open_database(dsn, max_size=10) as db:
                await migrate_up(db)
                config = Config()
                sim, bus, metrics = SimulatedWhatsApp(), EventBus(), Metrics()
                staggered = config.agents.restore_concurrency
                at_once = attrs.evolve(
                    config, agents=attrs.evolve(config.agents, restore_concurrency=n)
                )

                def make(settings: Config = config) -> AgentSupervisor:
                    return AgentSupervisor(
                        db=db, backend=sim, metrics=metrics, bus=bus, config=lambda: settings
                    )

                async with trio.open_nursery() as nursery:
                    sup = make()
                    scope = await run_supervisor(sup, nursery)
                    base_rss = rss_mib()
                    base_cpu = await idle_cpu(idle)

                    ids = [f"agent-{i:05d}" for i in range(n)]
                    await db.run(
                        lambda conn: conn.cursor().executemany(
                            "INSERT INTO agents (agent_id, name, user_id, api_key) VALUES (%s, %s, 'bench', 'k')",
                            [(i, i) for i in ids],
                        )
                    )
                    begin = time.perf_counter()
                    async with trio.open_nursery() as waiting:
                        waiting.start_soon(wait_connected, bus, sim, n, True)
                        for agent_id in ids:
                            await sup.start(agent_id)
                    start_time = time.perf_counter() - begin
                    loaded_rss = rss_mib()
                    loaded_cpu = await idle_cpu(idle)

                    scope.cancel()
                    await sup.finished.wait()
                    sup = make()
                    restored, scope = await restore_and_send(sup, nursery, bus, sim, n)
                    scope.cancel()
                    await sup.finished.wait()
                    sup = make(at_once)
                    baseline, scope = await restore_and_send(sup, nursery, bus, sim, n)
                    scope.cancel()
        finally:
            await trio.to_thread.run_sync(server.stop)

    print(f"agents                       {n}")
    print(f"baseline RSS (0 agents)      {base_rss:8.1f} MiB")
    print(f"RSS with {n} agents        {loaded_rss:8.1f} MiB   (+{loaded_rss - base_rss:.1f} MiB)")
    print(f"RSS per agent                {(loaded_rss - base_rss) * 1024 / n:8.1f} KiB")
    print(
        f"start+pair all (wall)        {start_time:8.2f} s     ({start_time / n * 1000:.2f} ms/agent)"
    )
    restore_line(f"restore all, {staggered} at a time", restored, n)
    restore_line(f"restore all, {n} at once", baseline, n)
    print(
        f"  staggered / at once        {restored.seconds / baseline.seconds:8.2f}x restore time,"
        f" {max(restored.waits) / max(baseline.waits):.2f}x worst first send"
    )
    print(f"idle CPU, 0 agents           {base_cpu * 100:8.2f} % of a core")
    ratio = f"{loaded_cpu / base_cpu:.2f}x baseline" if base_cpu >= 5e-4 else "baseline ~0"
    print(f"idle CPU, {n} agents       {loaded_cpu * 100:8.2f} % of a core   ({ratio})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to measure idle CPU")
    args = parser.parse_args()
    trio.run(main, args.agents, args.idle)
