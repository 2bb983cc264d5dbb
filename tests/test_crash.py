"""Crash tests (issue 8): real processes killed with SIGKILL, a real PostgreSQL stopped, and a
count of what was lost and what was duplicated. The answer must be zero.

The simulated WhatsApp network runs as its own process (``gatewayd simnet``) and outlives the
daemon; it keeps every message queued until the daemon's callback for it returned (after
the commit), so what the daemon acknowledged is exactly what it is responsible for. The AI
backend is a real HTTP server on loopback that answers ``re: <text>`` and records every
request with its ``Idempotency-Key``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.store.embedded import EmbeddedPostgres
from tests.daemon import Daemon
from tests.loopback import serve_app
from tests.test_simnet import (
    free_port,
    link_agent,
    start_simnet,
    stop,
    wait_line,
    write_daemon_config,
)

CUSTOMER = "6281111111111"
BURST = 1000
KILL_AFTER = 300


@attrs.define
class EchoAI:
    """Answers every message with ``re: <message>``; keeps (Idempotency-Key, message)."""

    url: str = ""
    calls: list[tuple[str | None, str]] = attrs.field(factory=list)
    times: list[float] = attrs.field(factory=list)

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.calls.append((request.headers.get("idempotency-key"), body["message"]))
        self.times.append(trio.current_time())
        return JSONResponse({"output": "ok", "reply": f"re: {body['message']}"})


async def start_echo_ai(nursery: trio.Nursery) -> EchoAI:
    ai = EchoAI()
    app = Starlette(routes=[Route("/{path:path}", ai.handle, methods=["POST"])])
    ai.url = await serve_app(nursery, app)
    return ai


def write_config(path: Path, pg_dsn: str, sim_url: str, ai_url: str) -> None:
    """The simnet daemon's config, with the echo AI and no send pacing to wait for."""
    extra = f"""
[ai]
backend_url = "{ai_url}"

[agents]
send_rate_per_minute = 1000000.0
send_burst = 100000
"""
    write_daemon_config(path, pg_dsn, sim_url, extra)


