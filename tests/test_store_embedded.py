"""The embedded PostgreSQL: lifecycle, persistence, and what it exposes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.store.embedded import EmbeddedPostgres, open_embedded_postgres

REPO = Path(__file__).resolve().parents[1]


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def test_keeps_data_across_restarts(tmp_path: Path) -> None:
    """A stopped and restarted server has the same data, password and port."""
    server = EmbeddedPostgres(tmp_path)
    with structlog.testing.capture_logs() as logs:
        dsn = server.start()
    try:
        assert server.running
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('hello')")
    finally:
        server.stop()
    assert not server.running
    server.stop()  # idempotent

    again = EmbeddedPostgres(tmp_path)
    try:
        assert again.start() == dsn  # same password, and the remembered port was free
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("hello",)]
    finally:
        again.stop()

    password = (tmp_path / "pg.password").read_text().strip()
    assert password and password in dsn
    assert stat.S_IMODE((tmp_path / "pg.password").stat().st_mode) == 0o600
    assert "gatewayd.db.embedded.started" in [e["event"] for e in logs]
    assert password not in repr(logs) and password not in repr(server)


def test_refuses_second_start_on_running_data_dir(tmp_path: Path) -> None:
    """A second server object on a data dir in use fails clearly and harms nothing."""
    first = EmbeddedPostgres(tmp_path)
    first.start()
    try:
        second = EmbeddedPostgres(tmp_path)
        with pytest.raises(StoreUnavailable, match="already running"):
            second.start()
        assert not second.running
        second.stop()  # it started nothing, so it stops nothing
        with psycopg.connect(first.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.stop()


def test_refuses_server_left_running_by_a_dead_process(tmp_path: Path) -> None:
    """A server orphaned by a process that exited without stopping it is not started over."""
    script = (
        "import os, sys; from pathlib import Path\n"
        "from gatewayd.store.embedded import EmbeddedPostgres\n"
        "EmbeddedPostgres(Path(sys.argv[1])).start(); os._exit(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    orphan = _postmaster_pid(tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match=f"pid {orphan}.*already running"):
            EmbeddedPostgres(tmp_path).start()
    finally:
        os.kill(orphan, signal.SIGINT)  # fast shutdown
        _wait_gone(orphan)
    server = EmbeddedPostgres(tmp_path)
    server.start()
    server.stop()


def test_starts_after_the_server_was_killed(tmp_path: Path) -> None:
    """A postmaster.pid left by a killed server does not prevent the next start."""
    server = EmbeddedPostgres(tmp_path)
    dsn = server.start()
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE survived (v int)")
    pid = _postmaster_pid(tmp_path)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert not server.running
    server.stop()
    assert (tmp_path / "pg" / "postmaster.pid").exists()

    restarted = EmbeddedPostgres(tmp_path)
    try:
        restarted.start()
        with psycopg.connect(restarted.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM survived").fetchone() == (0,)
    finally:
        restarted.stop()


def test_listens_only_on_loopback_tcp(pg_server: EmbeddedPostgres) -> None:
    """The server binds 127.0.0.1 alone and has no Unix socket."""
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
    # 127.0.0.2 is loopback too, so only a socket bound to 127.0.0.1 alone refuses it.
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.2", pg_server.port))


def test_requires_the_password(pg_server: EmbeddedPostgres) -> None:
    """Connections without the right password are rejected (scram-sha-256)."""
    for password in ("", "wrong"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host="127.0.0.1",
                port=pg_server.port,
                dbname="gatewayd",
                user="gatewayd",
                password=password,
            ).close()
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)


async def test_open_embedded_postgres_stops_when_cancelled(tmp_path: Path) -> None:
    """The async context manager serves the configured port and stops even when cancelled."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.CancelScope() as scope:
        async with open_embedded_postgres(tmp_path, port=port) as server:
            assert server.running and f"@127.0.0.1:{port}/gatewayd" in server.dsn
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert not server.running
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
