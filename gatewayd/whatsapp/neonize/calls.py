"""Calls into Go with a deadline, the shared gate held until Go is really done.

A neonize call blocks a worker thread inside Go, and neither neonize nor whatsmeow bounds some
of them (an upload has no deadline at all). ``call_go`` gives every call a deadline without
breaking the gate's rule (``neonize_gate``): while a thread is inside a Go export, that export
may read the shim's global maps, so the shared side must stay held until the thread returns,
even after the caller gave up. Hence the split:

* a *holder* task (a Trio system task, so that it outlives its caller) takes
  ``GATE.shared()``, checks ``admit`` under it, and runs the call in a thread of
  ``FFI_LIMITER``. It leaves the gate only when the thread has returned (or when the whole Trio
  run ends: nothing connects or stops after that);
* the *caller* waits for the holder's result at most ``seconds``. Past that (or when
  the caller is cancelled) it gives up: the result is abandoned and ``GoTimeout`` says whether
  the call had entered Go. A call that had not is cancelled and never runs.

A call can consist of steps (``GoCall.enter``), each entered only while the caller still
waits: an upload whose caller gave up is never followed by its send. The step reached tells the
caller what may have happened (``GoTimeout.step``): a send abandoned after it entered Go may
have gone out (docs/durability.md, ``SendOutcomeUnknown``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

from gatewayd.errors import WhatsAppError
from gatewayd.whatsapp.neonize.gate import FFI_LIMITER, GATE, map_exceptions

T = TypeVar("T")


class GoTimeout(WhatsAppError):
    """A neonize call did not return within its deadline; its result was abandoned.

    ``step`` is the last step the call had entered in Go (``None``: it never reached Go).
    """

    def __init__(self, message: str, *, step: str | None, timeout: float) -> None:
        super().__init__(message, details={"timeout": timeout, "step": step})
        self.step = step
        self.timeout = timeout


class _Abandoned(Exception):
    """Raised in the worker thread at a step the caller no longer waits for."""


class GoCall:
    """The state a call's worker thread and its caller share (under a thread lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self.step: str | None = None

    def enter(self, step: str) -> None:
        """Called in the worker thread before each step into Go; refuses once abandoned."""
        with self._lock:
            if self._abandoned:
                raise _Abandoned(step)
            self.step = step

    def abandon(self) -> str | None:
        """The caller gives up: no further step starts. Returns the step Go is in, if any."""
        with self._lock:
            self._abandoned = True
            return self.step


async def call_go(
    fn: Callable[[GoCall], T],
    *,
    seconds: float,
    admit: Callable[[], None],
    what: str,
) -> T:
    """Run ``fn(call)`` in a worker thread under the shared gate, waiting at most ``seconds``.

    ``admit`` runs under the gate before the thread starts and raises (``NotConnected``) when
    the Go client may not be called. ``fn`` must call ``call.enter(step)`` before each call into
    Go. Raises ``GoTimeout`` when the deadline passes; neonize's errors as ``map_exceptions``
    maps them.
    """
    call = GoCall()
    done = trio.Event()
    box: list[outcome.Outcome[T]] = []
    holder_scope = trio.CancelScope()

    async def run_gated() -> T:
        async with GATE.shared():
            admit()
            with map_exceptions():
                # abandon_on_cancel: the holder is cancelled only before the call entered Go
                # (enter() then refuses) or when the Trio run ends.
                return await trio.to_thread.run_sync(
                    fn, call, abandon_on_cancel=True, limiter=FFI_LIMITER
                )

    async def hold() -> None:
        with holder_scope:
            box.append(await outcome.acapture(run_gated))
        done.set()

    trio.lowlevel.spawn_system_task(hold, name=f"gatewayd.neonize.{what}")
    try:
        with trio.move_on_after(seconds):
            await done.wait()
    except BaseException:
        _give_up(call, holder_scope)
        raise
    if not done.is_set():
        step = _give_up(call, holder_scope)
        where = "before it reached WhatsApp" if step is None else f"in {step}"
        raise GoTimeout(
            f"{what} did not finish within {seconds:g} s ({where}); abandoned",
            step=step,
            timeout=seconds,
        )
    result = box[0]
    if isinstance(result, outcome.Error) and isinstance(result.error, _Abandoned):
        raise WhatsAppError(f"{what} was abandoned")  # not reached: we only abandon on give-up
    return result.unwrap()


def _give_up(call: GoCall, holder_scope: trio.CancelScope) -> str | None:
    step = call.abandon()
    if step is None:
        holder_scope.cancel()  # nothing entered Go: stop waiting for the gate or a thread
    return step
