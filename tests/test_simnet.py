"""``gatewayd simnet``: the simulated network in its own process, outliving the daemon.

The simnet runs as a real subprocess; the daemon runs in-process on its URL (``run_gateway``
with ``whatsapp.sim_url``) or, where it must be killed, as a subprocess (``tests/daemon.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import trio

from gatewayd.daemon import Gateway, run_gateway
from gatewayd.nursery.commands import Outgoing
from gatewayd.store import agents as agents_store
from tests.daemon import ROOT, Daemon
from tests.gateway_fixtures import make_config

CUSTOMER = "6281111111111"


# --------------------------------------------------------------------------- processes


async def start_simnet(nursery: trio.Nursery, state: Path, port: int = 0) -> Daemon:
    """A ``python -m gatewayd simnet`` child; its base URL from its listening line."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gatewayd", "simnet", "--listen", f"127.0.0.1:{port}",
         "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAYD_LOG_FORMAT": "json"},
        cwd=str(ROOT),
    )  # fmt: skip
    simnet = Daemon(process)
    nursery.start_soon(simnet._read)
    listening = await simnet.wait_for("gatewayd.simnet.listening", timeout=60)
    simnet.base_url = listening["binds"][0]
    return simnet


async def stop(process: Daemon, signum: signal.Signals = signal.SIGTERM) -> None:
    process.signal(signum)
    await process.wait()


async def wait_line(process: Daemon, event: str, *, after: int = 0, **fields: Any) -> int:
    """Wait for a log line of ``event`` with ``fields``; returns the index after it."""
    index = after
    while True:
        line = await process.wait_for(event, after=index)
        index = next(i for i in range(index, len(process.lines)) if process.lines[i] is line) + 1
        if all(line.get(k) == v for k, v in fields.items()):
            return index


@asynccontextmanager
async def gateway_on(pg_dsn: str, sim_url: str) -> AsyncIterator[Gateway]:
    """The daemon, in-process, on the simnet at ``sim_url``; stopped on exit."""
    config = make_config(pg_dsn, whatsapp={"mode": "sim", "sim_url": sim_url})
    async with trio.open_nursery() as nursery:
        gateway: Gateway = await nursery.start(
            lambda task_status: run_gateway(
                config, environ={}, handle_signals=False, task_status=task_status
            )
        )
        yield gateway
        gateway.request_stop()


async def wait_connected(gateway: Gateway, agent_id: str) -> None:
    with gateway.bus.subscribe(agent_id) as events:
        handle = gateway.agents.get(agent_id)
        if handle is not None and handle.connected:
            return
        async for event in events:
            if event.kind == "status" and event.data["status"] == "connected":
                return


async def pair(gateway: Gateway, sim: httpx.AsyncClient, agent_id: str, phone: str) -> None:
    """Create the agent, wait for its QR, scan it on the simnet, wait until connected."""
    await agents_store.create_agent(
        gateway.db, agent_id=agent_id, name=agent_id, user_id="u1", api_key="k"
    )
    with gateway.bus.subscribe(agent_id) as events:
        await gateway.agents.start(agent_id)
        async for event in events:
            if event.kind == "qr":
                break
        r = await sim.post(f"/_sim/agents/{agent_id}/scan", json={"phone": phone})
        assert r.status_code == 200, r.text
        async for event in events:
            if event.kind == "status" and event.data["status"] == "connected":
                break


