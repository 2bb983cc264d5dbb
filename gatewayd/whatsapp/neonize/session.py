"""One neonize session: the thread that sits in ``connect()`` and the callback bridge into Trio.

A ``Session`` is one ``NeonizeClient.run``: a fresh ``NewClient`` (its GC finalizer detached,
every handler registered before ``connect``), the blocking ``connect()`` in a thread of
``SESSION_LIMITER``, and the callbacks, which arrive on neonize's own worker thread, carried into
Trio with ``trio.from_thread.run(..., trio_token=...)``. The gate rules that concern the
session hold here (docs/neonize.md, "Process-global Go maps and the gate", "Calls that abort
the process"):

* connect-start runs under ``GATE.exclusive()`` until the first callback or the end of the
  connect thread, whichever comes first: before either, Go may still write or read its maps
  (whatsmeow's own dial, TLS and Noise timeouts are 30/10/20 s). No fixed cap releases it
  earlier; past ``CONNECT_STUCK`` the session is stopped and reported instead
  (``gatewayd.whatsapp.neonize.connect_stuck``). ``Stop`` runs under it too;
* the device JID is checked against whatsmeow's device store inside that exclusive section,
  because resuming a JID that is not there aborts the process;
* ``go_ready`` (first callback seen, ``Stop`` not yet started) admits the calls that abort the
  process for a client Go does not know (LID lookups): whatsmeow dispatches messages before
  ``Connected``. ``live`` (``Connected`` seen, not stopping) admits sends. Both are checked
  under the shared gate and cleared before ``Stop`` waits for the gate;
* a graceful stop disconnects first, keeps delivering callbacks until the stream is quiet
  (``QUIET_INTERVAL``, at most ``DRAIN_WAIT``) with the full commit wait, and only then calls
  ``Stop``, which drops whatever neonize still queues: nothing whatsmeow acked and handed over
  before the drain ends is lost (docs/neonize.md, "Session: gate, stop, presence, deadlines").

The callbacks themselves, what they deliver and how (messages even while stopping, unreadable
ones as ``MessageUnreadable``, presence after ``Connected``), are ``neonize_callbacks``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio

from gatewayd.errors import WhatsAppError
from gatewayd.whatsapp.neonize.callbacks import CALL_TIMEOUT as CALL_TIMEOUT
from gatewayd.whatsapp.neonize.callbacks import MESSAGE_CODE as MESSAGE_CODE
from gatewayd.whatsapp.neonize.callbacks import SHUTDOWN_SEND_WAIT as SHUTDOWN_SEND_WAIT
from gatewayd.whatsapp.neonize.callbacks import SessionCallbacks, enter_step
from gatewayd.whatsapp.neonize.gate import GATE, SESSION_LIMITER
from gatewayd.whatsapp.port import ConnectFailed, ConnectionEnd, Disconnected, EventSink, LoggedOut

if TYPE_CHECKING:
    from gatewayd.whatsapp.neonize.backend import NeonizeBackend

log = structlog.get_logger()

CONNECT_STUCK = 120.0
"""Longest one connect-start holds the exclusive gate waiting for neonize's first callback or
the end of its thread; past it the session is stopped and reported. Well above whatsmeow's own
dial, TLS and Noise timeouts (30 + 10 + 20 s) and the 5 s DNS stalls seen offline."""

CONNECT_TIMEOUT = 60.0
"""Longest ``run`` waits for ``Connected`` after the first callback before it reports
``ConnectFailed``."""

STOP_WAIT = 5.0
"""Longest ``run`` waits for neonize's thread after ``Stop``; after that it is abandoned."""

QUIET_INTERVAL = 0.5
"""A graceful stop calls ``Stop`` once no callback ran for this long after the disconnect."""

DRAIN_WAIT = 5.0
"""Longest a graceful stop keeps delivering after the disconnect (the daemon's inbound writer
commits what it was handed for 5 s once its agent stops: docs/durability.md)."""


