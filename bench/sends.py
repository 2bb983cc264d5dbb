"""Sending at the configured rate: 1,000 agents, each at ``agents.send_rate_per_minute``.

    flock /tmp/bench.lock .venv/bin/python bench/sends.py [--agents 1000] [--warmup 10]
        [--seconds 30]

Runs the whole daemon in process (``run_gateway`` with its default settings: the embedded
PostgreSQL in a temporary directory, the simulated network, the real supervisor and agent
trees, the HTTP server listening but unused), pairs ``--agents`` agents, and then offers each
one a text send every 60 / ``agents.send_rate_per_minute`` seconds (the default, 100/min: 1,667
sends/s for 1,000 agents), the agents' phases spread evenly over the period. Every send goes
through ``gatewayd.usecases.messaging.send_text``, the use case both HTTP send routes call:
it is recorded (``pending``, ``sending``, ``sent``), paced by the agent's token bucket, queued
on the agent's command channel and sent by its send worker exactly as an API send is (the
HTTP parsing in front of it is what bench/http_routes.py measures). Each send is a task of its own,
as each HTTP request is, and the offer keeps its schedule when the daemon falls behind (open
loop), so falling behind shows as a growing wait, not as a slower offer.

Two experiments change interpreter settings: ``--gc-threshold`` (the collector's first
threshold; the daemon sets ``GC_YOUNG_THRESHOLD`` of gatewayd/http/app.py when it starts
serving, Python's default is 700; set once the agents are paired) and ``--switch-interval``
(``sys.setswitchinterval``, 5 ms: how long a worker thread back from the database may wait for
the interpreter lock).

Printed, over the steady window that follows the warm-up:

* the sustained rate: sends handed to the network per second in the window, against the
  configured total;
* CPU cores used by this process (its CPU seconds over the wall seconds of the window), and
  by the PostgreSQL server beside it;
* queue wait p50/p99/max: from the call into ``send_text`` (the send accepted) to the moment
  the simulated network has the message (the time it records for the send);
* RSS of this process; the garbage collector's pauses; how many transactions the send rows
  took.

The baseline, measured first in the same run, makes the same offer straight to the same
simulated clients, without the gateway: what the load generator and the simulated network
cost by themselves.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import psutil
import trio

from gatewayd.config import Config
from gatewayd.daemon import Gateway, run_gateway
from gatewayd.log import configure_logging
from gatewayd.nursery.bus import EventBus
from gatewayd.store import outbound as outbound_store
from gatewayd.usecases import messaging
from gatewayd.whatsapp.sim import SimulatedWhatsApp

PROC = psutil.Process()
TEXT = "Your order #1042 has shipped and will arrive on Thursday."


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def postgres_cpu() -> float:
    """CPU seconds of the embedded PostgreSQL's processes (children of this one)."""
    total = 0.0
    for child in PROC.children(recursive=True):
        try:
            total += cpu_seconds(child)
        except psutil.NoSuchProcess:
            pass
    return total