def inbound_rows(pg_dsn: str, message_id: str) -> int:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE direction = 'inbound' AND wa_message_id = %s",
            (message_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def rows(pg_dsn: str, message_id: str) -> int:
    return await trio.to_thread.run_sync(inbound_rows, pg_dsn, message_id)


async def inject(sim: httpx.AsyncClient, agent_id: str, text: str, **extra: Any) -> httpx.Response:
    body = {"from": CUSTOMER, "text": text, **extra}
    return await sim.post(f"/_sim/agents/{agent_id}/inject", json=body, timeout=60)


# --------------------------------------------------------------------------- tests


async def test_inject_answers_once_the_message_is_stored(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """Inject answers 200 only after the daemon's callback committed the message."""
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await pair(gateway, sim, "bot-a", "628123450001")
            for n in range(5):
                r = await inject(sim, "bot-a", f"hello {n}")
                assert r.status_code == 200, r.text
                assert await rows(pg_dsn, r.json()["data"]["id"]) == 1
    await stop(simnet)


async def test_devices_survive_a_daemon_restart(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """A restarted daemon reconnects its paired agent without a new QR."""
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await pair(gateway, sim, "bot-b", "628123450002")
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await wait_connected(gateway, "bot-b")
            handle = gateway.agents.get("bot-b")
            assert handle is not None and handle.record.device_jid is not None
            assert (await sim.get("/_sim/agents/bot-b/qr")).json()["data"] is None
            await gateway.agents.send(
                "bot-b", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="back")
            )
        sent = (await sim.get("/_sim/agents/bot-b/sent")).json()["data"]
        assert [s["text"] for s in sent if s["kind"] == "text"] == ["back"]
    await stop(simnet)


async def test_messages_injected_while_the_daemon_is_down_arrive_after_it_returns(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """Messages queued while the daemon is down are delivered, in order, when it reconnects."""
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await pair(gateway, sim, "bot-c", "628123450003")
        queued = []
        for n in range(3):
            r = await inject(sim, "bot-c", f"while down {n}", wait=False)
            assert r.status_code == 202, r.text
            queued.append(r.json()["data"]["id"])
        r = await inject(sim, "bot-c", "nobody home", waitSeconds=0.5)
        assert r.status_code == 504 and r.json()["error"]["code"] == "NOT_ACKNOWLEDGED"
        queued.append(r.json()["data"]["id"])
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            r = await inject(sim, "bot-c", "after")
            assert r.status_code == 200, r.text
            # Delivered after the queued ones: once it is stored, so are they.
            for message_id in queued:
                assert await rows(pg_dsn, message_id) == 1
    await stop(simnet)


async def test_simnet_restart_keeps_devices_queue_and_sent_log(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """A simnet killed with SIGKILL comes back with its devices, queued messages and sent log."""
    state = tmp_path / "net.json"
    simnet = await start_simnet(nursery, state)
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        r = await sim.post("/_sim/contacts", json={"phone": CUSTOMER, "pushName": "Ani"})
        lid = r.json()["data"]["lid"]
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await pair(gateway, sim, "bot-d", "628123450004")
            await gateway.agents.send(
                "bot-d", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="one")
            )
        r = await inject(sim, "bot-d", "queued", wait=False)
        queued = r.json()["data"]
        devices = (await sim.get("/_net/devices")).json()["data"]
    await stop(simnet, signal.SIGKILL)

    simnet = await start_simnet(nursery, state)
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        assert (await sim.get("/_net/devices")).json()["data"] == devices
        sent = (await sim.get("/_sim/agents/bot-d/sent")).json()["data"]
        assert [s["text"] for s in sent if s["kind"] == "text"] == ["one"]
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await wait_connected(gateway, "bot-d")
            r = await inject(sim, "bot-d", "after restart")
            assert r.status_code == 200, r.text
            assert await rows(pg_dsn, queued["id"]) == 1
            assert queued["sender_lid"] == lid and queued["push_name"] == "Ani"
            handle = gateway.agents.get("bot-d")
            assert handle is not None
            assert await handle.client.pn_for_lid(lid) == f"{CUSTOMER}@s.whatsapp.net"
    await stop(simnet)


# --------------------------------------------------------------------------- kill -9


class PausableProxy:
    """A TCP relay to PostgreSQL whose traffic can be held, so a commit never completes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = trio.Event()
        self.flowing.set()
        self._relays: set[trio.CancelScope] = set()

    async def serve(self, nursery: trio.Nursery) -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, self._relay, listeners)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    def pause(self) -> None:
        self.flowing = trio.Event()

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            self._relays.add(nursery.cancel_scope)
            nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)
        self._relays.discard(nursery.cancel_scope)

    def cut(self) -> None:
        """Close every relayed connection, dropping what it holds (held bytes never arrive:
        a statement the server never got is not executed)."""
        for scope in self._relays:
            scope.cancel()

    async def _pipe(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await self.flowing.wait()
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def write_daemon_config(path: Path, pg_dsn: str, sim_url: str, extra: str = "") -> None:
    """A daemon config on ``pg_dsn`` (empty: the embedded PostgreSQL) and the simnet at
    ``sim_url``; ``extra`` is more TOML appended as it is."""
    path.write_text(
        f"""
[server]
port = 0
shutdown_grace = 2.0

[database]
url = "{pg_dsn}"
data_dir = "{path.parent / "data"}"
pool_max = 6

[log]
format = "json"

[whatsapp]
mode = "sim"
sim_url = "{sim_url}"
{extra}"""
    )


async def link_agent(
    daemon: Daemon, api: httpx.AsyncClient, sim: httpx.AsyncClient, agent_id: str, phone: str
) -> None:
    """Create the session over the agents API, scan its QR on the simnet, wait until connected."""
    r = await api.post("/sessions", json={"userId": "u1", "agentId": agent_id, "apikey": "k"})
    assert r.status_code == 201, r.text
    r = await sim.post(f"/_sim/agents/{agent_id}/scan", json={"phone": phone})
    assert r.status_code == 200, r.text
    await wait_line(daemon, "gatewayd.agent.status", agentId=agent_id, status="connected")


async def test_unacknowledged_message_is_redelivered_after_kill_9(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """A message whose callback had not returned when the daemon was SIGKILLed arrives again
    after the restart, and is stored once."""
    dsn = urlsplit(pg_dsn)
    proxy = PausableProxy(dsn.port or 5432)
    port = await proxy.serve(nursery)
    proxied = dsn._replace(netloc=f"{dsn.netloc.rpartition(':')[0]}:{port}")
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    config = tmp_path / "gatewayd.toml"
    write_daemon_config(config, proxied.geturl(), simnet.base_url)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    async with (
        httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim,
        httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
    ):
        await link_agent(daemon, api, sim, "bot-k", "628123450005")

        proxy.pause()  # the daemon's commit of the next message cannot finish
        r = await inject(sim, "bot-k", "in flight", waitSeconds=1)
        assert r.status_code == 504, r.text
        in_flight = r.json()["data"]["id"]
        daemon.kill()
        await daemon.wait()
        proxy.cut()  # the held insert never reaches the server (it would commit on its own)
        proxy.flowing.set()
        assert await rows(pg_dsn, in_flight) == 0

        daemon = await Daemon.start(nursery, ["--config", str(config)])
        r = await inject(sim, "bot-k", "next")
        assert r.status_code == 200, r.text
        assert await rows(pg_dsn, in_flight) == 1
        assert await rows(pg_dsn, r.json()["data"]["id"]) == 1
    await stop(daemon)
    await stop(simnet)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_agent_reconnects_when_the_simnet_comes_back(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """An unreachable simnet is a lost connection: the agent reconnects once it is back."""
    state, port = tmp_path / "net.json", free_port()
    simnet = await start_simnet(nursery, state, port)
    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        async with gateway_on(pg_dsn, simnet.base_url) as gateway:
            await pair(gateway, sim, "bot-e", "628123450006")
            with gateway.bus.subscribe("bot-e") as events:
                await stop(simnet, signal.SIGKILL)
                async for event in events:
                    if event.kind == "status" and event.data["status"] == "disconnected":
                        break
                handle = gateway.agents.get("bot-e")
                assert handle is not None and handle.restarts == 0
                simnet = await start_simnet(nursery, state, port)
                async for event in events:
                    if event.kind == "status" and event.data["status"] == "connected":
                        break
            r = await inject(sim, "bot-e", "still here")
            assert r.status_code == 200, r.text
            assert await rows(pg_dsn, r.json()["data"]["id"]) == 1
    await stop(simnet)


async def test_odd_simnet_answers_end_the_connection_without_crashing(
    nursery: trio.Nursery,
) -> None:
    """Malformed answers from the simnet become Disconnected / WhatsAppError, never a crash."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from gatewayd.errors import WhatsAppError
    from gatewayd.whatsapp.port import ClientEvent, Connected, ConnectFailed, Disconnected
    from gatewayd.whatsapp.simnet.client import open_simnet_backend
    from tests.loopback import serve_app

    async def connect(request: Request) -> Response:
        device = (await request.json())["device"]
        if device == "odd":
            return JSONResponse({"data": {"failed": {"kind": "martian"}}})
        return JSONResponse({"data": {"session": "s1"}})

    async def events(request: Request) -> Response:
        batch = [{"seq": 1, "event": {"kind": "connected"}}, {"seq": 2, "event": {"kind": "?"}}]
        if (await request.json())["ack"] >= 2:
            return PlainTextResponse("<html>oops</html>", status_code=500)
        return JSONResponse({"data": {"events": batch, "closed": False}})

    async def garbage(request: Request) -> Response:
        return JSONResponse({"data": {"messageId": 5}})

    app = Starlette(
        routes=[
            Route("/_net/agents/a/connect", connect, methods=["POST"]),
            Route("/_net/sessions/s1/events", events, methods=["POST"]),
            Route("/_net/agents/a/send", garbage, methods=["POST"]),
        ]
    )
    url = await serve_app(nursery, app)
    send, receive = trio.open_memory_channel[ClientEvent](10)
    async with open_simnet_backend(url) as backend:
        client = backend.client("a")
        with pytest.raises(ConnectFailed) as failed:
            await client.run("odd", send)
        assert isinstance(failed.value.event, Disconnected) and not failed.value.terminal
        end = await client.run("628:1@s.whatsapp.net", send)
        with pytest.raises(WhatsAppError, match="odd answer"):
            await client.send_text("628@s.whatsapp.net", "hi")
    got = [receive.receive_nowait() for _ in range(3)]
    assert isinstance(got[0], Disconnected) and isinstance(got[1], Connected)
    assert got[2] is end and isinstance(end, Disconnected)


def test_sim_url_must_be_a_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    """whatsapp.sim_url and ``--whatsapp sim=URL`` refuse anything but an http(s) base URL."""
    from gatewayd.cli import main
    from gatewayd.config import Config
    from gatewayd.errors import ConfigError

    ok = Config.from_mapping({"whatsapp": {"mode": "sim", "sim_url": "http://127.0.0.1:4000"}})
    assert ok.whatsapp.sim_url == "http://127.0.0.1:4000"
    with pytest.raises(ConfigError, match="whatsapp.sim_url"):
        Config.from_mapping({"whatsapp": {"mode": "sim", "sim_url": "http://h:1/path?q"}})
    assert main(["run", "--config", str(ROOT / "gatewayd.toml"), "--whatsapp", "sim=ftp://x"]) == 2
    assert "whatsapp.sim_url" in capsys.readouterr().err