class Session(SessionCallbacks):
    """One ``run``: a ``NewClient``, its thread, and the state the callbacks update."""

    def __init__(
        self,
        backend: NeonizeBackend,
        agent_id: str,
        device_jid: str,
        events: EventSink,
    ) -> None:
        super().__init__(agent_id, events)
        self.backend = backend
        self.device_jid = device_jid
        self.thread_done = trio.Event()
        self.error: BaseException | None = None  # what connect() raised (NeonizeError)
        self.thread_started = False

    # -------------------------------------------------------------- the run

    async def run(self, task_status: trio.TaskStatus[None]) -> ConnectionEnd:
        # Errors are carried out of the nursery bare (a nursery would wrap them in a group),
        # so that ``nursery.start(client.run, …)`` fails with ``ConnectFailed`` itself.
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._connect(nursery)
                if not self.connected.is_set():
                    self.end = self.end or Disconnected("connect timed out")
                    await self._push_end()
                    raise ConnectFailed(self.end) from self.error
                # Started only now: Connected is the first event the caller sees, and sends
                # work from here on.
                task_status.started()
                await self.ended.wait()
                await self._push_end()
            except Exception as exc:
                error = exc
            finally:
                with trio.CancelScope(shield=True):
                    await self._shutdown()
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        assert self.end is not None
        return self.end

    async def _connect(self, nursery: trio.Nursery) -> None:
        """Start the session thread under the exclusive gate; wait for Connected or an end."""
        async with GATE.exclusive():
            # Checked here, atomically with the connect-start: resuming a JID that is not in
            # the store aborts the process inside neonize.
            if not await self.backend.device_known(self.device_jid):
                self.end = LoggedOut("logged_out", on_connect=True)
                return
            self.nc = await self.backend.new_neonize_client(self.device_jid)
            self._register_handlers(self.nc)
            self.thread_started = True
            nursery.start_soon(self._session_thread)
            # Go writes and reads its global maps until its first callback (CallbackFunction
            # has read them all by then) or until connect() returns: a DNS failure after
            # milliseconds, whatsmeow's own timeouts after at most about a minute.
            with trio.move_on_after(CONNECT_STUCK):
                await self.registered.wait()
            if not self.registered.is_set():
                await self._stop_stuck()
                return
        with trio.move_on_after(CONNECT_TIMEOUT):
            await _wait_first(self.connected, self.ended)

    async def _stop_stuck(self) -> None:
        """A connect that neither called back nor ended: stop it (still exclusive), report it.

        Exclusion must not last forever, but merely releasing it would leave a session that
        may connect later with nobody delivering its events. ``Stop`` cancels its context; a
        thread stuck before Go registered the client (e.g. its database does not answer) may
        still write Go's maps when it wakes up: that remains a risk (docs/neonize.md).
        """
        self.end = Disconnected(
            f"connect stuck: no callback and no end from neonize within {CONNECT_STUCK:g} s"
        )
        self.stopping = self.closed = True
        log.error(
            "gatewayd.whatsapp.neonize.connect_stuck",
            agentId=self.agent_id,
            seconds=CONNECT_STUCK,
        )
        await trio.to_thread.run_sync(self.nc.stop, limiter=SESSION_LIMITER)
        self.ended.set()

    async def _session_thread(self) -> None:
        # abandon_on_cancel: a session stuck where Stop cannot reach it (docs/neonize.md,
        # "Threads, callbacks and the QR phase") must not hold up shutdown; its thread
        # finishes (or not) on its own.
        await trio.to_thread.run_sync(
            self._connect_blocking, abandon_on_cancel=True, limiter=SESSION_LIMITER
        )

    def _connect_blocking(self) -> None:
        error: BaseException | None = None
        try:
            self.nc.connect()
        except BaseException as exc:  # NeonizeError for DNS/TCP failures; reported, not raised
            error = exc
        self._cross_sync(partial(self._on_thread_done, error))

    def _on_thread_done(self, error: BaseException | None) -> None:
        self.thread_done.set()
        self.registered.set()
        self.go_ready = self.live = self.online = False
        self.error = error
        if self.end is None and not self.stopping:
            reason = f"connect failed: {error}" if error is not None else "session ended"
            self.end = Disconnected(reason)
            if error is not None:
                log.info(
                    "gatewayd.whatsapp.neonize.connect_failed",
                    agentId=self.agent_id,
                    error=str(error),
                )
        self.ended.set()

    async def _shutdown(self) -> None:
        """Disconnect, deliver until quiet, then ``Stop`` under the exclusive gate."""
        graceful = self.go_ready and not self.stopping
        self.stopping = True
        self.live = self.online = False
        for scope in list(self._scopes):
            scope.cancel()
        if graceful:
            await self._drain()
        self.closed = True
        self.go_ready = False  # before waiting for the gate: no lookup reaches a stopped client
        for scope in list(self._scopes | self._lookups):
            scope.cancel()
        grace = trio.current_time() + SHUTDOWN_SEND_WAIT
        for scope in list(self._grace):
            scope.deadline = min(scope.deadline, grace)
        if not self.thread_started:
            return
        async with GATE.exclusive():
            # SESSION_LIMITER: calls stuck in Go may hold every FFI_LIMITER token.
            await trio.to_thread.run_sync(self.nc.stop, limiter=SESSION_LIMITER)
        with trio.move_on_after(STOP_WAIT):
            await self.thread_done.wait()
        if not self.thread_done.is_set():
            log.warning("gatewayd.whatsapp.neonize.thread_abandoned", agentId=self.agent_id)

    async def _drain(self) -> None:
        """Close the websocket, then let neonize hand over what it holds until it is quiet.

        whatsmeow acks a message before Python sees it, and ``Stop`` drops neonize's queue:
        disconnecting first stops new arrivals (no reconnect: the disconnect is expected), and
        each callback still waits for its commit as usual.
        """
        with trio.move_on_after(DRAIN_WAIT) as drain:
            try:
                await self.go_call(lambda call: enter_step(call, "disconnect", self.nc.disconnect))
            except WhatsAppError as exc:
                log.warning(
                    "gatewayd.whatsapp.neonize.disconnect_failed",
                    agentId=self.agent_id,
                    error=exc.message,
                )
            while True:
                seen = self._activity
                await trio.sleep(QUIET_INTERVAL)
                if seen == self._activity and not self._in_callback:
                    break
        if drain.cancelled_caught:
            log.warning(
                "gatewayd.whatsapp.neonize.drain_cut", agentId=self.agent_id, seconds=DRAIN_WAIT
            )

    def request_end(self, end: ConnectionEnd) -> None:
        """Make ``run`` end with ``end`` (pushed by ``run``), e.g. when the backend closes."""
        if self.end is None:
            self.end = end
            self.live = self.online = False
        self.ended.set()

    async def finish(self, end: ConnectionEnd) -> None:
        """End the session with ``end`` (a logout we asked for)."""
        if self.end is None:
            self.end = end
            self.live = self.online = False
            await self._push_end()
            self.ended.set()


async def _wait_first(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
