"""How fast received messages become durable: group commit against one commit per message.

    .venv/bin/python bench/inbound.py [--agents 50] [--messages 200]

Runs against an embedded PostgreSQL in a temporary directory. Each agent stands for one
WhatsApp client whose callback delivers its messages one after another and waits for each
to be committed (that is how neonize calls us: one callback thread per account).

* baseline    each callback commits its own message (one transaction per message),
* writer      each callback hands its message to the inbound writer, which commits
              whatever has arrived in one transaction (``gatewayd/nursery/inbound.py``),
* full path   the real supervisor and agent trees on the simulated network: messages
              injected into every agent, through the client's event sink and the writer,
              with the forwarder recording each one.

All three are measured in the same run and printed as messages/s, with the ratio of the
writer to the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from gatewayd.config import Config
from gatewayd.log import configure_logging
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.inbound import InboundWriter
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up
from gatewayd.whatsapp.port import InboundMessage
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
        for record in records:
            await sup.start(record.agent_id)
            while sim.current_qr(record.agent_id) is None:
                await trio.sleep(0.001)
            sim.scan(
                record.agent_id,
                f"6281{len(record.agent_id):02d}{abs(hash(record.agent_id)) % 10**8:08d}",
            )
        while not all(sim.is_connected(r.agent_id) for r in records):
            await trio.sleep(0.01)
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


async def main(agents: int, messages: int) -> None:
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.start()
        try:
            async with open_database(server.dsn, max_size=10) as db:
                await migrate_up(db)
                base = await baseline(db, await new_agents(db, agents, "base"), messages)
                rate, per_batch = await grouped(db, await new_agents(db, agents, "group"), messages)
                full = await full_path(db, agents, messages)

                def count(conn: Connection) -> int:
                    row = conn.execute("SELECT count(*) FROM messages").fetchone()
                    return int(row[0]) if row else 0

                stored = await db.run(count)
        finally:
            server.stop()
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.agents, args.messages)
