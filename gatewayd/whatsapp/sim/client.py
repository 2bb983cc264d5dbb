"""The client half of the simulated network: one agent's ``WhatsAppClient``.

``SimulatedClient`` implements the port against the in-memory network of ``sim.py`` (its core,
``sim_network.SimNetwork``). It starts no task of its own: ``pair`` and ``run`` are the only
loops, and they run in the caller's task, so a thousand idle agents cost a thousand small objects
and nothing else.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs
import trio

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.jid import non_ad
from gatewayd.whatsapp.port import (
    PAIR_CODE_LIFETIME,
    ClientEvent,
    Connected,
    ConnectFailed,
    ConnectionEnd,
    Disconnected,
    EventSink,
    LoggedOut,
    Media,
    MessageReceived,
    MessageUnreadable,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
    Quote,
    Receipt,
    SendResult,
)
from gatewayd.whatsapp.sim.paircode import PhoneCode, pairing_digits

if TYPE_CHECKING:
    from gatewayd.whatsapp.sim.network import SimNetwork

QR_SCHEDULE: tuple[float, ...] = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)
"""How long each QR stays valid: whatsmeow shows the first ref for 60 s, the next five for 20 s."""

SentKind: TypeAlias = Literal["text", "image", "document", "audio", "video", "typing", "read"]

# What WhatsApp accepts as a destination: a user (PN or LID, optionally with a device), a group
# (new "120363…" or old "<creator>-<time>" ids), a channel, or the status broadcast.
_JID_RE = re.compile(
    r"[0-9]{5,20}(:[0-9]+)?@(s\.whatsapp\.net|lid)"
    r"|[0-9]+(-[0-9]+)?@g\.us|[0-9]+@newsletter|status@broadcast"
)


@attrs.frozen(kw_only=True)
class SentRecord:
    """One thing an agent did towards WhatsApp, as the simulated network saw it.

    ``kind`` is a send kind, ``"typing"`` (``typing`` tells on/off) or ``"read"`` (``sender`` and
    ``message_ids`` tell which). ``text`` is the text or the caption; ``at`` is the virtual time
    (``trio.current_time()``) of the call.
    """

    kind: SentKind
    to: str
    at: float
    message_id: str | None = None
    text: str | None = None
    media_size: int | None = None
    mimetype: str | None = None
    filename: str | None = None
    ptt: bool = False
    quote: Quote | None = None
    mentions: tuple[str, ...] = ()
    typing: bool | None = None
    sender: str | None = None
    message_ids: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class AgentState:
    """What the network keeps about one agent across restarts (``gatewayd simnet --state``).

    ``pending`` holds the inbound events not yet acknowledged by the agent's client, oldest
    first: they are delivered when it next connects.
    """

    agent_id: str
    account: Paired | None = None
    pending: tuple[MessageReceived | Receipt, ...] = ()
    sent: tuple[SentRecord, ...] = ()


@attrs.define(eq=False)
class _Pairing:
    """A pairing in progress: the QR showing now and, once decided, how it ended."""

    keys: str  # the device's noise/identity/adv keys: fixed for one pairing, only refs rotate
    ends_at: float  # when the QR schedule runs out (virtual time)
    qr: QrCode | None = None
    phone_code: PhoneCode | None = None  # the latest code asked for; it replaces older ones
    outcome: Paired | str | None = None  # a device, or whatsmeow's failure reason
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Connection:
    """A running connection: events not yet handed over, and how it ended, if it has."""

    device_jid: str
    queue: deque[ClientEvent] = attrs.Factory(deque)
    wake: trio.Event = attrs.Factory(trio.Event)
    end: ConnectionEnd | None = None
    offline_until: float | None = None  # a transient drop the "library" heals by itself

    def push(self, event: ClientEvent) -> None:
        self.queue.append(event)
        self.wake.set()


class SimulatedClient:
    """One agent's client on a ``SimulatedWhatsApp`` network (get it from ``network.client()``)."""

    __slots__ = ("_net", "_agent_id", "account", "pairing", "_conn", "_pending", "_sent")

    def __init__(self, network: SimNetwork, agent_id: str) -> None:
        self._net = network
        self._agent_id = agent_id
        self.account: Paired | None = None  # the linked device this agent last paired or ran
        self.pairing: _Pairing | None = None
        self._conn: _Connection | None = None
        # Inbound events that arrived while offline; the "server" hands them over on connect.
        self._pending: list[ClientEvent] = []
        self._sent: list[SentRecord] = []

    @property
    def agent_id(self) -> str:
        """The agent this client belongs to."""
        return self._agent_id

    @property
    def connected(self) -> bool:
        """True while connected: after ``Connected``, before a drop or the end."""
        conn = self._conn
        return conn is not None and conn.end is None and conn.offline_until is None

    # ------------------------------------------------------------------ state (simnet)

    def state(self, unacked: Sequence[MessageReceived | Receipt] = ()) -> AgentState:
        """This agent's durable state; ``unacked`` were handed to a remote client that has
        not acknowledged them yet, so they come first."""
        queued = [] if self._conn is None else list(self._conn.queue)
        pending = [*unacked, *queued, *self._pending]
        return AgentState(
            agent_id=self._agent_id,
            account=self.account,
            pending=tuple(e for e in pending if isinstance(e, MessageReceived | Receipt)),
            sent=tuple(self._sent),
        )

    def restore(self, state: AgentState) -> None:
        """Take back a saved state (on a network that has not run this agent yet)."""
        self.account = state.account
        self._pending = list(state.pending)
        self._sent = list(state.sent)

    def requeue(self, events: Sequence[MessageReceived | Receipt]) -> None:
        """Events a remote client never acknowledged: deliver them again, before anything
        newer (as WhatsApp redelivers unacknowledged messages on the next connection)."""
        if self.account is None or not events:
            return  # logged out: the phone's messages for this device are gone with it
        if self.connected:
            assert self._conn is not None
            for event in events:
                self._conn.push(event)
        else:
            self._pending[:0] = events

    # ------------------------------------------------------------------ pairing

    async def pair(
        self,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> Paired:
        """Show rotating QRs on WhatsApp's schedule until scanned; see ``WhatsAppClient.pair``."""
        if self.pairing is not None:
            raise WhatsAppError(f"agent {self._agent_id!r} is already pairing")
        pairing = _Pairing(
            keys=self._net.pairing_keys(), ends_at=trio.current_time() + sum(QR_SCHEDULE)
        )
        self.pairing = pairing
        try:
            for index, lifetime in enumerate(QR_SCHEDULE):
                # The QR's life starts when it is made, not when the consumer takes it.
                deadline = trio.current_time() + lifetime
                pairing.qr = QrCode(self._net.qr_payload(pairing.keys), index, lifetime)
                if index == 0:
                    task_status.started()  # scannable from here on, even before it is delivered
                await events.send(pairing.qr)
                with trio.move_on_at(deadline):
                    await pairing.done.wait()
                if pairing.done.is_set():
                    break
        finally:
            # Cleared before the outcome is pushed, so nothing can scan a QR that is gone.
            self.pairing = None
        if isinstance(pairing.outcome, Paired):
            self.account = pairing.outcome
            await events.send(pairing.outcome)
            return pairing.outcome
        reason = pairing.outcome or "timeout"
        await events.send(PairingFailed(reason))
        raise PairingError(reason)

    async def pair_phone(self, phone: str) -> str:
        """A code to type on ``phone`` instead of scanning; see ``WhatsAppClient.pair_phone``.

        It lives ``PAIR_CODE_LIFETIME`` seconds, and never past the end of the QR schedule (the
        connection whatsmeow asks on closes then); asking again replaces it.
        """
        await trio.lowlevel.checkpoint()  # the round trip to WhatsApp
        digits = pairing_digits(phone)
        pairing = self.pairing
        if pairing is None or pairing.qr is None or pairing.outcome is not None:
            raise NotConnected(f"agent {self._agent_id!r} is not waiting for a QR scan")
        now = trio.current_time()
        expires_at = min(now + PAIR_CODE_LIFETIME, pairing.ends_at)
        pairing.phone_code = PhoneCode(self._net.new_pair_code(), digits, expires_at)
        return pairing.phone_code.code

    # ------------------------------------------------------------------ connection

    async def run(
        self,
        device_jid: str,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> ConnectionEnd:
        """Connect and push events until the connection ends; see ``WhatsAppClient.run``."""
        if self._conn is not None:
            raise WhatsAppError(f"agent {self._agent_id!r} is already running")
        await self._net.stalled(
            self._agent_id
        )  # a stall control of the network (sim/whatsapp.py, sim/network.py)
        failure = self._net.connect_failure(device_jid)
        if failure is not None:
            self.end(failure)  # a device found logged out is forgotten here too
            await events.send(failure)
            raise ConnectFailed(failure)
        conn = _Connection(device_jid)
        self._conn = conn
        self.account = self._net.attach(device_jid, self)
        self._go_online(conn)
        # Started only once the connection is registered, so sends right after start() work.
        task_status.started()
        try:
            while True:
                while conn.queue:
                    event = conn.queue[0]
                    if self._net.on_handover is not None:
                        self._net.on_handover(event)
                    await events.send(event)
                    # Popped only once delivered: a cancelled send leaves it for redelivery.
                    conn.queue.popleft()
                    if isinstance(event, MessageReceived):
                        self._net.acknowledged(event.message.id)
                    if event is conn.end:
                        return conn.end
                conn.wake = trio.Event()
                if conn.offline_until is None or conn.end is not None:
                    await conn.wake.wait()
                    continue
                with trio.move_on_at(conn.offline_until):
                    await conn.wake.wait()
                if conn.end is None and trio.current_time() >= conn.offline_until:
                    conn.offline_until = None
                    self._go_online(conn)
        finally:
            self._conn = None
            self._net.detach(device_jid, self)
            if self.account is not None:
                # Not yet handed over means not acknowledged: the server delivers it again,
                # before anything that arrived after the connection ended.
                self._pending[:0] = [
                    e for e in conn.queue if isinstance(e, MessageReceived | Receipt)
                ]

    def _go_online(self, conn: _Connection) -> None:
        """Push ``Connected``, then whatever the server kept while we were offline."""
        conn.push(Connected())
        for event in self._pending:
            conn.push(event)
        self._pending.clear()

    def sent_records(self) -> list[SentRecord]:
        """What this client sent, in order."""
        return list(self._sent)

    def deliver(self, event: MessageReceived | MessageUnreadable | Receipt) -> None:
        """Hand an inbound event to the live connection, or keep it for the next one."""
        if self.connected:
            assert self._conn is not None
            self._conn.push(event)
        else:
            self._pending.append(event)

    def _interrupt(self, reason: str, seconds: float) -> Disconnected:
        """Go offline for ``seconds`` and come back by ourselves, as whatsmeow does."""
        conn = self._require_connected()
        event = Disconnected(reason)
        conn.offline_until = trio.current_time() + seconds
        conn.push(event)
        return event

    def end(self, event: ConnectionEnd) -> None:
        """End the running connection with ``event`` (after everything queued before it)."""
        if self._conn is not None and self._conn.end is None:
            self._conn.end = event
            self._conn.push(event)
        if isinstance(event, LoggedOut):
            self.account = None
            self._pending.clear()

    def _require_connected(self) -> _Connection:
        if not self.connected:
            raise NotConnected(f"agent {self._agent_id!r} is not connected")
        assert self._conn is not None
        return self._conn

    async def logout(self) -> None:
        """Unlink the device; the connection ends with ``LoggedOut(reason="logout")``."""
        await trio.lowlevel.checkpoint()
        conn = self._require_connected()
        self._net.unlink(conn.device_jid)
        self.end(LoggedOut("logout", on_connect=False))

    # ------------------------------------------------------------------ sending

    async def _ready(self, to: str) -> None:
        """Wait for the "network", then check the client can send to ``to``."""
        # The checkpoint stands for the round trip; checking after it makes each send atomic
        # with respect to drops injected by other tasks.
        await trio.lowlevel.checkpoint()
        await self._net.stalled(
            self._agent_id
        )  # a stall control of the network (sim/whatsapp.py, sim/network.py)
        self._require_connected()
        if _JID_RE.fullmatch(to) is None:
            raise InvalidRecipient(f"not a WhatsApp JID: {to!r}", details={"to": to})

    def _keep(self, record: SentRecord) -> SendResult:
        """Record a message send and answer like WhatsApp (timestamps in whole seconds)."""
        assert record.message_id is not None
        self._sent.append(record)
        return SendResult(record.message_id, self._net.now_ms() // 1000 * 1000)

    def _message(self, kind: SentKind, to: str) -> SentRecord:
        """The common part of a sent message's record, with a fresh message id."""
        return SentRecord(
            kind=kind, to=to, at=trio.current_time(), message_id=self._net.new_message_id()
        )

    async def send_text(
        self, to: str, text: str, *, quote: Quote | None = None, mentions: Sequence[str] = ()
    ) -> SendResult:
        """Send a text message."""
        await self._ready(to)
        return self._keep(
            attrs.evolve(
                self._message("text", to), text=text, quote=quote, mentions=tuple(mentions)
            )
        )

    async def send_image(
        self,
        to: str,
        data: bytes,
        *,
        mimetype: str,
        caption: str | None = None,
        filename: str | None = None,
        quote: Quote | None = None,
    ) -> SendResult:
        """Send an image."""
        return await self._send_media(
            "image", to, data, mimetype=mimetype, text=caption, filename=filename, quote=quote
        )

    async def send_document(
        self,
        to: str,
        data: bytes,
        *,
        mimetype: str,
        filename: str,
        caption: str | None = None,
        quote: Quote | None = None,
    ) -> SendResult:
        """Send a document."""
        return await self._send_media(
            "document", to, data, mimetype=mimetype, text=caption, filename=filename, quote=quote
        )

    async def send_audio(
        self, to: str, data: bytes, *, mimetype: str, ptt: bool = False, quote: Quote | None = None
    ) -> SendResult:
        """Send audio (a voice note when ``ptt``)."""
        return await self._send_media("audio", to, data, mimetype=mimetype, ptt=ptt, quote=quote)

    async def send_video(
        self,
        to: str,
        data: bytes,
        *,
        mimetype: str,
        caption: str | None = None,
        quote: Quote | None = None,
    ) -> SendResult:
        """Send a video."""
        return await self._send_media(
            "video", to, data, mimetype=mimetype, text=caption, quote=quote
        )

    async def _send_media(self, kind: SentKind, to: str, data: bytes, **fields: Any) -> SendResult:
        """Record one media send; ``fields`` are SentRecord fields (text is the caption)."""
        await self._ready(to)
        return self._keep(attrs.evolve(self._message(kind, to), media_size=len(data), **fields))

    async def download_media(self, media: Media) -> bytes:
        """The bytes the network holds for an injected attachment (see ``inject_media``)."""
        await trio.lowlevel.checkpoint()
        self._require_connected()
        await self._net.stalled(self._agent_id)
        if media.ref is None:
            raise WhatsAppError("media has no download reference")
        return self._net.media_bytes(media.ref, media.size)

    async def set_typing(self, chat: str, on: bool) -> None:
        """Record a typing on/off presence."""
        await self._ready(chat)
        self._sent.append(SentRecord(kind="typing", to=chat, at=trio.current_time(), typing=on))

    async def mark_read(self, chat: str, sender: str | None, message_ids: Sequence[str]) -> None:
        """Record a read receipt."""
        await self._ready(chat)
        self._sent.append(
            SentRecord(
                kind="read", to=chat, at=trio.current_time(), sender=sender,
                message_ids=tuple(message_ids),
            )
        )  # fmt: skip

    # ------------------------------------------------------------------ lookups

    async def pn_for_lid(self, lid: str) -> str | None:
        """The phone-number JID the network knows for ``lid``, or None."""
        await trio.lowlevel.checkpoint()
        self._require_connected()
        return self._net.pn_for(non_ad(lid))

    async def lid_for_pn(self, pn: str) -> str | None:
        """The LID the network knows for ``pn``, or None."""
        await trio.lowlevel.checkpoint()
        self._require_connected()
        return self._net.lid_for(non_ad(pn))
