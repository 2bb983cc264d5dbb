"""The neonize session's gate holding, graceful stop, presence, lookup timing and call deadlines.

Everything runs neonize's real ``.so`` offline: events go in through ``Event.execute`` (the
function neonize's ctypes callback calls), built with neonize's protobuf classes
(``tests/test_neonize_poison.py``); the Go exports that are safe for a client Go does not know
(``disconnect``, ``stop``, ``send_presence``) are really called. A connect that hangs is made
with a database address that accepts connections and never answers.
"""

from __future__ import annotations

import ctypes
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import psycopg
import pytest
import structlog
import trio
import trio.testing

from gatewayd.errors import NotConnected, SendOutcomeUnknown, SendTimeout
from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.neonize.calls import GoCall, GoTimeout, call_go
from gatewayd.whatsapp.neonize.client import NeonizeClient
from gatewayd.whatsapp.neonize.env import import_neonize
from gatewayd.whatsapp.neonize.gate import FFI_LIMITER, GATE
from gatewayd.whatsapp.neonize.session import (
    CONNECT_STUCK,
    DRAIN_WAIT,
    MESSAGE_CODE,
    SHUTDOWN_SEND_WAIT,
    Session,
)
from gatewayd.whatsapp.port import ClientEvent, ConnectFailed, Disconnected, MessageReceived
from tests.test_neonize_poison import ALICE, Sink, event_bytes, execute, info, jid, open_session
from tests.test_neonize_stress import fake_device

import_neonize()

from neonize.events import EVENT_TO_INT, ConnectedEv  # noqa: E402
from neonize.proto.Neonize_pb2 import MessageInfo, MessageSource  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message  # noqa: E402

DEVICE = "628111000333:4@s.whatsapp.net"
CONNECTED = (ConnectedEv(status=True).SerializeToString(), EVENT_TO_INT[ConnectedEv])


@pytest.fixture
async def backend(pg_dsn: str) -> AsyncIterator[NeonizeBackend]:
    async with open_neonize_backend(pg_dsn, embedded=True, idle_session_timeout="1s") as opened:
        yield opened


@pytest.fixture
def silent_database() -> Iterator[tuple[str, int]]:
    """A loopback address that accepts TCP connections and never answers (a hung database)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()
    finally:
        sock.close()  # the queued connections are reset: a thread stuck on them wakes up


def message(text: str, message_id: str) -> bytes:
    return event_bytes(Message(conversation=text), info(message_id))


def execute_sync(nc: Any, data: bytes, code: int = MESSAGE_CODE) -> None:
    """What neonize's ctypes callback does with Go's bytes, called on the current thread."""
    buffer = ctypes.create_string_buffer(data, len(data))
    nc.event.execute(nc.uuid, ctypes.addressof(buffer), len(data), code)


# --------------------------------------------------------------------------- item 3: the gate


async def test_connect_keeps_exclusion_until_an_answer_and_stops_a_stuck_one(
    backend: NeonizeBackend,
    pg_dsn: str,
    silent_database: tuple[str, int],
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connect holds the exclusive gate past 15 s while neonize is silent, then is stopped."""  # fmt: skip
    fake_device(pg_dsn, "whatsmeow", DEVICE)
    url = urllib.parse.urlsplit(backend.store.url)
    host, port = silent_database
    netloc = f"{url.netloc.rpartition('@')[0]}@{host}:{port}"
    backend.store = attrs.evolve(backend.store, url=url._replace(netloc=netloc).geturl())
    send, recv = trio.open_memory_channel[ClientEvent](10)
    reader_entered: list[float] = []

    async def reader() -> None:
        async with GATE.shared():
            reader_entered.append(trio.current_time())

    start = trio.current_time()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:

            async def connect() -> None:
                with pytest.raises(ConnectFailed) as info_:
                    await backend.client("agent-stuck").run(DEVICE, send)
                event = info_.value.event
                assert isinstance(event, Disconnected) and "stuck" in event.reason

            nursery.start_soon(connect)
            await trio.sleep(1)
            nursery.start_soon(reader)
            await trio.sleep(20)  # beyond the former fixed 15 s cap
            assert reader_entered == []
    assert reader_entered and reader_entered[0] - start >= CONNECT_STUCK
    assert any(e["event"] == "gatewayd.whatsapp.neonize.connect_stuck" for e in logs)
    end = recv.receive_nowait()
    assert isinstance(end, Disconnected) and "stuck" in end.reason


# --------------------------------------------------------------------------- item 4: stopping


