"""How much one simulated agent costs: RSS, start/restore time, idle CPU.

    .venv/bin/python bench/agents.py [--agents 1000] [--idle 5]

Runs the real supervisor on the simulated network against an embedded PostgreSQL in
a temporary directory. Every figure is printed next to the baseline of zero agents
measured in the same run, so the numbers compare like with like on this machine.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import psutil
import trio

from gatewayd.config import Config
from gatewayd.log import configure_logging
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.bus import EventBus
from gatewayd.store.db import open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up
from gatewayd.whatsapp.sim import SimulatedWhatsApp

PROC = psutil.Process()


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

                def make() -> AgentSupervisor:
                    return AgentSupervisor(
                        db=db, backend=sim, metrics=metrics, bus=bus, config=lambda: config
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
                    begin = time.perf_counter()
                    async with trio.open_nursery() as waiting:
                        waiting.start_soon(wait_connected, bus, sim, n, False)
                        scope = await run_supervisor(sup, nursery)
                    restore_time = time.perf_counter() - begin
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
    print(
        f"restore all (wall)           {restore_time:8.2f} s     ({restore_time / n * 1000:.2f} ms/agent)"
    )
    print(f"idle CPU, 0 agents           {base_cpu * 100:8.2f} % of a core")
    print(
        f"idle CPU, {n} agents       {loaded_cpu * 100:8.2f} % of a core"
        f"   (ratio {loaded_cpu / base_cpu if base_cpu else float('inf'):.2f}x baseline)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to measure idle CPU")
    args = parser.parse_args()
    trio.run(main, args.agents, args.idle)
