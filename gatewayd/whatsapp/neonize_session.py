"""One neonize session: the thread that sits in ``connect()`` and the callback bridge into Trio.

A ``_Session`` is one ``NeonizeClient.run``: a fresh ``NewClient`` (its GC finalizer detached,
every handler registered before ``connect``), the blocking ``connect()`` in a thread of
``SESSION_LIMITER``, and the callbacks, which arrive on neonize's own worker thread, carried into
Trio with ``trio.from_thread.run(..., trio_token=...)``. The gate rules of NEONIZE.md that
concern the session hold here:

* connect-start runs under ``GATE.exclusive()`` until Go has registered the client (its first
  callback) or ``connect`` has returned; ``Stop`` runs under it too;
* the device JID is checked against whatsmeow's device store inside that exclusive section,
  because resuming a JID that is not there aborts the process;
* ``live`` (``Connected`` seen, ``Stop`` not yet started) is what the client's calls check under
  the shared gate before they reach Go; it is cleared before ``Stop`` waits for the gate;
* a callback never raises into ctypes. Once the session is closing, status events are dropped,
  but messages are still handed over (whatsmeow acked them already), each with a bounded wait
  (``SHUTDOWN_SEND_WAIT``) so that ``Stop`` is never held up for long;
* a message that cannot be parsed or translated is pushed as ``MessageUnreadable`` (raw bytes
  and reason) instead of being dropped: WhatsApp considers it delivered.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.whatsapp.neonize_gate import FFI_LIMITER, GATE, SESSION_LIMITER, map_exceptions
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

REGISTER_TIMEOUT = 15.0
"""Longest the exclusive gate is held for one connect-start (DNS stalls add 5 s offline)."""

CONNECT_TIMEOUT = 60.0
"""Longest ``run`` waits for ``Connected`` before it gives up and reports ``ConnectFailed``."""

STOP_WAIT = 5.0
"""Longest ``run`` waits for neonize's thread after ``Stop``; after that it is abandoned."""

SHUTDOWN_SEND_WAIT = 3.0
"""Longest a message delivered while the session stops waits for its commit (< ``STOP_WAIT``:
neonize's thread finishes only once its callback has returned)."""

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
        self.closed = False
        self.live = False
        self.online = False
        self._first_callback = False
        self._scopes: set[trio.CancelScope] = set()  # cancelled when the session stops
        self._grace: set[trio.CancelScope] = set()  # given SHUTDOWN_SEND_WAIT when it stops

    # -------------------------------------------------------------- the run

    async def run(self, task_status: trio.TaskStatus[None]) -> ConnectionEnd:
        # Errors are carried out of the nursery bare (a nursery would wrap them in a group),
        # so that ``nursery.start(client.run, …)`` fails with ``ConnectFailed`` itself.
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
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
            # Go writes its global maps until it has registered the client: the first
            # callback, or connect() returning (a DNS failure, after milliseconds).
            with trio.move_on_after(REGISTER_TIMEOUT) as wait:
                await self.registered.wait()
            if wait.cancelled_caught:
                log.warning("gatewayd.whatsapp.neonize.register_slow", agentId=self.agent_id)
        with trio.move_on_after(CONNECT_TIMEOUT):
            await _wait_first(self.connected, self.ended)

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
        self.live = self.online = False
        self.error = error
        if self.end is None and not self.closed:
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
        """Stop the Go client under the exclusive gate; wait for its thread, boundedly."""
        self.closed = True
        self.live = self.online = False
        for scope in list(self._scopes):
            scope.cancel()
        grace = trio.current_time() + SHUTDOWN_SEND_WAIT
        for scope in list(self._grace):
            scope.deadline = min(scope.deadline, grace)
        if not self.thread_started:
            return
        async with GATE.exclusive():
            await trio.to_thread.run_sync(self.nc.stop, limiter=FFI_LIMITER)
        with trio.move_on_after(STOP_WAIT):
            await self.thread_done.wait()
        if not self.thread_done.is_set():
            log.warning("gatewayd.whatsapp.neonize.thread_abandoned", agentId=self.agent_id)

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
            try:
                if not self._first_callback:
                    # The first callback means Go has registered the client: connect-start is
                    # over and the exclusive gate can be released.
                    self._first_callback = True
                    self._cross_sync(self.registered.set)
                # Messages even while closing: whatsmeow has acked them (docs/durability.md).
                if not self.closed or code == MESSAGE_CODE:
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

        nc.event.execute = execute

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
        if self.closed and not is_message:
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
        if event is None or self.end is not None or self.closed:
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
            finally:
                self._scopes.discard(scope)

    async def _deliver_message(self, event: MessageReceived | MessageUnreadable) -> None:
        """Push one message and wait for its commit; boundedly once the session stops."""
        if isinstance(event, MessageReceived) and not self.closed:
            with trio.CancelScope() as scope:  # a stop cancels the lookup, not the message
                self._scopes.add(scope)
                try:
                    event = await self._resolve_lids(event)
                finally:
                    self._scopes.discard(scope)
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
        if msg.sender_lid is None or msg.sender != msg.sender_lid or not self.live:
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
        async with GATE.shared():
            if not self.live or self.closed:
                return None
            nc = self.nc
            with map_exceptions():
                result = await trio.to_thread.run_sync(nc.get_pn_from_lid, jid, limiter=FFI_LIMITER)
        return jid_to_str(result)


async def _wait_first(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