async def test_graceful_stop_delivers_until_quiet_and_only_then_stops(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A stop hands over every message neonize still delivers, each fully committed, then stops."""
    mock_clock.autojump_threshold = 0.05  # real seconds of idleness before virtual time jumps
    sink = Sink(commit=SHUTDOWN_SEND_WAIT + 0.5)  # slower than the bound once Stop has begun
    session, nc = open_session(sink)
    session.thread_started = True  # as after a connect: neonize's thread runs
    await execute(nc, *CONNECTED)
    assert session.go_ready and session.live
    stops_before = GATE.exclusive_entries
    before_stop: list[bool] = []

    def neonize_thread() -> None:
        # neonize's loop, handing over what it still holds one event after the other.
        for n in range(3):
            execute_sync(nc, message(f"queued {n}", f"3EB0Q{n}"))
            before_stop.append(GATE.exclusive_entries == stops_before)
            sink.commit = 0.2  # the first one is slow, the others follow quickly

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, neonize_thread)
            await sink.started.wait()  # the first one is being committed: now the stop
            await session._shutdown()
    texts = [e.message.text for e in sink.events if isinstance(e, MessageReceived)]
    assert texts == ["queued 0", "queued 1", "queued 2"]
    assert before_stop == [True, True, True]
    assert GATE.exclusive_entries == stops_before + 1  # Stop, once, after the drain
    assert not [e for e in logs if e["event"] == "gatewayd.whatsapp.neonize.commit_unconfirmed"]


async def test_graceful_stop_is_bounded_when_the_stream_never_goes_quiet(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A stream that never goes quiet delays Stop at most DRAIN_WAIT."""
    mock_clock.autojump_threshold = 0.05
    sink = Sink(commit=0.1)
    session, nc = open_session(sink)
    session.thread_started = True
    await execute(nc, *CONNECTED)
    stop_feeding = threading.Event()

    def endless() -> None:
        n = 0
        while not stop_feeding.is_set():
            execute_sync(nc, message("more", f"3EB0E{n}"))
            n += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, endless)
        await sink.started.wait()
        start = trio.current_time()
        with structlog.testing.capture_logs() as logs:
            await session._shutdown()
        took = trio.current_time() - start
        stop_feeding.set()
    assert DRAIN_WAIT <= took < DRAIN_WAIT + 10
    assert any(e["event"] == "gatewayd.whatsapp.neonize.drain_cut" for e in logs)


# --------------------------------------------------------------------------- item 5: presence


async def test_presence_available_is_announced_after_connected_through_the_gate() -> None:
    """After Connected the session sends presence once, under the shared gate; its failure is harmless."""  # fmt: skip
    sink = Sink()
    session, nc = open_session(sink)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            session._nursery = nursery
            async with GATE.exclusive():  # a connect elsewhere: presence waits for it
                await execute(nc, *CONNECTED)
                await trio.testing.wait_all_tasks_blocked()
                assert not [e for e in logs if "presence" in e["event"]]
            with trio.fail_after(10):
                while not [e for e in logs if "presence" in e["event"]]:
                    await trio.sleep(0.01)
            # The Go client was never registered: Go answers "client is nil", logged only.
            await execute(nc, message("still here", "3EB0P1"))
    presence = [e for e in logs if "presence" in e["event"]]
    assert [e["event"] for e in presence] == ["gatewayd.whatsapp.neonize.presence_failed"]
    assert "client is nil" in presence[0]["error"]
    assert session.live and not session.ended.is_set()
    assert [type(e).__name__ for e in sink.events] == ["Connected", "MessageReceived"]


# --------------------------------------------------------------------------- item 6: lookups


async def test_lid_is_resolved_for_a_message_before_connected(
    backend: NeonizeBackend, pg_dsn: str
) -> None:
    """A LID-addressed message arriving before Connected gets its sender's phone number."""
    fake_device(pg_dsn, "whatsmeow", DEVICE)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO whatsmeow.whatsmeow_lid_map (lid, pn) VALUES (%s, %s)",
            ("987654321", ALICE),
        )
    nc = await backend.new_neonize_client(DEVICE)
    async with GATE.exclusive():
        # Offline the connect fails at DNS after Go registered the client: it stays known
        # to Go until Stop, as a client that is connecting is.
        with pytest.raises(Exception, match="web.whatsapp.com"):
            await trio.to_thread.run_sync(nc.connect)
    try:
        sink = Sink()
        session = Session(backend, "agent-lid", DEVICE, sink)
        session.nc = nc
        session._register_handlers(nc)
        source = MessageSource(
            Chat=jid("987654321", "lid"), Sender=jid("987654321", "lid"), IsGroup=False
        )
        data = event_bytes(
            Message(conversation="hi"),
            MessageInfo(MessageSource=source, ID="3EB0LID", Pushname="A", Timestamp=1),
        )
        await execute(nc, data)
        [event] = sink.events
        assert isinstance(event, MessageReceived) and not session.live
        assert event.message.sender == f"{ALICE}@s.whatsapp.net"
        assert event.message.sender_lid == "987654321@lid"
    finally:
        async with GATE.exclusive():
            await trio.to_thread.run_sync(nc.stop)


