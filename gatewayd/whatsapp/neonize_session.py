"""One neonize session: the thread that sits in ``connect()`` and the callback bridge into Trio.

A ``_Session`` is one ``NeonizeClient.run``: a fresh ``NewClient`` (its GC finalizer detached,
every handler registered before ``connect``), the blocking ``connect()`` in a thread of
``SESSION_LIMITER``, and the callbacks, which arrive on neonize's own worker thread, carried into
Trio with ``trio.from_thread.run(..., trio_token=...)``. The gate rules of NEONIZE.md that
concern the session hold here:

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
* after each ``Connected`` the session announces presence "available" once (whatsmeow: the
  server otherwise has no push name for the account and contacts see "-"); failing is logged;
* a graceful stop disconnects first, keeps delivering callbacks until the stream is quiet
  (``QUIET_INTERVAL``, at most ``DRAIN_WAIT``) with the full commit wait, and only then calls
  ``Stop``, which drops whatever neonize still queues: nothing whatsmeow acked and handed over
  before the drain ends is lost (docs/neonize.md, "Session: gate, stop, presence, deadlines");
* a callback never raises into ctypes. Once the session is stopping, status events are dropped,
  but messages are still handed over (whatsmeow acked them already); once ``Stop`` has begun,
  each with a bounded wait (``SHUTDOWN_SEND_WAIT``) so that ``Stop`` is never held up for long;
* a message that cannot be parsed or translated is pushed as ``MessageUnreadable`` (raw bytes
  and reason) instead of being dropped: WhatsApp considers it delivered.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.whatsapp.neonize_calls import GoCall, call_go
from gatewayd.whatsapp.neonize_gate import GATE, SESSION_LIMITER
from gatewayd.whatsapp.neonize_translate import (
    jid_to_str,
    str_to_jid,
    translate_event,
    unreadable_bytes,
    unreadable_event,
)
from gatewayd.whatsapp.port import (
    ClientEvent,
    Connected,
    ConnectFailed,
    ConnectionEnd,
    Disconnected,
    EventSink,
    LoggedOut,
    MessageReceived,
    MessageUnreadable,
    Paired,
)

if TYPE_CHECKING:
    from gatewayd.whatsapp.neonize_backend import NeonizeBackend

log = structlog.get_logger()

T = TypeVar("T")

CONNECT_STUCK = 120.0
"""Longest one connect-start holds the exclusive gate waiting for neonize's first callback or
the end of its thread; past it the session is stopped and reported. Well above whatsmeow's own
dial, TLS and Noise timeouts (30 + 10 + 20 s) and the 5 s DNS stalls seen offline."""

CONNECT_TIMEOUT = 60.0
"""Longest ``run`` waits for ``Connected`` after the first callback before it reports
``ConnectFailed``."""

STOP_WAIT = 5.0
"""Longest ``run`` waits for neonize's thread after ``Stop``; after that it is abandoned."""

SHUTDOWN_SEND_WAIT = 3.0
"""Longest a message delivered once ``Stop`` has begun waits for its commit (< ``STOP_WAIT``:
neonize's thread finishes only once its callback has returned)."""

QUIET_INTERVAL = 0.5
"""A graceful stop calls ``Stop`` once no callback ran for this long after the disconnect."""

DRAIN_WAIT = 5.0
"""Longest a graceful stop keeps delivering after the disconnect (the daemon's inbound writer
commits what it was handed for 5 s once its agent stops: docs/durability.md)."""

CALL_TIMEOUT = 30.0
"""Deadline of the session's own short calls (disconnect, presence, LID lookups)."""

MESSAGE_CODE = 17
"""neonize's event code of ``MessageEv`` (``neonize.events.EVENT_TO_INT``; checked in tests)."""


