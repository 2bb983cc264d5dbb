"""The simnet's state file: one JSON document, replaced atomically and fsync'd.

``Persister`` coalesces changes: handlers mark the state dirty (``changed``) and, when their
answer promises durability (an injected message, a new device, a send), wait in ``flush`` until
a snapshot taken after their change is on disk. One writer task does the writing, so a burst of
changes costs a few writes, not one each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from gatewayd.whatsapp.sim import NetworkState
from gatewayd.whatsapp.simnet.wire import WireError, state_from_json, state_to_json

log = structlog.get_logger()

RETRY_DELAY = 1.0  # seconds between attempts when the disk refuses a write


def load_state(path: Path) -> NetworkState | None:
    """The saved network, or None when there is no file yet; ``WireError`` when unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return state_from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{path}: not JSON: {exc}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, rename it over ``path``, fsync the dir."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Persister:
    """Writes ``snapshot()`` to ``path`` after changes; ``path=None`` keeps nothing."""

    def __init__(self, path: Path | None, snapshot: Callable[[], NetworkState]) -> None:
        self._path = path
        self._snapshot = snapshot
        self._generation = 0  # bumped by every change
        self._saved = 0  # the generation last on disk
        self._wake = trio.Event()
        self._saved_event = trio.Event()

    def changed(self) -> int:
        """Note a change; returns its generation."""
        self._generation += 1
        self._wake.set()
        return self._generation

    async def flush(self) -> None:
        """Return once everything changed so far is on disk."""
        target = self.changed()
        if self._path is None:
            await trio.lowlevel.checkpoint()
            return
        while self._saved < target:
            await self._saved_event.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task; a last write on the way out keeps the final state."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                await self._write()
        finally:
            if self._saved < self._generation:
                with trio.CancelScope(shield=True):
                    await self._write()

    async def _write(self) -> None:
        self._wake = trio.Event()
        generation = self._generation
        if self._path is not None:
            # Serialised here, in the Trio thread, so the snapshot is consistent.
            data = json.dumps(state_to_json(self._snapshot())).encode()
            while True:
                try:
                    await trio.to_thread.run_sync(write_atomically, self._path, data)
                    break
                except OSError as exc:
                    log.error(
                        "gatewayd.simnet.state_write_failed", path=str(self._path), error=str(exc)
                    )
                    await trio.sleep(RETRY_DELAY)
        self._saved = generation
        self._saved_event.set()
        self._saved_event = trio.Event()
