"""A real ``gatewayd run`` subprocess: reload on SIGHUP, stop on SIGTERM, sd_notify."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.daemon import Daemon


def write_config(
    path: Path,
    pg_dsn: str,
    *,
    level: str = "info",
    body_limit: int = 16777216,
    port: int = 0,
    extra: str = "",
) -> None:
    path.write_text(
        f"""
[server]
port = {port}
body_limit = {body_limit}
shutdown_grace = 3.0
cors_origins = []

[database]
url = "{pg_dsn}"
pool_max = 3

[log]
level = "{level}"
format = "json"

[whatsapp]
mode = "sim"
{extra}
"""
    )


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[trio.socket.SocketType]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


async def next_notification(
    sock: trio.socket.SocketType, *, skip_watchdog: bool = True
) -> dict[str, str]:
    with trio.fail_after(30):
        while True:
            data = await sock.recv(4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if skip_watchdog and fields.keys() == {"WATCHDOG"}:
                continue
            return fields


async def test_sighup_applies_valid_and_rejects_invalid_config(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """SIGHUP applies live keys, reports restart-only keys, and keeps the old config on errors."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn, body_limit=4096)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    try:
        async with httpx.AsyncClient(base_url=daemon.base_url) as client:
            assert (await client.post("/x", content=b"a" * 5000)).status_code == 413

            # A valid change: body limit and level apply live, the port needs a restart.
            write_config(config, pg_dsn, body_limit=65536, level="debug", port=1)
            mark = len(daemon.lines)
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for("gatewayd.config.reloaded", after=mark)
            changed = {e["key"]: e for e in daemon.events("gatewayd.config.changed")}
            assert changed["server.body_limit"]["new"] == 65536
            assert changed["log.level"]["new"] == "debug"
            restart = {e["key"] for e in daemon.events("gatewayd.config.restart_required")}
            assert restart == {"server.port"}
            r = await client.post("/x", content=b"a" * 5000)
            assert r.status_code == 404  # past the body limit now: the route is simply unknown

            # An invalid file: every error is logged and the old config keeps running.
            config.write_text('[server]\nbody_limit = "big"\nbogus = 1\n')
            mark = len(daemon.lines)
            daemon.signal(signal.SIGHUP)
            rejected = await daemon.wait_for("gatewayd.config.rejected", after=mark)
            assert sorted(rejected["errors"]) == [
                "server.body_limit: expected int, got str",
                "server.bogus: unknown key",
            ]
            assert rejected["level"] == "error"
            assert (await client.post("/x", content=b"a" * 5000)).status_code == 404
            assert (await client.get("/health")).status_code == 200
    finally:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_sigterm_stops_gracefully_with_exit_0(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """SIGTERM stops accepting connections and exits 0 within the grace period."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    daemon.signal(signal.SIGTERM)
    begin = time.monotonic()
    assert await daemon.wait(timeout=30) == 0
    assert daemon.find("gatewayd.stopping") is not None
    assert daemon.find("gatewayd.stopped") is not None
    # Bounded by the 3 s grace plus process teardown, not by any fixed sleep.
    assert time.monotonic() - begin < 3.0 + 15
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=daemon.base_url) as client:
            await client.get("/health")


async def test_sd_notify_sequence(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery, notify_socket: trio.socket.SocketType
) -> None:
    """With NOTIFY_SOCKET the daemon says READY, RELOADING+MONOTONIC_USEC, READY, STOPPING and feeds the watchdog."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    daemon = await Daemon.start(nursery, ["--config", str(config)], env)
    seen: list[dict[str, str]] = []
    while not any("READY" in n for n in seen):
        seen.append(await next_notification(notify_socket))
    assert all("STATUS" in n for n in seen)  # "starting…" lines come first
    assert seen[-1]["READY"] == "1"

    daemon.signal(signal.SIGHUP)
    reloading = await next_notification(notify_socket)
    assert reloading["RELOADING"] == "1"
    usec = int(reloading["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
    ready = await next_notification(notify_socket)
    assert ready["READY"] == "1"

    daemon.signal(signal.SIGTERM)
    stopping = await next_notification(notify_socket)
    assert stopping["STOPPING"] == "1"
    assert await daemon.wait() == 0


async def test_watchdog_is_fed_at_half_the_interval(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery, notify_socket: trio.socket.SocketType
) -> None:
    """WATCHDOG=1 arrives repeatedly when WATCHDOG_USEC is set."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    daemon = await Daemon.start(nursery, ["--config", str(config)], env)
    pings = 0
    with trio.fail_after(30):
        while pings < 3:
            fields = await next_notification(notify_socket, skip_watchdog=False)
            pings += fields.get("WATCHDOG") == "1"
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0


async def test_without_notify_socket_nothing_is_sent() -> None:
    """Notifier is inert without NOTIFY_SOCKET: no socket is even opened."""
    from gatewayd.notify import Notifier

    notifier = Notifier({})
    assert not notifier.enabled
    await notifier.ready()
    await notifier.stopping()
    assert notifier._sock is None
    watchdog = Notifier({"WATCHDOG_USEC": "1000000"})
    assert watchdog.watchdog_interval == 0.5
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
