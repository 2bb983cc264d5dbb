"""Inbound: how fast received messages become durable, and what the gateway adds to a reply.

    .venv/bin/python bench/inbound.py                       # both parts, full sizes
    .venv/bin/python bench/inbound.py --only throughput [--agents 50] [--messages 200]
    .venv/bin/python bench/inbound.py --only latency [--latency-agents 100] [--rate 200]
                                      [--seconds 30] [--warmup 2]

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
AI backend on 127.0.0.1 — a stdlib HTTP server in its own process that answers at once — and
its reply is queued and sent back through the agent's outbox. Messages are injected at
``--rate`` per second, round-robin over the agents, on a fixed schedule (open loop) for
``--seconds``, after ``--warmup`` seconds at the same rate that are not counted. Printed:
the gateway-added latency p50/p99/max of

* (a) the simulated client calls its event sink with the message (``SimNetwork.on_handover``,
  the moment neonize's callback would be entered) → the backend has read the AI request;
* (b) the backend writes its reply → the reply's send is handed to the simulated network
  (the time in its ``SentRecord``);

and CPU per message: this process's CPU time (gateway, simulated network and injector;
the psycopg worker threads included) and PostgreSQL's, each divided by the messages. Every
message is committed before the forwarder sees it (the inbound writer hands it over only
after its commit), and at the end the bench checks that each one is stored, recorded in
``ai_executions`` and answered by a sent reply. All clocks are CLOCK_MONOTONIC
(``time.perf_counter``), shared by both processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's ``http`` package (which this script and httpx
# import): the script's directory, first on the path, goes to the end instead.
sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import http.server
import json
import math
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from gatewayd.config import Config
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
    """The AI backend: answers every POST at once with ``{"reply": "re <Idempotency-Key>"}``
    and notes when it had read the request and when it wrote the reply; ``GET /timings``
    answers those notes."""

    protocol_version = "HTTP/1.1"
    #: (Idempotency-Key, request read, reply written), perf_counter seconds.
    timings: list[tuple[str, float, float]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = time.perf_counter()
        key = self.headers.get("Idempotency-Key") or ""
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


def serve_ai() -> None:
    """The AI backend process: prints its port, serves until stdin closes."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AiHandler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


@attrs.define
class AiBackendProcess:
    proc: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls) -> AiBackendProcess:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-ai"],
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


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99 and max of ``values`` (nearest rank), in milliseconds."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000

    return rank(0.50), rank(0.99), ordered[-1] * 1000


@attrs.define
class LatencyResult:
    messages: int
    seconds: float
    handed_to_request: list[float]
    reply_to_send: list[float]
    inject_to_handed: list[float]
    cpu_gateway: float
    cpu_postgres: float
    transactions: int
    checks: dict[str, int]


async def latency(
    db: Database, postgres_pid: int | None, agents: int, rate: float, seconds: float, warmup: float
) -> LatencyResult:
    ai_backend = AiBackendProcess.start()
    try:
        return await _latency(db, postgres_pid, ai_backend, agents, rate, seconds, warmup)
    finally:
        ai_backend.stop()


