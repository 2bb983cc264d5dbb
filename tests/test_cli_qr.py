"""`gatewayd qr AGENT_ID` against a real daemon subprocess in sim mode."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import segno
import trio

from tests.daemon import ROOT, Daemon

ADMIN = "admin-secret-for-the-cli-test"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def write_config(path: Path, pg_dsn: str, *, admin_token: str = ADMIN) -> None:
    path.write_text(
        f"""
[server]
port = 0
shutdown_grace = 3.0
admin_token = "{admin_token}"

[database]
url = "{pg_dsn}"
pool_max = 3

[log]
format = "json"

[sessions]
qr_wait = 10.0

[whatsapp]
mode = "sim"
"""
    )


async def gatewayd_qr(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as an operator would, from ``cwd`` (its gatewayd.toml only via --config)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYD_", "ADMIN"))},
        "PYTHONPATH": str(ROOT),
    }
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "gatewayd", "qr", *args],
            cwd=str(cwd),
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


@asynccontextmanager
async def sim_daemon(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> AsyncIterator[tuple[Daemon, Path, httpx.AsyncClient]]:
    """A daemon in sim mode with an admin token and the session ``bot-q`` showing its QR."""
    config = tmp_path / "daemon.toml"  # not ./gatewayd.toml: the CLI runs in tmp_path
    write_config(config, pg_dsn)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    try:
        async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api:
            r = await api.post(
                "/sessions", json={"userId": "u1", "agentId": "bot-q", "apikey": "k"}, headers=AUTH
            )
            assert r.status_code == 201, r.text
            yield daemon, config, api
    finally:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_gatewayd_qr_prints_the_qr_the_daemon_shows(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """The QR the agent shows is drawn in the terminal, or given as text with --payload."""
    async with sim_daemon(tmp_path, pg_dsn, nursery) as (daemon, config, api):
        shown = (await api.get("/_sim/agents/bot-q/qr")).json()["data"]
        assert shown is not None
        cli = ("--config", str(config), "--url", daemon.base_url)
        result = await gatewayd_qr(tmp_path, "bot-q", *cli, "--payload")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().strip() == shown["payload"]

        result = await gatewayd_qr(tmp_path, "bot-q", *cli)
        assert result.returncode == 0, result.stderr
        drawn = io.StringIO()
        segno.make_qr(shown["payload"], error="m", boost_error=True).terminal(
            out=drawn, compact=True
        )
        assert result.stdout.decode().startswith(drawn.getvalue())


async def test_gatewayd_qr_says_why_there_is_no_qr(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """Refused, unknown or connected exits 1 with the reason; an unreachable daemon exits 2."""
    async with sim_daemon(tmp_path, pg_dsn, nursery) as (daemon, config, api):
        cli = ("--config", str(config), "--url", daemon.base_url)
        # Without the admin token (no config given): the daemon refuses.
        result = await gatewayd_qr(tmp_path, "bot-q", "--url", daemon.base_url)
        assert result.returncode == 1
        assert "UNAUTHORIZED" in result.stderr.decode()

        result = await gatewayd_qr(tmp_path, "nobody", *cli)
        assert result.returncode == 1
        assert "SESSION_NOT_FOUND" in result.stderr.decode()

        r = await api.post("/_sim/agents/bot-q/scan", json={"phone": "6281234560001"})
        assert r.status_code == 200, r.text
        with trio.fail_after(30):
            while (await api.get("/sessions/bot-q", headers=AUTH)).json()["data"][
                "status"
            ] != "connected":
                await trio.sleep(0.1)
        result = await gatewayd_qr(tmp_path, "bot-q", *cli)
        assert result.returncode == 1
        assert "status: connected" in result.stderr.decode()
        assert result.stdout == b""

    unreachable = f"http://127.0.0.1:{free_port()}"
    result = await gatewayd_qr(tmp_path, "bot-q", "--config", str(config), "--url", unreachable)
    assert result.returncode == 2
    assert "unreachable" in result.stderr.decode()
