"""Pairing runs in a short-lived child process that reports back and is killed when cancelled."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gatewayd.errors import InvalidRecipient
from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.neonize.pairing import CHILD_MODULE
from gatewayd.whatsapp.port import ClientEvent, PairingError, PairingFailed


@pytest.fixture
async def backend(pg_dsn: str) -> AsyncIterator[NeonizeBackend]:
    """A neonize backend on a fresh database."""
    async with open_neonize_backend(pg_dsn, embedded=True) as opened:
        yield opened


def _children() -> set[int]:
    """Live child processes of this process (every thread's children)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return {p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _pairing_children() -> set[int]:
    found = set()
    for pid in _children():
        try:
            if CHILD_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.add(pid)
        except OSError:
            continue
    return found


async def test_offline_pairing_fails_in_the_child_and_reports_why(backend: NeonizeBackend) -> None:
    """Offline, the child cannot reach WhatsApp: PairingFailed is pushed, PairingError raised."""
    before = _children()
    send, recv = trio.open_memory_channel[ClientEvent](10)
    with pytest.raises(PairingError) as info:
        await backend.client("agent-1").pair(send)
    assert "web.whatsapp.com" in info.value.reason
    assert recv.receive_nowait() == PairingFailed(info.value.reason)
    assert _children() <= before


async def test_cancelled_pairing_kills_the_child_and_leaks_nothing(backend: NeonizeBackend) -> None:
    """Cancelling pair() while the child runs kills it; no process or thread is left."""
    before_children = _children()
    before_threads = {t.ident for t in threading.enumerate()}
    send, _recv = trio.open_memory_channel[ClientEvent](10)
    client = backend.client("agent-1")
    seen: set[int] = set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.pair, send)
        # Wait for the child to exist (it is still importing neonize at that point), then cancel.
        with trio.fail_after(30):
            while not seen:
                seen = _pairing_children()
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert not (seen & _children())
    assert _children() <= before_children
    leftover = [
        t
        for t in threading.enumerate()
        if t.ident not in before_threads and not t.name.startswith("Trio thread")
    ]
    assert leftover == []
    # The agent can pair again: the slot was released.
    with pytest.raises(PairingError):
        await client.pair(send)


async def test_phone_pairing_validates_the_number_and_fails_offline_before_start(
    backend: NeonizeBackend,
) -> None:
    """Phone-code pairing refuses a non-international number; offline, start() fails with the reason."""
    client = backend.client("agent-1")
    send, recv = trio.open_memory_channel[ClientEvent](10)
    with pytest.raises(InvalidRecipient):
        await client.pair_by_phone("0812 3456 789", send)
    async with trio.open_nursery() as nursery:
        with pytest.raises(PairingError):
            await nursery.start(client.pair_by_phone, "+62 812-3456-789", send)
    assert isinstance(recv.receive_nowait(), PairingFailed)
