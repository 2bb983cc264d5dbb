"""The embedded server's ``postgres`` process, run as a child that dies with the daemon.

``pg_ctl start`` daemonizes the server: it is re-parented to init, so a daemon killed
with SIGKILL left its postmaster running. Instead we start ``postgres`` ourselves, as
a direct child, with Linux's parent-death signal (``PR_SET_PDEATHSIG``) set to SIGQUIT
— PostgreSQL's immediate shutdown, crash-safe: the next start replays the WAL.

Two kernel rules shape how the child is made:

- the parent-death signal fires when the *thread* that forked the child exits, not
  the process. Trio's worker threads exit after 10 s idle (and
  ``trio.lowlevel.open_process`` forks in one), so every postmaster is forked by one
  thread of ours that lives as long as the process (:class:`_Spawner`);
- the setting is cleared when the child changes uid or gid. CPython's subprocess
  switches user before it calls ``preexec_fn`` (the kill -9 test in
  ``tests/test_store_embedded.py`` runs as root, so its server runs as another user),
  so the prctl there survives into the server running as the unprivileged account.

Blocking, like :class:`~gatewayd.store.embedded.EmbeddedPostgres`; only
:func:`wait_exit` is async.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from gatewayd.store.embedded_os import RunAs, postmaster_state, program_env, read_from

__all__ = [
    "Exited",
    "ServerOutput",
    "spawn",
    "stop_child",
    "stop_leftover",
    "wait_exit",
    "wait_ready",
]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_POLL = 0.02


class Exited(Exception):
    """The server exited before it was ready; ``output`` is what it printed meanwhile."""

    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"postgres exited with status {returncode}")
        self.returncode = returncode
        self.output = output


class ServerOutput:
    """What a server prints from now on: to ``startup.log`` until its logging
    collector runs, then to the collector's files in ``log/``."""

    def __init__(self, pgdata: Path) -> None:
        self.startup_log = pgdata / "startup.log"
        self._log_dir = pgdata / "log"
        self._marks = {f: f.stat().st_size for f in self._files()}

    def _files(self) -> list[Path]:
        collected = sorted(self._log_dir.iterdir()) if self._log_dir.is_dir() else []
        return [f for f in [self.startup_log, *collected] if f.is_file()]

    def read(self) -> str:
        return "".join(read_from(f, self._marks.get(f, 0)) for f in self._files())


class _Spawner:
    """Runs functions on one daemon thread that lives as long as the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="gatewayd-postmaster-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            fn, future = self._queue.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)


_spawner = _Spawner()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec function that sets the parent-death signal (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None  # no parent-death signal: the leftover check at start covers us
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The daemon may have died between fork and prctl: then no signal will come.
        if os.getppid() != parent:
            os._exit(70)

    return preexec


def spawn(
    executable: Path, args: Sequence[str], *, run_as: RunAs | None, output: Path
) -> subprocess.Popen[bytes]:
    """Start ``executable`` as our child, appending its output to ``output``.

    Its own session, so a Ctrl-C meant for the daemon does not shut the server down
    under the daemon's graceful stop; the daemon stops it when it is done with it.
    """
    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    preexec = _die_with_parent(os.getpid())

    def popen() -> subprocess.Popen[bytes]:
        with output.open("ab") as out:
            return subprocess.Popen(
                [str(executable), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=program_env(run_as), cwd="/", start_new_session=True,
                preexec_fn=preexec, **extra,
            )  # fmt: skip

    return _spawner.call(popen)


def wait_ready(
    proc: subprocess.Popen[bytes], pgdata: Path, *, output: ServerOutput, timeout: float
) -> None:
    """Wait until ``postmaster.pid`` says ``proc`` accepts connections.

    Raises Exited when the server exits first, TimeoutError (after stopping it) when
    it is not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        returncode = proc.poll()
        if returncode is not None:
            raise Exited(returncode, output.read())
        with contextlib.suppress(OSError):
            lines = (pgdata / "postmaster.pid").read_text().split("\n")
            # Line 1 is the pid, line 8 the status that pg_ctl -w waits for too.
            if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready":
                return
        if time.monotonic() > deadline:
            stop_child(proc, fast_timeout=0.0)
            raise TimeoutError(f"postgres was not ready within {timeout:g} s")
        time.sleep(_POLL)


def stop_child(proc: subprocess.Popen[bytes], *, fast_timeout: float) -> bool:
    """Stop our server: fast shutdown, then immediate, then SIGKILL. False if not fast."""
    steps = ((signal.SIGINT, fast_timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, None))
    for signum, timeout in steps:
        if proc.poll() is not None:
            return signum == signal.SIGINT
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout)
            return signum == signal.SIGINT
        except subprocess.TimeoutExpired:
            continue
    return False  # pragma: no cover - wait(None) returns


def stop_leftover(pid: int, pgdata: Path) -> bool:
    """Stop a postmaster of ``pgdata`` that is not our child; True once it is gone.

    The same escalation as :func:`stop_child`; we cannot wait for a process that is
    not ours, so this polls (the killed daemon's init reaps it).
    """
    steps = ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
    for signum, timeout in steps:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if postmaster_state(pid, pgdata) != "running":
                return True
            time.sleep(_POLL)
    return False


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait (in Trio) until ``proc`` exits, reap it, and return its status."""
    if proc.poll() is None:
        # Not reaped, so the pid cannot have been reused: the pidfd is this process.
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            fd = -1
        if fd >= 0:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
    while True:
        returncode = proc.poll()
        if returncode is not None:
            return returncode
        await trio.sleep(0.2)  # no pidfd (an old kernel): poll
