"""Inbound: how fast received messages become durable, and what the gateway adds to a reply.

    .venv/bin/python bench/inbound.py                       # both parts, full sizes
    .venv/bin/python bench/inbound.py --only throughput [--agents 50] [--messages 200]
    .venv/bin/python bench/inbound.py --only latency [--latency-agents 100] [--rate 200]
                                      [--seconds 30] [--warmup 2] [--ai-delay 0]
                                      [--log-level info]

Runs against an embedded PostgreSQL in a temporary directory (``synchronous_commit`` on).

**Throughput.** Each agent stands for one WhatsApp client whose callback delivers its
messages one after another and waits for each to be committed (that is how neonize calls us:
one callback thread per account).

* baseline    each callback commits its own message (one transaction per message),
* writer      each callback hands its message to the inbound writer, which commits
              whatever has arrived in one transaction (``gatewayd/nursery/inbound.py``),
* full path   the real supervisor and agent trees on the simulated network: messages
              injected into every agent, through the client's event sink and the writer,
              with the forwarder recording each one.

All three are measured in the same run and printed as messages/s, with the ratio of the
writer to the baseline.

**Latency.** The real supervisor and agent trees, in this process, on the simulated network
(``--latency-agents`` paired agents), with AI forwarding on: every inbound message goes to an
AI backend on 127.0.0.1 — a stdlib HTTP server in its own process that answers at once, or
after ``--ai-delay`` seconds like a model thinking (then about rate × delay calls are in
flight) — and its reply is queued and sent back through the agent's outbox. Messages are injected at
``--rate`` per second, round-robin over the agents, on a fixed schedule (open loop) for
``--seconds``, after ``--warmup`` seconds at the same rate that are not counted. Printed:
the gateway-added latency p50/p99/max of

* (a) the simulated client calls its event sink with the message (``SimNetwork.on_handover``,
  the moment neonize's callback would be entered) → the backend has read the AI request;
* (b) the backend writes its reply → the reply's send is handed to the simulated network
  (the time in its ``SentRecord``);

and CPU per message: this process's CPU time (gateway, simulated network and injector;
the psycopg worker threads included) and PostgreSQL's, each divided by the messages; and, for
the measured phase, what PostgreSQL wrote to its write-ahead log per message (records, kB,
and flushes to disk — every commit waits for one covering it — with their average time and
the share of the time one was under way: flushes are one at a time). Every
message is committed before the forwarder sees it (the inbound writer hands it over only
after its commit), and at the end the bench checks that each one is stored, recorded in
``ai_executions`` and answered by a sent reply. All clocks are CLOCK_MONOTONIC
(``time.perf_counter``), shared by both processes. The log goes to /dev/null at
``--log-level`` (the daemon's default, ``info``, unless told): what the daemon logs per
message is part of its cost. The machine's load average is printed with the figures, the
share of CPU time the hypervisor took away while each phase ran (steal), and the time a fixed
piece of Python work took just before the phases (bench/host.py, which also watches how that
time moves): on a shared machine the figures move with all three.
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from host import host_speed

from gatewayd.config import Config
from gatewayd.http.app import collect_less_often
from gatewayd.log import configure_logging
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.aicall import AiCaller
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.forwarder import Forwarder
from gatewayd.nursery.inbound import InboundWriter
from gatewayd.outbound import new_client
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up
from gatewayd.whatsapp.port import ClientEvent, InboundMessage, MessageReceived
from gatewayd.whatsapp.sim import SimulatedWhatsApp


def message(n: int) -> InboundMessage:
    return InboundMessage(
        id=f"3A{uuid.uuid4().hex[:18].upper()}",
        chat="628111000111@s.whatsapp.net",
        sender="628111000111@s.whatsapp.net",
        timestamp_ms=int(time.time() * 1000),
        push_name="Bench",
        text=f"message {n}: how much is the blue one?",
    )


async def new_agents(db: Database, count: int, tag: str) -> list[agents_store.AgentRecord]:
    return [
        await agents_store.create_agent(
            db, agent_id=f"{tag}-{i}", name=f"{tag}-{i}", user_id="bench", api_key="k"
        )
        for i in range(count)
    ]


Persist = Callable[[uuid.UUID, InboundMessage], Awaitable[object]]


async def callbacks(
    records: list[agents_store.AgentRecord], messages: int, persist: Persist
) -> float:
    """Messages/s when one callback per agent persists ``messages`` one after another."""

    async def one(agent_uuid: uuid.UUID) -> None:
        for n in range(messages):
            await persist(agent_uuid, message(n))

    ids = [record.id for record in records]
    begin = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for agent_uuid in ids:
            nursery.start_soon(one, agent_uuid)
    return len(ids) * messages / (time.perf_counter() - begin)


async def baseline(db: Database, records: list[agents_store.AgentRecord], messages: int) -> float:
    return await callbacks(records, messages, lambda a, m: messages_store.insert_inbound(db, a, m))


async def grouped(
    db: Database, records: list[agents_store.AgentRecord], messages: int
) -> tuple[float, float]:
    writer = InboundWriter(db, lambda _a, _s: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        rate = await callbacks(records, messages, writer.persist)
        nursery.cancel_scope.cancel()
    return rate, writer.committed / max(writer.batches, 1)


async def full_path(db: Database, agents: int, messages: int) -> float:
    sim = SimulatedWhatsApp(seed=7)
    config = Config.from_mapping({"whatsapp": {"mode": "sim"}})
    bus = EventBus(64)
    sup = AgentSupervisor(db=db, backend=sim, metrics=Metrics(), bus=bus, config=lambda: config)
    records = await new_agents(db, agents, "full")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await pair_all(sup, sim, [r.agent_id for r in records])
        before = sup.inbound.committed
        begin = time.perf_counter()
        for n in range(messages):
            for record in records:
                sim.inject_text(record.agent_id, "628111000111", f"message {n}")
        while sup.inbound.committed - before < agents * messages:
            await trio.sleep(0.005)
        elapsed = time.perf_counter() - begin
        nursery.cancel_scope.cancel()
    return agents * messages / elapsed


async def pair_all(sup: AgentSupervisor, sim: SimulatedWhatsApp, agent_ids: Sequence[str]) -> None:
    """Start and pair every agent (a scan of its first QR), and wait until all are connected."""
    for n, agent_id in enumerate(agent_ids):
        await sup.start(agent_id)
        while sim.current_qr(agent_id) is None:
            await trio.sleep(0.001)
        sim.scan(agent_id, f"6281{n:09d}")
    while not all(sim.is_connected(a) for a in agent_ids):
        await trio.sleep(0.01)


# ---------------------------------------------------------------------------- latency


class _AiHandler(http.server.BaseHTTPRequestHandler):
    """The AI backend: answers every POST with ``{"reply": "re <Idempotency-Key>"}``, at once
    or after ``delay`` seconds, and notes when it had read the request and when it wrote the
    reply; ``GET /timings`` answers those notes."""

    protocol_version = "HTTP/1.1"
    #: Seconds each answer waits (a model thinking): that many times the rate are in flight.
    delay = 0.0
    #: (Idempotency-Key, request read, reply written), perf_counter seconds.
    timings: list[tuple[str, float, float]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = time.perf_counter()
        key = self.headers.get("Idempotency-Key") or ""
        if self.delay:
            time.sleep(self.delay)
        self._answer(json.dumps({"reply": f"re {key}"}).encode())
        # The time it starts writing: what the socket and the gateway do after it counts.
        self.timings.append((key, received, self._written))

    def do_GET(self) -> None:  # noqa: N802
        self._answer(json.dumps(self.timings).encode())

    def _answer(self, body: bytes) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._written = time.perf_counter()
        self.wfile.write(head + body)  # one write: no Nagle wait between head and body

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AiServer(http.server.ThreadingHTTPServer):
    # Read by the constructor's listen(): socketserver's default of 5 drops the SYNs of a
    # burst of new connections, each then retried a second later, which is no AI backend's
    # doing (they listen with a backlog in the hundreds).
    request_queue_size = 1024
    daemon_threads = True


def serve_ai(delay: float) -> None:
    """The AI backend process: prints its port, serves until stdin closes."""
    _AiHandler.delay = delay
    server = _AiServer(("127.0.0.1", 0), _AiHandler)
    print(server.server_address[1], flush=True)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


@attrs.define
class AiBackendProcess:
    proc: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls, delay: float) -> AiBackendProcess:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-ai", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return cls(proc, f"http://127.0.0.1:{port}")

    async def timings(self) -> dict[str, tuple[float, float]]:
        async with new_client() as http:
            response = await http.get(f"{self.url}/timings")
        return {key: (received, written) for key, received, written in response.json()}

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def process_tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time so far (/proc/stat): (all ticks, ticks stolen by the host)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]  # user .. steal; guest time is counted in user


@attrs.frozen
class Wal:
    """What PostgreSQL wrote to its write-ahead log (pg_stat_wal), or the difference of two
    readings."""

    records: int
    kbytes: float
    #: Flushes to disk (each commit waits for one covering its record), and their time.
    flushes: int
    flush_seconds: float

    def __sub__(self, other: Wal) -> Wal:
        return Wal(
            self.records - other.records,
            self.kbytes - other.kbytes,
            self.flushes - other.flushes,
            self.flush_seconds - other.flush_seconds,
        )


async def wal_written(db: Database) -> Wal:
    """PostgreSQL's counters so far. A backend reports its share when it is idle, at most once a
    second (and a backend that stays idle, only ten seconds later): a long phase of steady load
    is counted to within a few percent, a short or quiet one is not."""

    def work(conn: Connection) -> Wal:
        row = conn.execute(
            "SELECT wal_records, wal_bytes / 1024, wal_sync, wal_sync_time / 1000 FROM pg_stat_wal"
        ).fetchone()
        assert row is not None
        return Wal(int(row[0]), float(row[1]), int(row[2]), float(row[3]))

    return await db.run(work)


async def time_wal_flushes(db: Database) -> None:
    """Have the bench's own server time its WAL flushes (``track_wal_io_timing``)."""

    def work(conn: Connection) -> None:
        conn.execute("ALTER SYSTEM SET track_wal_io_timing = on")
        conn.execute("SELECT pg_reload_conf()")

    await db.run_autocommit(work)


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99 and max of ``values`` (nearest rank), in milliseconds."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000

    return rank(0.50), rank(0.99), ordered[-1] * 1000


