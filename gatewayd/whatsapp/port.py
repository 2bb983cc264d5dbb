"""The WhatsApp port: the project's own types for one WhatsApp account, and the Protocols.

Everything above this module speaks these types; only the adapters (neonize, the simulated
network) know where the events come from. The shapes follow what neonize 0.5.2 / whatsmeow
really deliver (docs/neonize.md, "Events and timestamps", "QR codes and the pairing window"),
so the neonize adapter can translate one to one:

* JIDs are plain strings in WhatsApp's spelling: ``628123@s.whatsapp.net``, ``1203630…@g.us``,
  ``123456789@lid``, ``status@broadcast``, ``…@newsletter``. A device JID carries its device
  number: ``628123:12@s.whatsapp.net``.
* Times are integer milliseconds since the Unix epoch (``timestamp_ms``); durations are float
  seconds (``expires_in``).
* An event is a frozen attrs value. ``kind`` names it for logs and broadcasts; ``terminal`` is
  true for the kinds after which nothing should reconnect on its own (the phone logged us out,
  another client took the session, a ban, an outdated client, a failed pairing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol, TypeAlias

import attrs
import trio

from gatewayd.errors import WhatsAppError

MediaType: TypeAlias = Literal["image", "document", "audio", "video", "sticker"]
AddressingMode: TypeAlias = Literal["pn", "lid"]

STATUS_BROADCAST = "status@broadcast"


# --------------------------------------------------------------------------- value types


@attrs.frozen(kw_only=True)
class Quote:
    """A message being replied to: enough to build WhatsApp's ``contextInfo`` quote.

    ``sender`` is the quoted author as WhatsApp addressed them in that chat: in a LID-addressed
    group that is their ``…@lid`` JID (``InboundMessage.reply_quote`` picks it).
    """

    message_id: str
    sender: str
    chat: str
    text: str | None = None


@attrs.frozen(kw_only=True)
class Media:
    """What an inbound media message says about its attachment (the bytes stay upstream)."""

    mimetype: str
    size: int
    caption: str | None = None
    filename: str | None = None
    seconds: int | None = None  # audio / video duration
    ptt: bool = False  # a voice note rather than an audio file
    #: What the adapter needs to fetch the bytes again (``WhatsAppClient.download_media``), in
    #: its own spelling: neonize's is the media sub-message (keys included), the simulated
    #: network's its own id. Stored with the message; never shown to API clients.
    ref: str | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen(kw_only=True)
class InboundMessage:
    """One received message, normalised from neonize's ``MessageEv``.

    ``chat`` and ``sender`` are the phone-number (PN) JIDs when the adapter could resolve them
    and the ``@lid`` JIDs otherwise, so they are always usable as a reply address;
    ``chat_lid`` / ``sender_lid`` keep the LID form when it is known (``chat_lid`` only for
    one-to-one chats that arrived LID-addressed). ``text`` is the conversation text, the
    extended text or the media caption. ``is_group`` is true for status broadcasts too, because
    that is what WhatsApp reports; test ``is_status_broadcast`` first. A broadcast-list message
    is a private message from its sender (``chat`` is the sender, ``is_group`` false).

    An edit (``is_edit``) has its own ``id`` (so it is stored next to the original, not
    deduplicated away), the new text in ``text``, and the id of the message it changes in
    ``edited_id`` (None when WhatsApp did not say). ``addressing_mode`` is how WhatsApp
    addressed the participants of a group (None when it did not say); a reply quoting the
    message must name its sender the same way (``reply_quote``).
    """

    id: str
    chat: str
    sender: str
    timestamp_ms: int
    chat_lid: str | None = None
    sender_lid: str | None = None
    is_group: bool = False
    is_from_me: bool = False
    push_name: str | None = None
    text: str | None = None
    mentioned_jids: tuple[str, ...] = ()
    quoted_id: str | None = None
    quoted_sender: str | None = None
    quoted_text: str | None = None
    media_type: MediaType | None = None
    media: Media | None = None
    is_status_broadcast: bool = False
    is_newsletter: bool = False
    is_edit: bool = False
    edited_id: str | None = None
    addressing_mode: AddressingMode | None = None

    def reply_quote(self) -> Quote:
        """The ``Quote`` of this message for a reply, naming the sender as WhatsApp addressed it.

        In a LID-addressed group the participant is the sender's LID, as WhatsApp's own clients
        quote it; elsewhere it is ``sender`` (the phone-number JID when known).
        """
        sender = self.sender
        if self.addressing_mode == "lid" and self.sender_lid is not None:
            sender = self.sender_lid
        return Quote(message_id=self.id, sender=sender, chat=self.chat, text=self.text)


@attrs.frozen
class PairCode:
    """A phone pairing code: ``code`` as WhatsApp shows it (``"ABCD-EFGH"``), to be typed on the
    phone within ``expires_in`` seconds (at most; the pairing ending first also ends it)."""

    code: str
    expires_in: float


PAIR_CODE_LIFETIME = 120.0
"""How long a phone pairing code is honoured, in seconds. whatsmeow does not know the exact
expiry; the QR-phase connection it is bound to closes when the QR codes run out (~160 s after
the first one), so a code never outlives its pairing either (docs/neonize.md, "Pairing by
phone number")."""


@attrs.frozen
class SendResult:
    """What WhatsApp answered to a send: the new message's id and its server time."""

    message_id: str
    timestamp_ms: int


# --------------------------------------------------------------------------- events


@attrs.frozen
class Event:
    """Base of every port event."""

    kind: ClassVar[str] = "event"
    terminal: ClassVar[bool] = False


@attrs.frozen
class QrCode(Event):
    """A pairing QR to show; ``index`` counts rotations from 0, ``expires_in`` is its life."""

    kind: ClassVar[str] = "qr"
    payload: str
    index: int
    expires_in: float


@attrs.frozen
class Paired(Event):
    """A phone scanned the QR; ``device_jid`` is the new linked device to ``run`` with."""

    kind: ClassVar[str] = "paired"
    device_jid: str
    phone: str  # international digits, no "+": "628123…"
    lid: str | None = None  # "123…@lid"
    push_name: str | None = None
    platform: str | None = None


@attrs.frozen
class PairingFailed(Event):
    """Pairing ended without a device; ``reason`` is whatsmeow's (``"timeout"``, ``"error"``…).

    ``"passkey_required"``: the account is protected by a passkey, which this client cannot
    answer (docs/neonize.md).
    """

    kind: ClassVar[str] = "pairing_failed"
    terminal: ClassVar[bool] = True
    reason: str


@attrs.frozen
class Connected(Event):
    """The device is online; sends are possible from now on."""

    kind: ClassVar[str] = "connected"


@attrs.frozen
class Disconnected(Event):
    """The connection was lost; connecting again is expected to work."""

    kind: ClassVar[str] = "disconnected"
    reason: str


@attrs.frozen
class LoggedOut(Event):
    """The device was unlinked; its data is gone. ``on_connect``: it happened while connecting."""

    kind: ClassVar[str] = "logged_out"
    terminal: ClassVar[bool] = True
    reason: str
    on_connect: bool = False


@attrs.frozen
class StreamReplaced(Event):
    """Another client opened the same session; WhatsApp closed ours."""

    kind: ClassVar[str] = "stream_replaced"
    terminal: ClassVar[bool] = True


@attrs.frozen
class TemporaryBan(Event):
    """WhatsApp banned the account for ``expires_in`` seconds; ``code`` names why."""

    kind: ClassVar[str] = "temporary_ban"
    terminal: ClassVar[bool] = True
    code: str
    expires_in: float


@attrs.frozen
class ClientOutdated(Event):
    """WhatsApp refuses this client version; only an upgrade helps."""

    kind: ClassVar[str] = "client_outdated"
    terminal: ClassVar[bool] = True


@attrs.frozen
class MessageReceived(Event):
    """A message arrived."""

    kind: ClassVar[str] = "message"
    message: InboundMessage


@attrs.frozen
class MessageUnreadable(Event):
    """A message arrived that the adapter could not turn into an ``InboundMessage``.

    WhatsApp already considers it delivered, so it is kept (quarantined, with ``raw`` — the
    event as the library delivered it — and the reason) rather than dropped.
    """

    kind: ClassVar[str] = "message_unreadable"
    message_id: str | None
    reason: str
    raw: bytes = attrs.field(repr=lambda raw: f"<{len(raw)} bytes>")


@attrs.frozen
class Receipt(Event):
    """A delivery / read / played receipt for messages we sent (``type`` as whatsmeow names it)."""

    kind: ClassVar[str] = "receipt"
    chat: str
    sender: str
    message_ids: tuple[str, ...]
    type: str  # "delivered", "read", "played", "played_self", "sender", "retry", "unknown", …
    timestamp_ms: int


ClientEvent: TypeAlias = (
    QrCode
    | Paired
    | PairingFailed
    | Connected
    | Disconnected
    | LoggedOut
    | StreamReplaced
    | TemporaryBan
    | ClientOutdated
    | MessageReceived
    | MessageUnreadable
    | Receipt
)
"""Every event a client pushes into its events channel."""

ConnectionEnd: TypeAlias = Disconnected | LoggedOut | StreamReplaced | TemporaryBan | ClientOutdated
"""The events that end a connection; ``run`` returns (or raises with) exactly one of them."""

CONNECTION_END_TYPES = (
    Disconnected,
    LoggedOut,
    StreamReplaced,
    TemporaryBan,
    ClientOutdated,
)
"""``ConnectionEnd`` for ``isinstance``."""


# --------------------------------------------------------------------------- errors


class PairingError(WhatsAppError):
    """Pairing ended without a linked device (QR schedule ran out, phone refused, …)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"pairing failed: {reason}", details={"reason": reason})
        self.reason = reason


class ConnectFailed(WhatsAppError):
    """``run`` could not get online; ``event`` says why (and was pushed to the channel too)."""

    def __init__(self, event: ConnectionEnd) -> None:
        super().__init__(f"connect failed: {event.kind}", details={"event": event.kind})
        self.event = event

    @property
    def terminal(self) -> bool:
        """True when retrying cannot help (logged out, banned, outdated)."""
        return self.event.terminal


# --------------------------------------------------------------------------- protocols


class EventSink(Protocol):
    """Where a client pushes its events (a ``trio.MemorySendChannel`` is one).

    ``send`` returns once the daemon has taken responsibility for the event: for a
    ``MessageReceived`` that means the message is committed to the database. A client calls
    it from the path that delivers the event and acknowledges the event to its server only
    after it returned, so an event is never acknowledged and then lost (docs/durability.md).
    ``send`` may wait for a long time (the database is down): that wait is the back-pressure
    that holds events on the WhatsApp side.
    """

    async def send(self, value: ClientEvent) -> None:
        """Hand over one event; returns when the daemon is responsible for it."""
        ...


class WhatsAppClient(Protocol):
    """One account's WhatsApp client.

    Every event, including the one that ends a phase, is pushed into the ``events`` channel the
    caller passes; the channel is the single source of truth for an agent's status. The client
    never closes that channel. Calls other than ``pair`` / ``run`` need a connected client and
    raise ``NotConnected`` otherwise; ``pair_phone`` needs a pairing in progress instead.
    """

    @property
    def agent_id(self) -> str:
        """The agent this client belongs to."""
        ...

    async def pair(
        self,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> Paired:
        """Link a new device: push rotating ``QrCode`` events until a phone scans one.

        ``task_status.started()`` is called once the first QR is showing (scannable). On success
        pushes ``Paired`` and returns it; the caller then calls ``run(paired.device_jid, …)``.
        On failure pushes ``PairingFailed`` and raises ``PairingError``. Cancelling abandons the
        pairing.
        """
        ...

    async def pair_phone(self, phone: str) -> str:
        """Ask WhatsApp for a code that links the phone ``phone`` without a camera.

        Valid only while ``pair`` is showing QR codes (after ``started()``, before the outcome);
        raises ``NotConnected`` otherwise. ``phone`` is the account's number in international
        digits (``"628123456789"``); anything else raises ``InvalidRecipient``. Returns the
        8-character code as WhatsApp formats it (``"ABCD-EFGH"``); once it is typed on that phone
        (WhatsApp → Linked devices → Link with phone number) ``pair`` ends exactly as after a
        scan. A newer code replaces an older one; a code lives ``PAIR_CODE_LIFETIME`` at most.
        Raises ``WhatsAppError`` when WhatsApp refuses or does not answer.
        """
        ...

    async def run(
        self,
        device_jid: str,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> ConnectionEnd:
        """Connect a paired device and push its events until the connection ends.

        ``task_status.started()`` is called once connected (``Connected`` is the first event).
        When the connection ends, the ending event is pushed and returned; the caller decides
        whether to reconnect (``event.terminal``). If it cannot get online at all, the ending
        event is pushed and ``ConnectFailed`` raised before ``started()``, so ``nursery.start``
        fails where it was asked. Cancelling disconnects; it never logs out.

        A client whose library heals short breaks by itself (whatsmeow does) may push
        ``Disconnected`` and later ``Connected`` within one ``run``: treat those events as status
        changes, and only ``run`` returning as the end of the connection.
        """
        ...

    async def send_text(
        self, to: str, text: str, *, quote: Quote | None = None, mentions: Sequence[str] = ()
    ) -> SendResult:
        """Send a text message, optionally quoting one and mentioning JIDs."""
        ...

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
        ...

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
        ...

    async def send_audio(
        self, to: str, data: bytes, *, mimetype: str, ptt: bool = False, quote: Quote | None = None
    ) -> SendResult:
        """Send audio; ``ptt=True`` makes it a voice note."""
        ...

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
        ...

    async def download_media(self, media: Media) -> bytes:
        """The bytes of a received attachment (decrypted), fetched from WhatsApp's servers.

        Needs a connected client (``NotConnected`` otherwise). ``WhatsAppError`` when the media
        cannot be had (no ``ref``, expired on the servers, a failed check). The caller checks
        ``media.size`` against its limit first: an adapter holds the whole file in memory.
        """
        ...

    async def set_typing(self, chat: str, on: bool) -> None:
        """Show (``on``) or clear the "typing…" indicator in a chat."""
        ...

    async def mark_read(self, chat: str, sender: str | None, message_ids: Sequence[str]) -> None:
        """Mark messages read; ``sender`` is required in groups, ids must share one sender."""
        ...

    async def pn_for_lid(self, lid: str) -> str | None:
        """The phone-number JID behind a ``…@lid`` JID, or None when unknown (local lookup)."""
        ...

    async def lid_for_pn(self, pn: str) -> str | None:
        """The ``…@lid`` JID of a phone-number JID, or None when unknown (local lookup)."""
        ...

    async def logout(self) -> None:
        """Unlink this device from the phone; the running connection ends with ``LoggedOut``."""
        ...


class WhatsAppBackend(Protocol):
    """Makes clients and manages the stored device data they share."""

    def client(self, agent_id: str) -> WhatsAppClient:
        """The client of one agent (the same object for repeated calls with one id)."""
        ...

    async def known_devices(self) -> frozenset[str]:
        """Device JIDs with stored credentials: only these can be passed to ``run``."""
        ...

    async def forget_device(self, device_jid: str) -> None:
        """Remove a device's stored data (idempotent); a live connection is not touched."""
        ...
