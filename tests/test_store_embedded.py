"""The embedded PostgreSQL: lifecycle, persistence, and what it exposes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.store.embedded import (
    SYSTEM_USER,
    EmbeddedPostgres,
    find_postgres_bin,
    open_embedded_postgres,
)
from gatewayd.store.embedded_os import choose_run_as, run_program

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


def _run_pg_ctl_start(data_dir: Path, port: int) -> None:
    """Start the cluster the way gatewayd used to: daemonized by pg_ctl, no parent-death signal."""
    pgdata = data_dir / "pg"
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    run_program(
        find_postgres_bin() / "pg_ctl",
        ["start", "-D", str(pgdata), "-w", "-l", str(pgdata / "pg_ctl.log"), "-o", options],
        run_as=choose_run_as(pgdata, SYSTEM_USER),
        timeout=60,
    )


def test_stops_a_server_left_running_on_the_data_dir(tmp_path: Path) -> None:
    """A postmaster left running on the data dir by a process that is gone is stopped, not refused."""
    first = EmbeddedPostgres(tmp_path)
    with psycopg.connect(first.start()) as conn:
        conn.execute("CREATE TABLE kept (v int)")
    port = first.port
    first.stop()
    _run_pg_ctl_start(tmp_path, port)
    leftover = _postmaster_pid(tmp_path)

    server = EmbeddedPostgres(tmp_path)
    try:
        with structlog.testing.capture_logs() as logs:
            dsn = server.start()
        _wait_gone(leftover)
        assert server.pid != leftover
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        server.stop()
    stopped = [e for e in logs if e["event"] == "gatewayd.db.embedded.leftover_stopped"]
    assert [e["pid"] for e in stopped] == [leftover]


_DAEMON = """
import sys, trio
from pathlib import Path
from gatewayd.store.embedded import open_embedded_postgres

async def main() -> None:
    async with open_embedded_postgres(Path(sys.argv[1])) as server:
        print("POSTMASTER", server.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def _start_daemon_like(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """A child that runs the embedded server from Trio; returns it and the postmaster pid."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _DAEMON, str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("POSTMASTER "):
            return child, int(line.split()[1])
    child.wait()
    raise AssertionError(f"the child exited with {child.returncode} before the server ran")


def test_server_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    """kill -9 of the process running the server stops the postmaster, and the next start works."""
    child, postmaster = _start_daemon_like(tmp_path)
    # As root the server runs as gatewayd-postgres: the parent-death signal survived
    # the change of user.
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()  # type: ignore[union-attr]
    _wait_gone(postmaster)

    server = EmbeddedPostgres(tmp_path)
    try:
        with psycopg.connect(server.start()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_server_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """A server started from a short-lived thread keeps running after that thread exits."""
    server = EmbeddedPostgres(tmp_path)
    thread = threading.Thread(target=server.start)
    thread.start()
    thread.join()
    try:
        # The parent-death signal follows the thread that forked; were it this one,
        # the server would be shutting down by now.
        time.sleep(0.5)
        assert server.running
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
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
