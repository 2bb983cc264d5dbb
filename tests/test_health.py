"""/health against a database that goes away, the embedded PostgreSQL of a plain
``gatewayd run``, and graceful draining of in-flight requests."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil
import trio
import trio.testing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.daemon import Gateway, run_gateway
from gatewayd.http.app import create_app, hypercorn_config, serve_http
from gatewayd.http.routes_ops import HEALTH_INTERVAL
from gatewayd.store.embedded import EmbeddedPostgres
from tests.daemon import Daemon
from tests.gateway_fixtures import make_config


async def test_health_is_503_while_the_database_is_down(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """/health answers 503 with database down when PostgreSQL stops (within the health
    reading's interval), and 200 once it is back."""
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    try:
        config = make_config(dsn, database={"health_timeout": 2.0})
        gateway: Gateway = await nursery.start(
            lambda task_status: run_gateway(
                config, environ={}, handle_signals=False, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=gateway.http_binds[0], timeout=30) as client:
            assert (await client.get("/health")).status_code == 200
            await trio.to_thread.run_sync(server.stop)
            # The reading before the stop may answer for up to HEALTH_INTERVAL (routes_ops.py).
            await trio.sleep(HEALTH_INTERVAL)
            r = await client.get("/health")
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert r.json()["components"]["database"]["status"] == "down"
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(30):
                while (await client.get("/health")).status_code != 200:
                    await trio.sleep(0.2)
        gateway.request_stop()
    finally:
        await trio.to_thread.run_sync(server.stop)


def postgres_processes_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (
            proc.info["name"] == "postgres"
            and str(data_dir) in cmdline
            and proc.status() != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


async def test_plain_run_uses_embedded_postgres_kept_across_restarts(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Without database.url the daemon runs its own PostgreSQL, stops it on exit, and finds its data again."""
    config = tmp_path / "gatewayd.toml"
    data_dir = tmp_path / "data"
    config.write_text(
        f'[server]\nport = 0\n[database]\ndata_dir = "{data_dir}"\n[log]\nformat = "json"\n[whatsapp]\nmode = "sim"\n'
    )
    env = {"DB_URL": "", "GATEWAYD_DATABASE_URL": ""}
    daemon = await Daemon.start(nursery, ["--config", str(config)], env)
    async with httpx.AsyncClient(base_url=daemon.base_url) as client:
        r = await client.get("/health")
        assert r.status_code == 200 and r.json()["components"]["database"]["status"] == "up"
    assert daemon.find("gatewayd.db.migrated") is not None
    assert postgres_processes_for(data_dir)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    assert not postgres_processes_for(data_dir)

    again = await Daemon.start(nursery, ["--config", str(config)], env)
    assert again.find("gatewayd.db.embedded.initialized") is None  # same cluster, no initdb
    assert again.find("gatewayd.db.migrated") is None  # schema already there
    again.signal(signal.SIGINT)
    assert await again.wait() == 0
    assert not postgres_processes_for(data_dir)


async def test_in_flight_requests_finish_during_the_grace_period(
    running: object, nursery: trio.Nursery
) -> None:
    """After a stop is requested, a request already running completes; new connections are refused."""
    from tests.gateway_fixtures import Running

    assert isinstance(running, Running)
    started, release = trio.Event(), trio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await release.wait()  # in flight until the test has seen new connections refused
        return JSONResponse({"data": "finished"})

    app = create_app(running.gateway.services, running.gateway, extra_routes=[Route("/slow", slow)])
    stop = trio.Event()
    binds = await nursery.start(serve_http, app, hypercorn_config("127.0.0.1", 0, 5.0), stop.wait)
    result: dict[str, object] = {}

    async def call() -> None:
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            r = await client.get("/slow")
            result["status"] = r.status_code
            result["body"] = r.json()

    async with trio.open_nursery() as inner:
        inner.start_soon(call)
        await started.wait()
        stop.set()
        await trio.testing.wait_all_tasks_blocked()  # hypercorn has closed its listener
        try:
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                await client.get("/health")
            refused = False
        except httpx.TransportError:
            refused = True
        release.set()
    assert result == {"status": 200, "body": {"data": "finished"}}
    assert refused
