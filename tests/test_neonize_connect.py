"""The neonize backend against the real embedded PostgreSQL, and the offline connect path.

This machine has no internet: neonize's connect fails at the DNS lookup of web.whatsapp.com with
a ``NeonizeError``, which is the path a daemon takes whenever WhatsApp is unreachable.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import psycopg
import pytest
import structlog
import trio
import trio.testing

from gatewayd.errors import NotConnected, WhatsAppError
from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.neonize.env import import_neonize
from gatewayd.whatsapp.neonize.gate import FfiGate
from gatewayd.whatsapp.neonize.session import Session
from gatewayd.whatsapp.port import ClientEvent, Connected, ConnectFailed, Disconnected, LoggedOut
from tests.test_neonize_stress import fake_device

import_neonize()  # first, so neonize's import-time pipe leak is cleaned up (see neonize_env)

DEVICE = "628111000111:7@s.whatsapp.net"
ROLE = "gatewayd_whatsmeow"


@pytest.fixture
async def backend(pg_dsn: str) -> AsyncIterator[NeonizeBackend]:
    """A neonize backend on a fresh database, its store prepared as at daemon start."""
    async with open_neonize_backend(pg_dsn, embedded=True, idle_session_timeout="1s") as opened:
        yield opened


def _scalar(dsn: str, query: str, *args: object) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, args).fetchone()
        return None if row is None else row[0]


def _neonize_connections(dsn: str) -> int:
    count = _scalar(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = current_database()",
        ROLE,
    )
    assert isinstance(count, int)
    return count


async def test_store_is_prepared_in_its_own_schema_and_role(
    backend: NeonizeBackend, pg_dsn: str
) -> None:
    """whatsmeow's tables live in their own schema, owned by a role with an idle timeout."""
    tables = _scalar(
        pg_dsn,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'whatsmeow'"
        " AND table_name LIKE 'whatsmeow%%'",
    )
    assert tables == 17
    assert (
        _scalar(
            pg_dsn,
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name LIKE 'whatsmeow%%'",
        )
        == 0
    )
    config = _scalar(pg_dsn, "SELECT rolconfig FROM pg_roles WHERE rolname = %s", ROLE)
    assert config == ["idle_session_timeout=1s"]
    assert "search_path=whatsmeow" in backend.store.url
    assert "password" not in repr(backend.store) and backend.store.url.split(":")[2] not in repr(
        backend
    )
    assert await backend.known_devices() == frozenset()


async def test_known_devices_and_forget_device(backend: NeonizeBackend, pg_dsn: str) -> None:
    """Stored devices are listed by JID; forgetting one removes it and is idempotent."""
    fake_device(pg_dsn, "whatsmeow", DEVICE)
    assert await backend.known_devices() == {DEVICE}
    await backend.forget_device(DEVICE)
    await backend.forget_device(DEVICE)
    assert await backend.known_devices() == frozenset()


async def test_external_server_without_idle_timeout_is_warned_about(pg_dsn: str) -> None:
    """With an external server, a role without idle_session_timeout is logged as a warning."""
    with structlog.testing.capture_logs() as logs:
        async with open_neonize_backend(pg_dsn, embedded=False) as backend:
            assert backend.store.role == "gatewayd"
    assert any(e["event"] == "gatewayd.whatsapp.store.idle_timeout_missing" for e in logs)


async def test_unknown_device_fails_without_reaching_neonize(backend: NeonizeBackend) -> None:
    """Running a JID that is not in the store ends in LoggedOut(on_connect) instead of an abort."""
    send, recv = trio.open_memory_channel[ClientEvent](10)
    with pytest.raises(ConnectFailed) as info:
        await backend.client("agent-1").run(DEVICE, send)
    assert info.value.event == LoggedOut("logged_out", on_connect=True)
    assert info.value.terminal
    assert recv.receive_nowait() == info.value.event


async def test_offline_connect_fails_cleanly_and_calls_refuse(
    backend: NeonizeBackend, pg_dsn: str
) -> None:
    """A DNS failure surfaces as ConnectFailed(Disconnected) from a NeonizeError; calls say NotConnected."""
    from neonize.exc import NeonizeError

    fake_device(pg_dsn, "whatsmeow", DEVICE)
    client = backend.client("agent-1")
    assert backend.client("agent-1") is client
    send, recv = trio.open_memory_channel[ClientEvent](10)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConnectFailed) as info:
            await nursery.start(client.run, DEVICE, send)
    event = info.value.event
    assert isinstance(event, Disconnected) and "web.whatsapp.com" in event.reason
    assert not info.value.terminal
    assert isinstance(info.value.__cause__, NeonizeError)
    assert recv.receive_nowait() == event
    # Not connected: every call is refused before it reaches Go (some would abort there).
    with pytest.raises(NotConnected):
        await client.send_text("628123456789@s.whatsapp.net", "hi")
    with pytest.raises(NotConnected):
        await client.pn_for_lid("123456789@lid")
    with pytest.raises(NotConnected):
        await client.logout()
    assert await client.go_connected() is False
    assert not client.connected