async def _latency(
    db: Database,
    postgres_pid: int | None,
    ai_backend: AiBackendProcess,
    agents: int,
    rate: float,
    seconds: float,
    warmup: float,
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
    records = await new_agents(db, agents, "lat")
    agent_ids = [r.agent_id for r in records]
    metrics = Metrics()
    async with new_client() as http, trio.open_nursery() as nursery:
        ai = AiCaller(db=db, http=http, metrics=metrics, settings=lambda: config)
        sup = AgentSupervisor(
            db=db,
            backend=sim,
            metrics=metrics,
            bus=EventBus(64),
            config=lambda: config,
            forward=Forwarder(ai),
        )
        await nursery.start(sup.run)
        await pair_all(sup, sim, agent_ids)

        def replies() -> int:
            return sum(1 for a in agent_ids for r in sim.sent(a) if r.kind == "text" and r.text)

        async def inject(count: int) -> dict[str, float]:
            """``count`` messages at ``rate``/s on a fixed schedule; their injection times."""
            injected: dict[str, float] = {}
            begin = trio.current_time()
            for n in range(count):
                await trio.sleep_until(begin + n / rate)
                agent = n % agents
                message = sim.inject_text(
                    agent_ids[agent], f"6282{agent:09d}", f"message {n}: is the blue one in stock?"
                )
                injected[message.id] = time.perf_counter()
            return injected

        async def settle(expected: int) -> None:
            with trio.fail_after(120):
                while replies() < expected:
                    await trio.sleep(0.1)

        await inject(int(warmup * rate))
        await settle(int(warmup * rate))
        count = int(seconds * rate)
        batches, cpu, pg_cpu = sup.inbound.batches, time.process_time(), 0.0
        if postgres_pid is not None:
            pg_cpu = process_tree_cpu(postgres_pid)
        begin = time.perf_counter()
        injected = await inject(count)
        await settle(int(warmup * rate) + count)
        elapsed = time.perf_counter() - begin
        cpu = time.process_time() - cpu
        if postgres_pid is not None:
            pg_cpu = process_tree_cpu(postgres_pid) - pg_cpu
        transactions = sup.inbound.batches - batches
        offset = trio.current_time() - time.perf_counter()  # trio's clock is perf_counter + offset
        sent_at: dict[str, float] = {}
        for agent_id in agent_ids:
            for record in sim.sent(agent_id):
                if record.kind == "text" and record.text and record.text.startswith("re "):
                    sent_at[record.text[3:]] = record.at - offset
        nursery.cancel_scope.cancel()
    backend = await ai_backend.timings()
    checks = await _check_stored(db, [r.id for r in records], list(injected))
    return LatencyResult(
        messages=count,
        seconds=elapsed,
        handed_to_request=[backend[m][0] - handed[m] for m in injected],
        reply_to_send=[sent_at[m] - backend[m][1] for m in injected],
        inject_to_handed=[handed[m] - injected[m] for m in injected],
        cpu_gateway=cpu,
        cpu_postgres=pg_cpu,
        transactions=transactions,
        checks=checks,
    )


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


def print_latency(result: LatencyResult, agents: int, rate: float) -> None:
    n = result.messages
    print(
        f"agents={agents} rate={rate:g}/s messages={n:,} in {result.seconds:.1f} s"
        f" (inject → last reply sent), {result.transactions:,} inbound transactions"
        f" ({n / max(result.transactions, 1):.1f} msg/transaction)"
    )
    print("gateway-added latency (ms)                      p50      p99      max")
    for label, values in (
        ("(a) handed to the daemon → AI request received", result.handed_to_request),
        ("(b) AI reply sent → send handed to the network", result.reply_to_send),
        ("    (sim) injected → handed to the daemon     ", result.inject_to_handed),
    ):
        p50, p99, top = quantiles(values)
        print(f"{label}  {p50:7.2f}  {p99:7.2f}  {top:7.2f}")
    print(
        f"CPU per message: gateway process {result.cpu_gateway / n * 1000:.2f} ms"
        f" ({result.cpu_gateway / result.seconds:.2f} cores),"
        f" PostgreSQL {result.cpu_postgres / n * 1000:.2f} ms"
        f" ({result.cpu_postgres / result.seconds:.2f} cores)"
    )
    checks = result.checks
    print(
        f"stored {checks['stored']:,}/{n:,}, replied {checks['replied']:,},"
        f" AI executions {checks['executions']:,}, replies sent {checks['sent']:,}"
    )


# ---------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.start()
        try:
            async with open_database(server.dsn, max_size=10) as db:
                await migrate_up(db)
                if args.only in (None, "throughput"):
                    await throughput(db, args.agents, args.messages)
                if args.only in (None, "latency"):
                    result = await latency(
                        db, server.pid, args.latency_agents, args.rate, args.seconds, args.warmup
                    )
                    print_latency(result, args.latency_agents, args.rate)
        finally:
            server.stop()


async def throughput(db: Database, agents: int, messages: int) -> None:
    base = await baseline(db, await new_agents(db, agents, "base"), messages)
    rate, per_batch = await grouped(db, await new_agents(db, agents, "group"), messages)
    full = await full_path(db, agents, messages)

    def count(conn: Connection) -> int:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
        return int(row[0]) if row else 0

    stored = await db.run(count)
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
    if sys.argv[1:] == ["--serve-ai"]:
        serve_ai()
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--agents", type=int, default=50, help="throughput: agents")
    parser.add_argument("--messages", type=int, default=200, help="throughput: per agent")
    parser.add_argument("--latency-agents", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="latency: messages/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="latency: not measured")
    parser.add_argument("--log-level", default="info", help="the log is written to /dev/null")
    args = parser.parse_args()
    # The daemon's default level: what it logs per message at "info" is part of its cost.
    configure_logging(args.log_level, "json", open(os.devnull, "w"))
    trio.run(main, args)