@attrs.define
class Phase:
    """One stretch of injection at a fixed rate, and what it cost."""

    rate: float
    messages: int
    #: Seconds from the first injection to the last of its replies handed to the network.
    seconds: float
    cpu_gateway: float
    cpu_postgres: float
    #: Inbound transactions (group commits) it took.
    transactions: int
    #: The machine's 1-minute load average when it began.
    load: float
    #: The share of the machine's CPU time the hypervisor took away (steal) while it ran.
    steal: float
    #: Its messages' ids and injection times (perf_counter).
    injected: dict[str, float]
    #: What PostgreSQL wrote to its log meanwhile (measured phase only, see ``wal_written``).
    wal: Wal | None
    handed_to_request: list[float] = attrs.Factory(list)
    reply_to_send: list[float] = attrs.Factory(list)
    inject_to_handed: list[float] = attrs.Factory(list)
    #: Its messages that got no reply (the AI call failed), or were not handled in time.
    not_replied: int = 0
    not_handled: int = 0


@attrs.define
class LatencyResult:
    baseline: Phase
    measured: Phase
    checks: dict[str, int]
    #: ``host_speed`` just before the baseline, the median of five (ms; lower is faster).
    speed: float


async def latency(
    db: Database, postgres_pid: int | None, args: argparse.Namespace
) -> LatencyResult:
    ai_backend = AiBackendProcess.start(args.ai_delay)
    try:
        return await _latency(db, postgres_pid, ai_backend, args)
    finally:
        ai_backend.stop()