async def test_connect_retries_do_not_grow_threads_and_leaked_connections_are_reaped(
    backend: NeonizeBackend, pg_dsn: str
) -> None:
    """Many failed connects leave no thread behind, at most one DB connection each, reaped later."""
    fake_device(pg_dsn, "whatsmeow", DEVICE)
    client = backend.client("agent-1")
    send, recv = trio.open_memory_channel[ClientEvent](100)
    threads_before = threading.active_count()
    connections_before = _neonize_connections(pg_dsn)
    attempts = 25
    backoff = backend.retry_backoff()
    delays = []
    for _ in range(attempts):
        with pytest.raises(ConnectFailed):
            await client.run(DEVICE, send)
        recv.receive_nowait()
        delays.append(backoff.next())  # the supervisor would sleep this long
    assert min(delays) >= 2.5 and max(delays) <= 300.0
    # trio's idle worker threads may linger; neonize's session threads must not.
    assert threading.active_count() <= threads_before + 2
    assert not [t for t in threading.enumerate() if t.name.startswith("628111000111")]
    leaked = _neonize_connections(pg_dsn) - connections_before
    assert leaked <= attempts + 1
    # idle_session_timeout (1 s here, 5 min in production) reaps them: the bound.
    with trio.fail_after(20):
        while _neonize_connections(pg_dsn) > 1:
            await trio.sleep(0.2)


async def test_a_device_runs_once_per_process(backend: NeonizeBackend, pg_dsn: str) -> None:
    """A second client cannot run a device another client is running (they would share Go's key)."""
    fake_device(pg_dsn, "whatsmeow", DEVICE)
    send, _recv = trio.open_memory_channel[ClientEvent](10)
    session = Session(backend, "a", DEVICE, send)  # what client "a"'s run holds while running
    second = backend.client("b")
    with backend.claim_device(session):
        with pytest.raises(WhatsAppError, match="already running"):
            await second.run(DEVICE, send)


async def test_gate_exclusive_waits_for_readers_and_blocks_new_ones() -> None:
    """The gate lets readers share, a writer waits for them, and new readers queue behind it."""
    gate = FfiGate()
    log: list[str] = []
    reader_in = trio.Event()
    release_reader = trio.Event()

    async def reader(name: str, hold: trio.Event | None = None) -> None:
        async with gate.shared():
            log.append(f"{name} in")
            if hold is not None:
                reader_in.set()
                await hold.wait()
            log.append(f"{name} out")

    async def writer() -> None:
        async with gate.exclusive():
            log.append("writer in")
            assert gate.readers == 0
            log.append("writer out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, "r1", release_reader)
        await reader_in.wait()
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader, "r2")
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["r1 in"]  # the writer waits for r1; r2 waits behind the writer
        release_reader.set()
    assert log == ["r1 in", "r1 out", "writer in", "writer out", "r2 in", "r2 out"]


def _session(events: trio.MemorySendChannel[ClientEvent]) -> Session:
    """A session as ``run`` creates it, before any neonize client exists."""
    return Session(None, "agent-1", DEVICE, events)  # type: ignore[arg-type]


async def test_callbacks_cross_into_trio_from_a_foreign_thread() -> None:
    """A neonize callback on a non-Trio thread is translated and pushed into the events channel."""
    from neonize.events import ConnectedEv, LoggedOutEv

    send, recv = trio.open_memory_channel[ClientEvent](10)
    session = _session(send)
    thread = threading.Thread(target=session._handler, args=(None, ConnectedEv(status=True)))
    await trio.to_thread.run_sync(lambda: (thread.start(), thread.join()))
    assert recv.receive_nowait() == Connected()
    assert session.connected.is_set() and session.live and session.online
    thread = threading.Thread(target=session._handler, args=(None, LoggedOutEv(Reason=2)))
    await trio.to_thread.run_sync(lambda: (thread.start(), thread.join()))
    assert recv.receive_nowait() == LoggedOut("logged_out")
    assert session.ended.is_set() and session.end == LoggedOut("logged_out") and not session.live


async def test_callbacks_are_dropped_once_the_session_closes() -> None:
    """After shutdown starts, callbacks push nothing and raise nothing."""
    from neonize.events import ConnectedEv

    send, recv = trio.open_memory_channel[ClientEvent](10)
    session = _session(send)
    session.closed = True
    await trio.to_thread.run_sync(session._handler, None, ConnectedEv(status=True))
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()


def test_callbacks_after_trio_has_finished_are_swallowed() -> None:
    """A callback arriving after trio.run returned neither raises into ctypes nor logs an error."""
    from neonize.events import ConnectedEv

    async def make() -> tuple[Session, trio.MemoryReceiveChannel[ClientEvent]]:
        send, recv = trio.open_memory_channel[ClientEvent](10)
        return _session(send), recv

    session, recv = trio.run(make)
    with structlog.testing.capture_logs() as logs:
        session._handler(None, ConnectedEv(status=True))
        session._cross_sync(session.registered.set)
    assert [e for e in logs if e["log_level"] == "error"] == []
    recv.close()