async def test_lookups_are_refused_before_the_first_callback_and_once_stop_began() -> None:
    """Without a first callback, or after Stop began, a lookup never reaches Go (it would abort)."""  # fmt: skip
    session, nc = open_session(Sink())
    client = NeonizeClient(None, "agent-poison")  # type: ignore[arg-type]
    client._session = session
    with pytest.raises(NotConnected):
        await client.pn_for_lid("123456789@lid")
    session.go_ready = True  # what the first callback sets
    session.closed = True
    session.go_ready = False  # what _shutdown sets before it waits for the gate
    with pytest.raises(NotConnected):
        await client.lid_for_pn(f"{ALICE}@s.whatsapp.net")


# --------------------------------------------------------------------------- item 2: deadlines


# The calls below run in real threads: virtual time jumps only after the test has been idle
# for IDLE real seconds, so a thread has entered Go before its deadline.
IDLE = 0.3


async def test_abandoned_call_keeps_the_shared_gate_until_its_thread_returns(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A call past its deadline returns GoTimeout at once; its thread still holds the gate."""
    mock_clock.autojump_threshold = IDLE
    release = threading.Event()
    ran: list[str] = []

    def slow(call: GoCall) -> str:
        call.enter("upload")
        release.wait()
        call.enter("send")  # refused: the caller gave up
        ran.append("send")
        return "sent"

    writer_in = trio.Event()

    async def writer() -> None:
        async with GATE.exclusive():
            writer_in.set()

    try:
        with pytest.raises(GoTimeout) as info_:
            await call_go(slow, seconds=5, admit=lambda: None, what="media send")
        assert info_.value.step == "upload"
        assert GATE.readers == 1  # the thread is still in Go
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(60)
            assert not writer_in.is_set()
            release.set()
            await writer_in.wait()
    finally:
        release.set()
    assert ran == [] and GATE.readers == 0


async def test_send_that_never_reached_go_times_out_and_one_that_did_is_unknown(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A send stuck before Go raises SendTimeout; one abandoned inside send_message, SendOutcomeUnknown."""  # fmt: skip
    from neonize.client import NewClient

    mock_clock.autojump_threshold = IDLE
    release = threading.Event()

    class StalledNetwork(NewClient):  # type: ignore[misc]
        """neonize's client on a network that does not answer a send (the stand-in)."""

        def send_message(self, *args: Any, **kwargs: Any) -> Any:
            release.wait()
            return super().send_message(*args, **kwargs)

    session, _ = open_session(Sink())
    stalled = StalledNetwork("unused.db", uuid="stalled-test")
    stalled._stop_finalizer.detach()
    session.nc = stalled
    session.go_ready = session.live = session.online = True
    client = NeonizeClient(None, "agent-poison")  # type: ignore[arg-type]
    client._session = session
    try:
        # Every FFI thread busy: the send cannot even start. (Take what is free: in a full run
        # an earlier test's abandoned call may still hold a thread of this process-wide limiter.)
        tokens = [object() for _ in range(int(FFI_LIMITER.available_tokens))]
        for token in tokens:
            await FFI_LIMITER.acquire_on_behalf_of(token)
        try:
            with pytest.raises(SendTimeout):
                await client.send_text(f"{ALICE}@s.whatsapp.net", "never sent")
        finally:
            for token in tokens:
                FFI_LIMITER.release_on_behalf_of(token)
        with pytest.raises(SendOutcomeUnknown):
            await client.send_text(f"{ALICE}@s.whatsapp.net", "maybe sent")
        assert GATE.readers == 1  # send_message is still running in its thread
    finally:
        release.set()
    for _ in range(600):  # the abandoned thread returns now and its holder leaves the gate
        if not GATE.readers:
            break
        await trio.sleep(1)
    assert GATE.readers == 0