async def _latency(
    db: Database,
    postgres_pid: int | None,
    ai_backend: AiBackendProcess,
    args: argparse.Namespace,
) -> LatencyResult:
    config = Config.from_mapping(
        {"whatsapp": {"mode": "sim"}, "ai": {"backend_url": ai_backend.url, "timeout": 10}}
    )
    sim = SimulatedWhatsApp(seed=11)
    handed: dict[str, float] = {}

    def on_handover(event: ClientEvent) -> None:
        if isinstance(event, MessageReceived):
            handed.setdefault(event.message.id, time.perf_counter())

    sim.on_handover = on_handover
    agents = args.latency_agents
    records = await new_agents(db, agents, "lat")
    agent_ids = [r.agent_id for r in records]
    metrics = Metrics()
    bus = EventBus(64)
    #: What became of each message (the forwarder's "handled" events): "replied", or why not.
    outcomes: dict[str, str] = {}

    async def collect(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with bus.subscribe(None, buffer=1_000_000) as events:
            task_status.started()
            async for event in events:
                if event.kind == "handled":
                    outcomes[event.data["id"]] = event.data["outcome"]

    collect_less_often()  # as the daemon does once it serves HTTP
    async with trio.open_nursery() as nursery:
        await nursery.start(collect)
        ai = AiCaller(db=db, metrics=metrics, settings=lambda: config)
        sup = AgentSupervisor(
            db=db,
            backend=sim,
            metrics=metrics,
            bus=bus,
            config=lambda: config,
            forward=Forwarder(ai),
        )
        await nursery.start(sup.run)
        await pair_all(sup, sim, agent_ids)
        sender = 0

        async def inject(rate: float, count: int) -> dict[str, float]:
            """``count`` messages at ``rate``/s on a fixed schedule; their injection times."""
            nonlocal sender
            injected: dict[str, float] = {}
            begin = trio.current_time()
            for n in range(count):
                await trio.sleep_until(begin + n / rate)
                agent = sender % agents
                sender += 1
                message = sim.inject_text(
                    agent_ids[agent], f"6282{agent:09d}", f"message {n}: is the blue one in stock?"
                )
                injected[message.id] = time.perf_counter()
            return injected

        async def settle(ids: Iterable[str]) -> None:
            """Wait until every one of ``ids`` is handled: replied, or failed."""
            waiting = set(ids)
            with trio.move_on_after(300):
                while not waiting <= outcomes.keys():
                    await trio.sleep(0.05)

        async def phase(rate: float, seconds: float, *, wal: bool = False) -> Phase:
            count = int(seconds * rate)
            load = os.getloadavg()[0]
            batches, cpu, pg_cpu = sup.inbound.batches, time.process_time(), 0.0
            if postgres_pid is not None:
                pg_cpu = process_tree_cpu(postgres_pid)
            wal_before = await wal_written(db) if wal else None
            begin, ticks = time.perf_counter(), cpu_ticks()
            injected = await inject(rate, count)
            await settle(injected)
            elapsed = time.perf_counter() - begin
            total, stolen = (now - then for now, then in zip(cpu_ticks(), ticks, strict=True))
            steal = stolen / max(total, 1)
            cpu = time.process_time() - cpu
            if postgres_pid is not None:
                pg_cpu = process_tree_cpu(postgres_pid) - pg_cpu
            transactions = sup.inbound.batches - batches
            wal_used = None if wal_before is None else await wal_written(db) - wal_before
            return Phase(
                rate, count, elapsed, cpu, pg_cpu, transactions, load, steal, injected, wal_used
            )

        await settle(await inject(args.rate, int(args.warmup * args.rate)))
        speed = statistics.median(host_speed() for _ in range(5))
        baseline = await phase(args.baseline_rate, args.baseline_seconds)
        measured = await phase(args.rate, args.seconds, wal=True)
        offset = trio.current_time() - time.perf_counter()  # trio's clock is perf_counter + offset
        sent_at: dict[str, float] = {}
        for agent_id in agent_ids:
            for record in sim.sent(agent_id):
                if record.kind == "text" and record.text and record.text.startswith("re "):
                    sent_at[record.text[3:]] = record.at - offset
        nursery.cancel_scope.cancel()
    backend = await ai_backend.timings()
    for one in (baseline, measured):
        complete = [m for m in one.injected if m in handed and m in backend and m in sent_at]
        one.handed_to_request = [backend[m][0] - handed[m] for m in complete]
        one.reply_to_send = [sent_at[m] - backend[m][1] for m in complete]
        one.inject_to_handed = [handed[m] - one.injected[m] for m in complete]
        one.not_replied = len(one.injected) - len(complete)
        one.not_handled = len([m for m in one.injected if m not in outcomes])
    checks = await _check_stored(db, [r.id for r in records], list(measured.injected))
    return LatencyResult(baseline, measured, checks, speed)


async def _check_stored(
    db: Database, agent_uuids: list[uuid.UUID], message_ids: list[str]
) -> dict[str, int]:
    """What the database holds for the measured messages."""

    def work(conn: Connection) -> dict[str, int]:
        row = conn.execute(
            "SELECT count(*),"
            " count(*) FILTER (WHERE i.status = 'answered' AND i.outcome = 'replied'),"
            " (SELECT count(*) FROM ai_executions e WHERE e.message_id = ANY(array_agg(i.id))"
            "   AND e.status = 'success'),"
            " (SELECT count(*) FROM messages o WHERE o.reply_to = ANY(array_agg(i.id))"
            "   AND o.status = 'sent')"
            " FROM messages i WHERE i.agent_id = ANY(%s) AND i.direction = 'inbound'"
            " AND i.wa_message_id = ANY(%s)",
            (agent_uuids, message_ids),
        ).fetchone()
        assert row is not None
        stored, replied, executions, sent = (int(v) for v in row)
        return {"stored": stored, "replied": replied, "executions": executions, "sent": sent}

    return await db.run(work)


def print_latency(result: LatencyResult, args: argparse.Namespace) -> None:
    base, run = result.baseline, result.measured
    print(
        f"agents={args.latency_agents}, AI answers after {args.ai_delay:g} s;"
        f" load average {run.load:.2f} on {os.cpu_count()} cores; host speed before the"
        f" phases: {result.speed:.1f} ms for bench/host.py's fixed work (median of 5; lower is"
        " faster)"
    )
    print(
        "gateway-added latency (ms)                         p50      p99      max"
        "   p99 / baseline p99"
    )
    rows = (
        ("(a) handed to the daemon → AI request received", "handed_to_request"),
        ("(b) AI reply sent → send handed to the network", "reply_to_send"),
        ("    (sim) injected → handed to the daemon     ", "inject_to_handed"),
    )
    for one in (base, run):
        what = "baseline" if one is base else "measured"
        print(
            f"{what}: {one.rate:g}/s for {one.messages / one.rate:g} s, {one.messages:,} messages"
            f" in {one.seconds:.1f} s (inject → last reply sent),"
            f" {one.messages / max(one.transactions, 1):.1f} msg/inbound transaction,"
            f" CPU steal {one.steal:.0%};"
            f" not replied {one.not_replied}, not handled within 300 s {one.not_handled}"
        )
        for label, name in rows:
            values = getattr(one, name)
            if not values:
                continue
            p50, p99, top = quantiles(values)
            ratio = ""
            if one is run and getattr(base, name):
                ratio = f"   {p99 / max(quantiles(getattr(base, name))[1], 1e-3):6.1f}x"
            print(f"   {label}  {p50:7.2f}  {p99:7.2f}  {top:7.2f}{ratio}")
        print(
            f"   CPU per message: gateway process {one.cpu_gateway / one.messages * 1000:.2f} ms"
            f" ({one.cpu_gateway / one.seconds:.2f} cores), PostgreSQL"
            f" {one.cpu_postgres / one.messages * 1000:.2f} ms"
            f" ({one.cpu_postgres / one.seconds:.2f} cores)"
        )
        wal = one.wal
        if wal is None:
            continue
        print(
            f"   WAL per message: {wal.records / one.messages:.0f} records,"
            f" {wal.kbytes / one.messages:.1f} kB, {wal.flushes / one.messages:.1f} flushes"
            f" of {wal.flush_seconds / max(wal.flushes, 1) * 1000:.2f} ms on average"
            f" (a flush under way {wal.flush_seconds / one.seconds:.0%} of the time)"
        )
    checks = result.checks
    print(
        f"measured messages: stored {checks['stored']:,}/{run.messages:,}, replied"
        f" {checks['replied']:,}, AI executions {checks['executions']:,}, replies sent"
        f" {checks['sent']:,} (latencies are of the replied ones)"
    )


# ---------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.start()
        try:
            async with open_database(server.dsn, max_size=10) as db:
                await migrate_up(db)
                await time_wal_flushes(db)
                # Latency first: the throughput part's 30,000 rows would have autovacuum
                # running through it.
                if args.only in (None, "latency"):
                    result = await latency(db, server.pid, args)
                    print_latency(result, args)
                if args.only in (None, "throughput"):
                    await throughput(db, args.agents, args.messages)
        finally:
            server.stop()


async def throughput(db: Database, agents: int, messages: int) -> None:
    def count(conn: Connection) -> int:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
        return int(row[0]) if row else 0

    before = await db.run(count)
    base = await baseline(db, await new_agents(db, agents, "base"), messages)
    rate, per_batch = await grouped(db, await new_agents(db, agents, "group"), messages)
    full = await full_path(db, agents, messages)
    stored = await db.run(count) - before
    total = agents * messages
    print(f"agents={agents} messages/agent={messages} (each run persists {total:,})")
    print(f"baseline   one commit per message : {base:8.0f} msg/s")
    print(
        f"writer     group commit           : {rate:8.0f} msg/s  ({rate / base:.1f}x baseline,"
        f" {per_batch:.0f} msg/transaction)"
    )
    print(f"full path  sim → sink → writer    : {full:8.0f} msg/s  ({full / base:.1f}x baseline)")
    print(f"rows stored: {stored:,} (expected {3 * total:,})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-ai"]:
        serve_ai(float(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--agents", type=int, default=50, help="throughput: agents")
    parser.add_argument("--messages", type=int, default=200, help="throughput: per agent")
    parser.add_argument("--latency-agents", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="latency: messages/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="latency: not measured")
    parser.add_argument(
        "--ai-delay", type=float, default=0.0, help="latency: seconds the AI backend takes"
    )
    parser.add_argument("--baseline-rate", type=float, default=10.0, help="latency: idle rate")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", help="the log is written to /dev/null")
    args = parser.parse_args()
    # The daemon's default level: what it logs per message at "info" is part of its cost.
    configure_logging(args.log_level, "json", open(os.devnull, "w"))
    trio.run(main, args)