def quantile(values: array[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class GcPauses:
    """How long the garbage collector stopped everything (it runs in the Trio thread too)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self.started))

    def since(self, index: int) -> str:
        parts = []
        for generation in (0, 1, 2):
            pauses = [p for g, p in self.pauses[index:] if g == generation]
            if pauses:
                parts.append(
                    f"gen{generation} {len(pauses)}x {sum(pauses) * 1000:.0f} ms"
                    f" (longest {max(pauses) * 1000:.0f} ms)"
                )
        return ", ".join(parts) or "none"


GC = GcPauses()


@attrs.define
class Window:
    """What one phase measured. Figures are floats in arrays: the bench's own bookkeeping
    adds no object for the garbage collector to walk."""

    begin: float = 0.0
    end: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0
    pg_cpu: float = 0.0
    #: When the network had each send (virtual time), all of them.
    handed: array[float] = attrs.Factory(lambda: array("d"))
    #: Call to network, in ms, of the sends made in the window.
    waits: array[float] = attrs.Factory(lambda: array("d"))
    failed: int = 0
    late: float = 0.0  # the generator's worst lag behind its schedule

    def figures(self) -> dict[str, float]:
        span = self.end - self.begin
        in_window = sum(1 for at in self.handed if self.begin <= at < self.end)
        return {
            "rate": in_window / span,
            "cores": self.cpu / self.wall,
            "pg": self.pg_cpu / self.wall,
            "p50": quantile(self.waits, 0.50),
            "p99": quantile(self.waits, 0.99),
            "max": max(self.waits, default=float("nan")),
            "us_per_send": self.cpu / max(in_window, 1) * 1e6,
        }


SendOne = Callable[[int], Awaitable[str]]


class Network:
    """The simulated network's record of what the agents sent, taken back as it is read."""

    def __init__(self, sim: SimulatedWhatsApp, ids: list[str]) -> None:
        # The simulated network keeps every message an agent sends, for the tests to read;
        # the bench takes each one out as soon as it has its time, so that what the network
        # holds (WhatsApp's copy, in reality not in our process) does not grow the heap.
        self._records = [sim.client(agent_id)._sent for agent_id in ids]

    def take(self, agent: int, message_id: str) -> float:
        """When the network had ``message_id``, sent by ``agent``."""
        records = self._records[agent]
        for index in range(len(records) - 1, -1, -1):
            if records[index].message_id == message_id:
                return records.pop(index).at
        raise LookupError(message_id)


async def offer(
    n: int, period: float, warmup: float, seconds: float, send_one: SendOne, network: Network
) -> Window:
    """Call ``send_one(agent)`` for every agent once per ``period``, phases spread evenly,
    for ``warmup`` + ``seconds`` (whole periods); measure the last ``seconds``. Returns once
    every send has been answered."""
    window = Window()
    start = trio.current_time() + 0.1
    before, during = math.ceil(warmup / period), max(1, math.ceil(seconds / period))
    window.begin = start + before * period
    window.end = start + (before + during) * period

    async def one(k: int) -> None:
        called = trio.current_time()
        agent = k % n
        try:
            message_id = await send_one(agent)
        except Exception:
            window.failed += 1
            return
        at = network.take(agent, message_id)
        window.handed.append(at)
        if window.begin <= called < window.end:
            window.waits.append((at - called) * 1000)

    async with trio.open_nursery() as sends:
        for k in range((before + during) * n):
            due = start + (k // n) * period + (k % n) * period / n
            now = trio.current_time()
            if due > now:
                await trio.sleep_until(due)
            else:
                window.late = max(window.late, now - due)
            if k == before * n:
                window.wall = time.perf_counter()
                window.cpu, window.pg_cpu = cpu_seconds(PROC), postgres_cpu()
            sends.start_soon(one, k)
        await trio.sleep_until(window.end)
        window.cpu = cpu_seconds(PROC) - window.cpu
        window.pg_cpu = postgres_cpu() - window.pg_cpu
        window.wall = time.perf_counter() - window.wall
    return window


async def wait_connected(bus: EventBus, sim: SimulatedWhatsApp, ids: set[str]) -> None:
    connected: set[str] = set()
    with bus.subscribe(buffer=4 * len(ids) + 16) as events:
        async for event in events:
            if event.kind == "qr" and event.agent_id in ids:
                sim.scan(event.agent_id, "628" + event.agent_id.split("-")[1].rjust(9, "0"))
            elif event.kind == "status" and event.data["status"] == "connected":
                connected.add(event.agent_id)
                if connected >= ids:
                    return


async def pair_agents(gateway: Gateway, sim: SimulatedWhatsApp, n: int) -> list[str]:
    ids = [f"agent-{i:05d}" for i in range(n)]
    await gateway.db.run(
        lambda conn: conn.cursor().executemany(
            "INSERT INTO agents (agent_id, name, user_id, api_key) VALUES (%s, %s, 'bench', 'k')",
            [(i, i) for i in ids],
        )
    )
    async with trio.open_nursery() as waiting:
        waiting.start_soon(wait_connected, gateway.bus, sim, set(ids))
        for agent_id in ids:
            await gateway.agents.start(agent_id)
    return ids


def line(name: str, window: Window, configured: float) -> dict[str, float]:
    f = window.figures()
    print(
        f"{name:<9} sustained {f['rate']:6.0f}/s ({f['rate'] / configured:.3f} of configured)"
        f"  CPU {f['cores']:4.2f} cores ({f['us_per_send']:.0f} us/send)"
        f"  postgres {f['pg']:4.2f} cores  wait p50 {f['p50']:.2f} ms  p99 {f['p99']:.2f} ms"
        f"  max {f['max']:.1f} ms  failed {window.failed}"
        f"  generator lag {window.late * 1000:.0f} ms",
        flush=True,
    )
    return f


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_mapping(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "database": {"data_dir": tmp},
                "whatsapp": {"mode": "sim"},
                "media": {"temp_dir": str(Path(tmp) / "media")},
            }
        )
        rate_per_minute = config.agents.send_rate_per_minute
        period = 60.0 / rate_per_minute
        configured = args.agents * rate_per_minute / 60.0
        async with trio.open_nursery() as nursery:
            gateway: Gateway = await nursery.start(
                lambda task_status: run_gateway(
                    config, environ={}, handle_signals=False, task_status=task_status
                )
            )
            sim = gateway.backend
            assert isinstance(sim, SimulatedWhatsApp)
            begin = time.perf_counter()
            ids = await pair_agents(gateway, sim, args.agents)
            print(
                f"{args.agents} agents paired in {time.perf_counter() - begin:.1f} s;"
                f" configured {rate_per_minute:g}/min each = {configured:.0f} sends/s;"
                f" warm-up {args.warmup:g} s, window {args.seconds:g} s",
                flush=True,
            )
            handles = [gateway.agents.get(agent_id) for agent_id in ids]
            records = [handle.record for handle in handles if handle is not None]
            recipients = [f"62899{i:07d}" for i in range(args.agents)]
            jids = [messaging.recipient(gateway.services, r) for r in recipients]
            network = Network(sim, ids)
            if args.gc_threshold:
                gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
            rss_before = PROC.memory_info().rss / 2**20

            async def bare(i: int) -> str:
                result = await sim.client(ids[i]).send_text(jids[i], TEXT)
                return result.message_id

            async def through_gateway(i: int) -> str:
                sent = await messaging.send_text(
                    gateway.services,
                    records[i],
                    messaging.TextMessage(to=recipients[i], text=TEXT),
                    f"bench-{i}",
                )
                return sent.message_id

            base = await offer(args.agents, period, args.warmup, args.seconds, bare, network)
            base_figures = line("baseline", base, configured)
            await trio.sleep(1)
            rounds_before = outbound_store.round_statistics(gateway.db)
            gc_before = len(GC.pauses)
            window = await offer(
                args.agents, period, args.warmup, args.seconds, through_gateway, network
            )
            rounds_after = outbound_store.round_statistics(gateway.db)
            gc_pauses = GC.since(gc_before)
            figures = line("gateway", window, configured)
            rss_after = PROC.memory_info().rss / 2**20
            gateway.request_stop()

    rounds = rounds_after.rounds - rounds_before.rounds
    changes = rounds_after.changes - rounds_before.changes
    writing = rounds_after.seconds - rounds_before.seconds
    span = window.end - window.begin
    extra = figures["cores"] - base_figures["cores"]
    print()
    print(f"configured total             {configured:8.0f} sends/s")
    print(
        f"sustained                    {figures['rate']:8.0f} sends/s"
        f"   ({figures['rate'] / configured:.3f} of configured)"
    )
    print(
        f"CPU, this process            {figures['cores']:8.2f} cores"
        f"   (baseline {base_figures['cores']:.2f}: the gateway adds {extra:.2f},"
        f" {extra / max(figures['rate'], 1) * 1e6:.0f} us a send)"
    )
    print(f"CPU, PostgreSQL              {figures['pg']:8.2f} cores")
    print(
        f"queue wait p50 / p99 / max   {figures['p50']:8.1f} / {figures['p99']:.1f}"
        f" / {figures['max']:.1f} ms   (baseline p99 {base_figures['p99']:.2f} ms)"
    )
    print(
        f"RSS                          {rss_after:8.1f} MiB   ({rss_before:.1f} MiB before"
        " the offers)"
    )
    print(f"garbage collector            {gc_pauses}")
    print(
        f"send rows                    {rounds / span:8.0f} transactions/s"
        f"   ({changes / max(rounds, 1):.1f} row changes each, {writing / max(rounds, 1) * 1000:.1f} ms"
        f" on average, the longest of the run {rounds_after.longest * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the window")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument(
        "--log-level", default="info", help="the daemon's log level (its lines go to /dev/null)"
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="experiment: the garbage collector's first threshold (the daemon's: 10,000)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=0.0,
        help="experiment: sys.setswitchinterval, seconds (Python's default: 0.005)",
    )
    arguments = parser.parse_args()
    if arguments.switch_interval:
        sys.setswitchinterval(arguments.switch_interval)
    with open(os.devnull, "w") as devnull:
        configure_logging(arguments.log_level, "json", stream=devnull)
        gc.callbacks.append(GC.observe)
        trio.run(main, arguments)