def query(pg_dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(sql).fetchall()


async def wait_all_handled(pg_dsn: str, count: int, timeout: float = 240) -> None:
    """Until ``count`` inbound messages are handled (their replies out or settled)."""
    sql = "SELECT count(*) FROM messages WHERE direction = 'inbound' AND handled_at IS NOT NULL"
    with trio.fail_after(timeout):
        while (await trio.to_thread.run_sync(query, pg_dsn, sql))[0][0] < count:
            await trio.sleep(0.25)


async def test_a_burst_survives_kill_9_of_the_daemon(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """1,000 messages, the daemon SIGKILLed after ~300 were acknowledged, then restarted:
    every message is stored once, forwarded once (a repeat only for the one in flight, with
    the same Idempotency-Key) and replied to at most once; a reply that was in flight at the
    kill is a visible ``unknown`` row, never a silent second send."""
    ai = await start_echo_ai(nursery)
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn, simnet.base_url, ai.url)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(base_url=simnet.base_url, timeout=120, limits=limits) as sim,
        httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
    ):
        await link_agent(daemon, api, sim, "burst", "628123450009")

        ids: dict[str, str] = {}  # WhatsApp id -> text
        acked: set[str] = set()
        killed = trio.Event()

        async def inject(n: int, limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                text = f"m{n}"
                r = await sim.post(
                    "/_sim/agents/burst/inject",
                    json={"from": CUSTOMER, "text": text, "waitSeconds": 60},
                )
                assert r.status_code in (200, 504), r.text
                ids[r.json()["data"]["id"]] = text
                if r.status_code == 200:
                    acked.add(r.json()["data"]["id"])
                if len(acked) >= KILL_AFTER and not killed.is_set():
                    killed.set()

        async with trio.open_nursery() as burst:
            limiter = trio.CapacityLimiter(32)
            for n in range(BURST):
                burst.start_soon(inject, n, limiter)
            await killed.wait()
            daemon.kill()
            await daemon.wait()
            acked_at_kill = len(acked)
            daemon = await Daemon.start(nursery, ["--config", str(config)])
        assert len(ids) == BURST and acked_at_kill >= KILL_AFTER

        await wait_all_handled(pg_dsn, BURST)
        sent = (await sim.get("/_sim/agents/burst/sent")).json()["data"]

    inbound = await trio.to_thread.run_sync(
        query,
        pg_dsn,
        "SELECT wa_message_id, outcome FROM messages WHERE direction = 'inbound'",
    )
    stored = Counter(wa_id for wa_id, _ in inbound)
    assert set(stored) == set(ids) and max(stored.values()) == 1  # nothing lost, nothing twice

    # Forwarded: every message, each request keyed by its WhatsApp id.
    assert all(key is not None for key, _ in ai.calls)
    forwarded = Counter(key for key, _ in ai.calls)
    assert set(forwarded) == set(ids)
    repeated = {key for key, n in forwarded.items() if n > 1}
    assert len(repeated) <= 1 and all(forwarded[key] == 2 for key in repeated)
    assert all(ids[key] == text for key, text in ai.calls)  # the key names its own message

    replies = Counter(r["text"] for r in sent if r["kind"] == "text")
    assert max(replies.values()) == 1
    # Replied: at most once each. A reply in flight at the kill is "unknown" (it may or may
    # not have gone out, and is never sent again); every other message is "replied".
    unreplied = {wa for wa, text in ids.items() if replies[f"re: {text}"] == 0}
    unknown = {wa for wa, outcome in inbound if outcome == "reply_unknown"}
    assert len(unknown) <= 1 and unreplied <= unknown
    assert Counter(outcome for _, outcome in inbound)["replied"] == BURST - len(unknown)
    print(
        f"burst: {acked_at_kill} acknowledged at the kill, {len(repeated)} forwarded twice"
        f" (same key), {len(unknown)} reply unknown, {sum(replies.values())} replies"
    )
    await stop(daemon)
    await stop(simnet)


async def test_postgres_killed_for_20_s_under_load_loses_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """PostgreSQL SIGKILLed for 20 s while messages keep arriving: the agent does not crash,
    requests answer 503 at once while it is down (200 before and after), and within 2 s of
    its return everything that arrived meanwhile is stored and forwarding has resumed; every
    message is then forwarded and replied to once."""
    server = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    dsn = await trio.to_thread.run_sync(server.start)
    ai = await start_echo_ai(nursery)
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    config = tmp_path / "gatewayd.toml"
    write_config(config, dsn, simnet.base_url, ai.url)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    auth = {"Authorization": "Bearer k"}
    send = {"to": CUSTOMER, "message": "from the API"}
    async with (
        httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim,
        httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
    ):
        await link_agent(daemon, api, sim, "steady", "628123450010")

        ids: dict[str, str] = {}  # WhatsApp id -> text
        times: dict[str, float] = {}

        async def load(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            for n in itertools.count():
                r = await sim.post(
                    "/_sim/agents/steady/inject",
                    json={"from": CUSTOMER, "text": f"m{n}", "wait": False},
                )
                assert r.status_code in (200, 202), r.text
                ids[r.json()["data"]["id"]] = f"m{n}"
                times[r.json()["data"]["id"]] = trio.current_time()
                await trio.sleep(0.33)

        async with trio.open_nursery() as background:
            await background.start(load)
            await trio.sleep(2)
            assert (await api.get("/health")).status_code == 200
            assert (
                await api.post("/agents/steady/messages", json=send, headers=auth)
            ).status_code == 200

            os.kill(server.pid or 0, signal.SIGKILL)
            down_at = trio.current_time()
            during: list[tuple[int, int, str]] = []
            while trio.current_time() - down_at < 20:
                await trio.sleep(1)
                health = await api.get("/health")
                message = await api.post("/agents/steady/messages", json=send, headers=auth)
                during.append((health.status_code, message.status_code, message.text))

            await trio.to_thread.run_sync(server.stop)
            await trio.to_thread.run_sync(server.start)
            up_at = trio.current_time()
            arrived_while_down = [wa for wa, t in times.items() if t < up_at]
            with trio.fail_after(2):  # the bound on recovery
                while (await api.get("/health")).status_code != 200:
                    await trio.sleep(0.05)
                healthy_in = trio.current_time() - up_at
                while await stored_count(dsn, arrived_while_down) < len(arrived_while_down):
                    await trio.sleep(0.05)
            recovered_in = trio.current_time() - up_at
            forwarding_in = min(t for t in ai.times if t > up_at) - up_at
            assert forwarding_in <= 2
            r = await api.post("/agents/steady/messages", json=send, headers=auth)
            assert r.status_code == 200, r.text
            await trio.sleep(2)
            background.cancel_scope.cancel()

        # The first reading can still see a connection the kill had not yet broken.
        assert all(h == 503 and m == 503 for h, m, _ in during[1:]), during
        assert all("SERVICE_UNAVAILABLE" in text for _, _, text in during[1:])
        await wait_all_handled(dsn, len(ids))
        sent = (await sim.get("/_sim/agents/steady/sent")).json()["data"]

    inbound = await trio.to_thread.run_sync(
        query, dsn, "SELECT wa_message_id, outcome FROM messages WHERE direction = 'inbound'"
    )
    stored = Counter(wa_id for wa_id, _ in inbound)
    assert set(stored) == set(ids) and max(stored.values()) == 1
    forwarded = Counter(key for key, _ in ai.calls)
    assert set(forwarded) == set(ids)
    replies = Counter(
        r["text"] for r in sent if r["kind"] == "text" and r["text"].startswith("re: ")
    )
    assert all(replies[f"re: {text}"] == 1 for text in ids.values())
    assert daemon.events("gatewayd.agent.crashed") == []
    print(
        f"outage: {len(ids)} messages, {len(arrived_while_down)} before the return,"
        f" healthy {healthy_in:.2f} s, stored {recovered_in:.2f} s, forwarding"
        f" {forwarding_in:.2f} s after it, {sum(forwarded.values()) - len(forwarded)}"
        " forwarded twice (same key)"
    )
    await stop(daemon)
    await stop(simnet)
    await trio.to_thread.run_sync(server.stop)


async def stored_count(dsn: str, wa_ids: list[str]) -> int:
    def count() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM messages WHERE wa_message_id = ANY(%s)", (wa_ids,)
            ).fetchone()
        return int(row[0]) if row else 0

    return await trio.to_thread.run_sync(count)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_the_embedded_postgres_is_restarted_and_dies_with_the_daemon(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """With its own embedded PostgreSQL (the default): a SIGKILLed postmaster is restarted and
    a message arriving meanwhile is stored once; a SIGKILLed daemon takes its postmaster with
    it, and the next start comes up on the same data (no "already running")."""
    ai = await start_echo_ai(nursery)
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    config = tmp_path / "gatewayd.toml"
    write_config(config, "", simnet.base_url, ai.url)  # no URL: the embedded PostgreSQL
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=60) as sim:
        async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api:
            await link_agent(daemon, api, sim, "own", "628123450011")
        inject = {"from": CUSTOMER, "text": "before"}
        assert (await sim.post("/_sim/agents/own/inject", json=inject)).status_code == 200

        postmaster = daemon.find("gatewayd.db.embedded.started")
        assert postmaster is not None
        os.kill(postmaster["pid"], signal.SIGKILL)
        inject = {"from": CUSTOMER, "text": "during"}
        assert (await sim.post("/_sim/agents/own/inject", json=inject)).status_code == 200
        restarted = await daemon.wait_for("gatewayd.db.embedded.restarted")

        daemon.kill()
        await daemon.wait()
        with trio.fail_after(15):  # the parent-death signal ends it
            while alive(restarted["pid"]):
                await trio.sleep(0.05)
        daemon = await Daemon.start(nursery, ["--config", str(config)])
        await wait_line(daemon, "gatewayd.agent.status", agentId="own", status="connected")
        inject = {"from": CUSTOMER, "text": "after"}
        assert (await sim.post("/_sim/agents/own/inject", json=inject)).status_code == 200
        async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api:
            assert (await api.get("/health")).status_code == 200
        with trio.fail_after(60):
            while {text for _, text in ai.calls} != {"before", "during", "after"}:
                await trio.sleep(0.1)
    # A repeat only for a message whose AI answer was not yet recorded at the kill.
    forwarded = Counter(text for _, text in ai.calls)
    assert sum(forwarded.values()) - len(forwarded) <= 1 and max(forwarded.values()) <= 2
    await stop(daemon)
    await stop(simnet)
