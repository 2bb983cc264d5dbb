"""The callback half of a neonize session: what neonize's worker thread calls, carried into Trio.

``SessionCallbacks`` is the base of ``neonize_session.Session``: the state both halves share,
the handlers registered before ``connect``, and the delivery of what they receive. The rules
that concern the callbacks hold here (docs/neonize.md, "Threads, callbacks and the QR phase",
"Acks and redelivery", "Calls that abort the process"):

* a callback never raises into ctypes. Once the session is stopping, status events are dropped,
  but messages are still handed over (whatsmeow acked them already); once ``Stop`` has begun,
  each with a bounded wait (``SHUTDOWN_SEND_WAIT``) so that ``Stop`` is never held up for long;
* a message that cannot be parsed or translated is pushed as ``MessageUnreadable`` (raw bytes
  and reason) instead of being dropped: WhatsApp considers it delivered;
* the first callback sets ``go_ready`` (Go has registered the client): LID lookups are made
  only from then on and never once ``Stop`` began, because they abort the process otherwise;
* after each ``Connected`` the session announces presence "available" once (whatsmeow: the
  server otherwise has no push name for the account and contacts see "-"); failing is logged.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import trio

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.whatsapp.neonize.calls import GoCall, call_go
from gatewayd.whatsapp.neonize.translate import (
    jid_to_str,
    str_to_jid,
    translate_event,
    unreadable_bytes,
    unreadable_event,
)
from gatewayd.whatsapp.port import (
    ClientEvent,
    Connected,
    ConnectionEnd,
    Disconnected,
    EventSink,
    MessageReceived,
    MessageUnreadable,
    Paired,
)

log = structlog.get_logger()

T = TypeVar("T")

SHUTDOWN_SEND_WAIT = 3.0
"""Longest a message delivered once ``Stop`` has begun waits for its commit (below
``neonize_session.STOP_WAIT``: neonize's thread finishes only once its callback has returned)."""

CALL_TIMEOUT = 30.0
"""Deadline of the session's own short calls (disconnect, presence, LID lookups)."""

MESSAGE_CODE = 17
"""neonize's event code of ``MessageEv`` (``neonize.events.EVENT_TO_INT``; checked in tests)."""


class SessionCallbacks:
    """The state a session's callbacks update, the handlers, and the delivery into Trio."""

    def __init__(self, agent_id: str, events: EventSink) -> None:
        self.agent_id = agent_id
        self.events = events
        self.token = trio.lowlevel.current_trio_token()
        self.nc: Any = None
        self.registered = trio.Event()  # Go has the client in its maps (or connect returned)
        self.connected = trio.Event()
        self.ended = trio.Event()
        self.end: ConnectionEnd | None = None
        self.end_pushed = False
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

    # -------------------------------------------------------------- calls and pushes

    async def go_call(
        self, fn: Callable[[GoCall], T], *, seconds: float = CALL_TIMEOUT, what: str = "call"
    ) -> T:
        """``call_go`` for a client Go knows (``go_ready``); ``NotConnected`` otherwise."""
        return await call_go(fn, seconds=seconds, admit=self.admit_go, what=what)

    def admit_go(self) -> None:
        """Raise ``NotConnected`` unless Go has this client registered (checked under the gate)."""
        if self.nc is None or not self.go_ready:
            raise NotConnected(f"agent {self.agent_id!r} is not connected")

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
            lambda call: enter_step(call, "lookup", nc.get_pn_from_lid, jid), what="LID lookup"
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
                lambda call: enter_step(call, "presence", nc.send_presence, Presence.AVAILABLE),
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


def enter_step(call: GoCall, step: str, fn: Callable[..., T], *args: Any) -> T:
    """Enter ``step`` of ``call`` (refused once its caller gave up), then call ``fn``."""
    call.enter(step)
    return fn(*args)