class _Session:
    """One ``run``: a ``NewClient``, its thread, and the state the callbacks update."""

    def __init__(
        self,
        backend: NeonizeBackend,
        agent_id: str,
        device_jid: str,
        events: EventSink,
    ) -> None:
        self.backend = backend
        self.agent_id = agent_id
        self.device_jid = device_jid
        self.events = events
        self.token = trio.lowlevel.current_trio_token()
        self.nc: Any = None
        self.registered = trio.Event()  # Go has the client in its maps (or connect returned)
        self.connected = trio.Event()
        self.ended = trio.Event()
        self.thread_done = trio.Event()
        self.end: ConnectionEnd | None = None
        self.error: BaseException | None = None  # what connect() raised (NeonizeError)
        self.end_pushed = False
        self.thread_started = False
        # Read on neonize's thread too; plain attributes are enough under the GIL.
        self.stopping = False  # a stop began: status events dropped, sends refused
        self.closed = False  # Stop began: messages get SHUTDOWN_SEND_WAIT for their commit
        self.go_ready = False  # Go knows the client: lookups cannot abort the process
        self.live = False
        self.online = False
        self._first_callback = False
        self._activity = 0  # callbacks begun and ended (counted on neonize's thread)
        self._in_callback = False
        self._nursery: trio.Nursery | None = None
        self._scopes: set[trio.CancelScope] = set()  # status deliveries: cancelled on stop
        self._lookups: set[trio.CancelScope] = set()  # LID lookups: cancelled before Stop
        self._grace: set[trio.CancelScope] = set()  # given SHUTDOWN_SEND_WAIT when Stop begins

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
        # abandon_on_cancel: a session stuck where Stop cannot reach it (NEONIZE.md §1) must
        # not hold up shutdown; its thread finishes (or not) on its own.
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
                await self.go_call(lambda call: _enter(call, "disconnect", self.nc.disconnect))
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

    async def go_call(
        self, fn: Callable[[GoCall], T], *, seconds: float = CALL_TIMEOUT, what: str = "call"
    ) -> T:
        """``call_go`` for a client Go knows (``go_ready``); ``NotConnected`` otherwise."""
        return await call_go(fn, seconds=seconds, admit=self.admit_go, what=what)

    def admit_go(self) -> None:
        """Raise ``NotConnected`` unless Go has this client registered (checked under the gate)."""
        if self.nc is None or not self.go_ready:
            raise NotConnected(f"agent {self.agent_id!r} is not connected")

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

    async def _push_end(self) -> None:
        if self.end is not None and not self.end_pushed:
            self.end_pushed = True
            await self._send(self.end)

    async def _send(self, event: ClientEvent) -> None:
        try:
            await self.events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning(
                "gatewayd.whatsapp.neonize.event_dropped", agentId=self.agent_id, kind=event.kind
            )

    # -------------------------------------------------------------- callbacks

    def _register_handlers(self, nc: Any) -> None:
        """Every handler before ``connect``: neonize fixes the subscriptions at connect time."""
        from neonize import events as ev

        consumed = (
            ev.ConnectedEv, ev.DisconnectedEv, ev.LoggedOutEv, ev.StreamReplacedEv,
            ev.TemporaryBanEv, ev.ClientOutdatedEv, ev.ConnectFailureEv, ev.MessageEv,
            ev.ReceiptEv, ev.KeepAliveTimeoutEv, ev.StreamErrorEv,
        )  # fmt: skip
        for event_type in consumed:
            # A plain function, not a bound method: neonize keeps bound methods weakly.
            nc.event(event_type)(self._handler)
        nc.event.qr(self._on_qr)
        # neonize's default prints the raw pointer of every login status to stdout.
        nc._NewClient__onLoginStatus = self._on_login_status
        original_execute = nc.event.execute

        def execute(uuid: Any, binary: Any, size: int, code: int) -> None:
            self._activity += 1
            self._in_callback = True
            try:
                if not self._first_callback:
                    # The first callback means Go has registered the client and read its
                    # maps: connect-start is over, the exclusive gate can be released, and
                    # lookups are safe from now on (until Stop).
                    self._first_callback = True
                    self._cross_sync(self._on_first_callback)
                # Messages even while stopping: whatsmeow has acked them (docs/durability.md).
                if not (self.stopping or self.closed) or code == MESSAGE_CODE:
                    original_execute(uuid, binary, size, code)
            except Exception as exc:
                if code == MESSAGE_CODE:
                    # neonize could not parse it (e.g. nested deeper than upb's limit of 100,
                    # which Go's 10,000 let through): keep the bytes Go sent.
                    self._unparsable(binary, size, exc)
                else:
                    log.exception(
                        "gatewayd.whatsapp.neonize.callback_failed", agentId=self.agent_id
                    )
            except BaseException:  # never into ctypes
                log.exception("gatewayd.whatsapp.neonize.callback_failed", agentId=self.agent_id)
            finally:
                self._in_callback = False
                self._activity += 1

        nc.event.execute = execute

    def _on_first_callback(self) -> None:
        if not self.closed:
            self.go_ready = True
        self.registered.set()

    @property
    def _handler(self) -> Callable[[Any, Any], None]:
        session = self

        def handler(_nc: Any, event: Any) -> None:
            session._cross(session._deliver, event)  # _deliver decides what a closing one takes

        return handler

    def _unparsable(self, binary: Any, size: int, exc: Exception) -> None:
        """Hand over a ``MessageEv`` neonize failed to parse as ``MessageUnreadable``."""
        try:
            event = unreadable_bytes(ctypes.string_at(binary, size), exc)
        except Exception:
            log.exception("gatewayd.whatsapp.neonize.callback_failed", agentId=self.agent_id)
            return
        log.error(
            "gatewayd.whatsapp.neonize.unparsable",
            agentId=self.agent_id,
            messageId=event.message_id,
            reason=event.reason,
        )
        self._cross(self._deliver_message, event)

    def _on_qr(self, _nc: Any, _data: bytes) -> None:
        # A QR while resuming means whatsmeow considers the device unpaired.
        log.warning("gatewayd.whatsapp.neonize.unexpected_qr", agentId=self.agent_id)

    def _on_login_status(self, _uuid: Any, _status: Any) -> None:
        pass

    def _cross(self, afn: Callable[..., Any], *args: Any) -> None:
        """Run ``afn(*args)`` in Trio from neonize's thread; swallow everything."""
        try:
            trio.from_thread.run(afn, *args, trio_token=self.token)
        except (trio.RunFinishedError, trio.Cancelled):
            pass  # Trio is gone or the delivery was cancelled: drop
        except BaseException:
            log.exception("gatewayd.whatsapp.neonize.callback_failed", agentId=self.agent_id)

    def _cross_sync(self, fn: Callable[[], Any]) -> None:
        try:
            trio.from_thread.run_sync(fn, trio_token=self.token)
        except trio.RunFinishedError:
            pass
        except BaseException:
            log.exception("gatewayd.whatsapp.neonize.callback_failed", agentId=self.agent_id)

    async def _deliver(self, raw: Any) -> None:
        """Translate one neonize event and push it (backpressure into whatsmeow).

        A message is always pushed — translated, or as ``MessageUnreadable`` when translation
        fails — even once the session has ended or is stopping: whatsmeow has acked it.
        """
        from neonize.events import ConnectFailureEv, MessageEv

        is_message = isinstance(raw, MessageEv)
        if (self.stopping or self.closed) and not is_message:
            return
        event: ClientEvent | None
        try:
            event = translate_event(raw)
        except Exception as exc:
            if not is_message:
                log.exception("gatewayd.whatsapp.neonize.translate_failed", agentId=self.agent_id)
                return
            event = unreadable_event(raw, exc)
            log.error(
                "gatewayd.whatsapp.neonize.unreadable",
                agentId=self.agent_id,
                messageId=event.message_id,
                reason=event.reason,
            )
        if isinstance(event, MessageReceived | MessageUnreadable):
            await self._deliver_message(event)
            return
        if event is None or self.end is not None or self.stopping or self.closed:
            if event is None:
                log.info(
                    "gatewayd.whatsapp.neonize.event",
                    agentId=self.agent_id,
                    type=type(raw).__name__,
                )
            return
        is_end = isinstance(raw, ConnectFailureEv) or (
            event.terminal and not isinstance(event, Paired)
        )
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                if isinstance(event, Connected):
                    self.live = self.online = True
                elif isinstance(event, Disconnected):
                    self.online = False
                if is_end:
                    self.end = event  # type: ignore[assignment]
                    self.live = self.online = False
                    await self._push_end()
                    self.ended.set()
                    return
                await self._send(event)
                if isinstance(event, Connected):
                    self.connected.set()
                    if self._nursery is not None:
                        self._nursery.start_soon(self._announce_presence)
            finally:
                self._scopes.discard(scope)

    async def _deliver_message(self, event: MessageReceived | MessageUnreadable) -> None:
        """Push one message and wait for its commit; boundedly once the session stops."""
        if isinstance(event, MessageReceived) and not self.closed:
            with trio.CancelScope() as scope:  # a stop cancels the lookup, not the message
                self._lookups.add(scope)
                try:
                    event = await self._resolve_lids(event)
                finally:
                    self._lookups.discard(scope)
        with trio.CancelScope() as scope:
            if self.closed:
                scope.deadline = trio.current_time() + SHUTDOWN_SEND_WAIT
            self._grace.add(scope)
            try:
                await self._send(event)
            finally:
                self._grace.discard(scope)
        if scope.cancelled_caught:
            message_id = (
                event.message.id if isinstance(event, MessageReceived) else event.message_id
            )
            log.error(
                "gatewayd.whatsapp.neonize.commit_unconfirmed",
                agentId=self.agent_id,
                messageId=message_id,
            )

    async def _resolve_lids(self, event: MessageReceived) -> MessageReceived:
        """Fill in the phone-number JID of a LID-only sender from whatsmeow's local map."""
        import attrs

        msg = event.message
        # Allowed from the first callback on (whatsmeow dispatches stored messages before
        # Connected), never before it or once Stop began: the lookup would abort the process.
        if msg.sender_lid is None or msg.sender != msg.sender_lid or not self.go_ready:
            return event
        try:
            pn = await self._lookup_pn(msg.sender_lid)
        except (NotConnected, WhatsAppError, InvalidRecipient):
            return event
        if pn is None:
            return event
        changes: dict[str, Any] = {"sender": pn}
        if msg.chat_lid is not None and msg.chat == msg.chat_lid and not msg.is_from_me:
            changes["chat"] = pn
        return MessageReceived(attrs.evolve(msg, **changes))

    async def _lookup_pn(self, lid: str) -> str | None:
        jid = str_to_jid(lid)
        nc = self.nc
        result = await self.go_call(
            lambda call: _enter(call, "lookup", nc.get_pn_from_lid, jid), what="LID lookup"
        )
        return jid_to_str(result)

    async def _announce_presence(self) -> None:
        """Send presence "available" once for this connection; a failure is only logged.

        whatsmeow: until the server has it, other users see "-" as the account's name.
        """
        from neonize.utils.enum import Presence

        nc = self.nc
        if not self.live:
            return
        try:
            await self.go_call(
                lambda call: _enter(call, "presence", nc.send_presence, Presence.AVAILABLE),
                what="presence",
            )
        except WhatsAppError as exc:
            log.info(
                "gatewayd.whatsapp.neonize.presence_failed",
                agentId=self.agent_id,
                error=exc.message,
            )
        else:
            log.debug("gatewayd.whatsapp.neonize.presence_sent", agentId=self.agent_id)


def _enter(call: GoCall, step: str, fn: Callable[..., T], *args: Any) -> T:
    """Enter ``step`` of ``call`` (refused once its caller gave up), then call ``fn``."""
    call.enter(step)
    return fn(*args)


async def _wait_first(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
