"""neonize's protobuf events → the port's event types, and JID strings ↔ neonize ``JID``.

Pure functions, no FFI: they only read the protobuf objects neonize hands to callbacks
(``neonize.proto.Neonize_pb2``), so they are tested on events built from those classes.
What the fields mean is in docs/neonize.md ("Events and timestamps"): message timestamps are
milliseconds, receipt timestamps seconds; an empty JID has ``IsEmpty`` set; ``IsGroup`` is true
for ``status@broadcast``; with LID addressing the phone-number JID is in ``SenderAlt`` (or in
``RecipientAlt`` for our own messages) when the server sent it, and may be missing.
What WhatsApp sends for edits, broadcast lists and receipts, and how it is read here, is in
docs/neonize.md ("What a contact and a user see").

LID → phone lookups need a connected client, so they are not done here: a message whose sender
could not be resolved keeps ``sender == sender_lid`` and the client resolves it afterwards.

Poison: neonize's protobufs are proto2, so a string field may hold invalid UTF-8 (whatsmeow
passes on what the sender encoded); the upb runtime then returns ``bytes`` for it. Every string
is read through ``_str``, which decodes such bytes with ``surrogateescape``: the lone surrogates
it leaves are what the daemon replaces and keeps the original of (``gatewayd/textsafe.py``),
and ``.encode("utf-8", "surrogateescape")`` gives the sender's bytes back. A message that still
cannot be translated becomes a ``MessageUnreadable`` (``unreadable_event`` /
``unreadable_bytes``), which the daemon quarantines with the raw event.
"""

from __future__ import annotations

import re
from typing import Any

from gatewayd.errors import InvalidRecipient
from gatewayd.whatsapp.neonize.media import media_ref
from gatewayd.whatsapp.port import (
    AddressingMode,
    ClientEvent,
    ClientOutdated,
    Connected,
    ConnectionEnd,
    Disconnected,
    InboundMessage,
    LoggedOut,
    Media,
    MediaType,
    MessageReceived,
    MessageUnreadable,
    Paired,
    PairingFailed,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)

PN_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
NEWSLETTER_SERVER = "newsletter"
BROADCAST_SERVER = "broadcast"

# ``ProtocolMessage.Type.MESSAGE_EDIT``: an edit carries the new content in
# ``protocolMessage.editedMessage`` and names the edited message in ``protocolMessage.key``.
_MESSAGE_EDIT = 14

# neonize's Go encoder writes whatsmeow's "played-self" receipts as SERVER_ERROR and has no case
# for whatsmeow's real "server-error" (which, like any type it does not know, arrives with
# ``Type`` unset): docs/neonize.md, "Receipt types".
_RECEIPT_TYPE_FIXES = {"server_error": "played_self"}

_ADDRESSING_MODES: dict[int, AddressingMode] = {1: "pn", 2: "lid"}

# What can be a destination: a user (PN or LID, optionally with a device), a group, a channel,
# or the status broadcast. The same rule as the simulated network's.
_JID_RE = re.compile(
    r"(?P<user>[0-9]{5,20})(:(?P<device>[0-9]+))?@(?P<server>s\.whatsapp\.net|lid)"
    r"|(?P<group>[0-9]+(-[0-9]+)?)@g\.us|(?P<channel>[0-9]+)@newsletter|status@broadcast"
)

_LOGOUT_REASONS = {"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"}

# Sub-messages that carry a contextInfo (mentions, quote), text-first.
_CONTEXT_CARRIERS = (
    "extendedTextMessage",
    "imageMessage",
    "videoMessage",
    "audioMessage",
    "documentMessage",
    "stickerMessage",
)
_MEDIA_FIELDS: tuple[tuple[str, MediaType], ...] = (
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
)


# --------------------------------------------------------------------------- strings


def _str(value: Any) -> str:
    """A protobuf string field as ``str``; invalid UTF-8 (read as ``bytes``) decoded reversibly."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


# --------------------------------------------------------------------------- JIDs


def jid_to_str(jid: Any, *, keep_device: bool = False) -> str | None:
    """``JID`` → ``user[:device]@server``; None for an empty JID."""
    if jid.IsEmpty or not jid.Server:
        return None
    user, server = _str(jid.User), _str(jid.Server)
    if not keep_device:
        user = user.partition(":")[0]
    elif jid.Device and ":" not in user:
        user = f"{user}:{jid.Device}"
    return f"{user}@{server}" if user else server


def str_to_jid(value: str, *, device_in_user: bool = False) -> Any:
    """``user[:device]@server`` → neonize ``JID``; ``InvalidRecipient`` when it cannot be one.

    ``device_in_user`` keeps ``user:device`` in ``User`` with ``Device=0``: the form
    ``get_all_devices_from_db`` produces, which round-trips to the device store's key and makes
    neonize's in-process key (``JID.User``) unique per linked device.
    """
    from neonize.proto.Neonize_pb2 import JID

    match = _JID_RE.fullmatch(value.strip())
    if match is None:
        raise InvalidRecipient(f"not a WhatsApp JID: {value!r}", details={"to": value})
    user, _, server = value.strip().partition("@")
    device = 0
    if match.group("device") is not None and not device_in_user:
        user, device = match.group("user"), int(match.group("device"))
    return JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


def empty_jid() -> Any:
    """The JID whatsmeow reads as "none" (e.g. the sender of a one-to-one read receipt)."""
    from neonize.proto.Neonize_pb2 import JID

    return JID(User="", Server="", Device=0, RawAgent=0, Integrator=0, IsEmpty=True)


def _server(jid: Any) -> str | None:
    return None if jid.IsEmpty else _str(jid.Server)


# --------------------------------------------------------------------------- messages


def translate_message(ev: Any) -> InboundMessage:
    """A ``MessageEv`` (neonize ``Neonize_pb2.Message``) → ``InboundMessage``.

    Raises ``ValueError`` for a message without an id: it could be neither deduplicated nor
    answered, and the daemon's unique key would take a second one for a duplicate.
    """
    info = ev.Info
    message_id = _str(info.ID)
    if not message_id:
        raise ValueError("message without an id")
    src = info.MessageSource
    from_me = bool(src.IsFromMe)
    sender_pn, sender_lid = _pn_and_lid(src.Sender, src.SenderAlt)
    sender = sender_pn or sender_lid or jid_to_str(src.Chat) or ""

    chat_lid: str | None = None
    chat = jid_to_str(src.Chat) or ""
    is_group = bool(src.IsGroup)
    is_status = src.Chat.User == "status" and src.Chat.Server == BROADCAST_SERVER
    if _server(src.Chat) == LID_SERVER:
        # A one-to-one chat addressed by LID: the other side's PN is the sender's alternative,
        # or, for our own messages, the recipient's.
        chat_lid = chat
        alt = src.RecipientAlt if from_me else src.SenderAlt
        if _server(alt) == PN_SERVER:
            chat = jid_to_str(alt) or chat
    elif _server(src.Chat) == BROADCAST_SERVER and not is_status:
        # A broadcast list: whatsmeow reports it as a group chat ``<id>@broadcast``, but each
        # recipient sees a private message from the sender, and a reply goes to the sender.
        is_group = False
        if not from_me and sender:
            chat = sender
            chat_lid = sender_lid if sender == sender_lid else None

    msg, is_edit, edited_id = _unwrap_edit(ev.Message, bool(ev.IsEdit))
    text = _text_of(msg)
    ctx = _context_info(msg)
    # An edit changes text or caption only: the attachment is not sent again.
    media_type, media = (None, None) if is_edit else _media_of(msg)
    quoted_id = quoted_sender = quoted_text = None
    mentions: tuple[str, ...] = ()
    if ctx is not None:
        mentions = tuple(_str(mentioned) for mentioned in ctx.mentionedJID)
        if ctx.stanzaID:
            quoted_id = _str(ctx.stanzaID)
            quoted_sender = _str(ctx.participant) or None
            quoted_text = _text_of(ctx.quotedMessage) if ctx.HasField("quotedMessage") else None
    addressing = src.AddressingMode if src.HasField("AddressingMode") else 0
    return InboundMessage(
        id=message_id,
        chat=chat,
        sender=sender,
        timestamp_ms=_ms(info.Timestamp),
        chat_lid=chat_lid,
        sender_lid=sender_lid,
        is_group=is_group,
        is_from_me=from_me,
        push_name=_str(info.Pushname) or None,
        text=text,
        mentioned_jids=mentions,
        quoted_id=quoted_id,
        quoted_sender=quoted_sender,
        quoted_text=quoted_text,
        media_type=media_type,
        media=media,
        is_status_broadcast=is_status,
        is_newsletter=_server(src.Chat) == NEWSLETTER_SERVER,
        is_edit=is_edit,
        edited_id=edited_id,
        addressing_mode=_ADDRESSING_MODES.get(addressing),
    )


def _unwrap_edit(msg: Any, is_edit: bool) -> tuple[Any, bool, str | None]:
    """The content to read, whether it is an edit, and the id of the message edited.

    WhatsApp sends an edit as ``editedMessage`` (a ``FutureProofMessage``) around a
    ``protocolMessage`` of type MESSAGE_EDIT; whatsmeow strips the outer wrapper (setting
    ``IsEdit``), so what arrives here is the protocol message, whose ``editedMessage`` holds
    the new content and whose ``key`` names the edited message. Both layers are read, so a
    build that unwraps less or an edit sent without the wrapper are read the same
    (docs/neonize.md, "Edits").
    """
    if msg.HasField("editedMessage") and msg.editedMessage.HasField("message"):
        msg, is_edit = msg.editedMessage.message, True
    if msg.HasField("protocolMessage") and msg.protocolMessage.type == _MESSAGE_EDIT:
        protocol = msg.protocolMessage
        return protocol.editedMessage, True, _str(protocol.key.ID) or None
    return msg, is_edit, None


def _pn_and_lid(primary: Any, alt: Any) -> tuple[str | None, str | None]:
    """The phone-number and LID forms of a user from a JID and its alternative."""
    pn = lid = None
    for jid in (primary, alt):
        server = _server(jid)
        if server == LID_SERVER and lid is None:
            lid = jid_to_str(jid)
        elif server == PN_SERVER and pn is None:
            pn = jid_to_str(jid)
    return pn, lid


def _ms(timestamp: int) -> int:
    """Milliseconds, from neonize's milliseconds (or seconds, should a build send those)."""
    return int(timestamp) * 1000 if 0 < timestamp < 100_000_000_000 else int(timestamp)


def _text_of(msg: Any) -> str | None:
    if msg.conversation:
        return _str(msg.conversation)
    if msg.HasField("extendedTextMessage") and msg.extendedTextMessage.text:
        return _str(msg.extendedTextMessage.text)
    for field in ("imageMessage", "videoMessage", "documentMessage"):
        if msg.HasField(field) and getattr(msg, field).caption:
            return _str(getattr(msg, field).caption)
    if msg.HasField("documentWithCaptionMessage"):
        inner = msg.documentWithCaptionMessage.message
        if inner.HasField("documentMessage") and inner.documentMessage.caption:
            return _str(inner.documentMessage.caption)
    return None


def _context_info(msg: Any) -> Any | None:
    for field in _CONTEXT_CARRIERS:
        if msg.HasField(field) and getattr(msg, field).HasField("contextInfo"):
            return getattr(msg, field).contextInfo
    return None


def _media_of(msg: Any) -> tuple[MediaType | None, Media | None]:
    if msg.HasField("documentWithCaptionMessage") and not msg.HasField("documentMessage"):
        msg = msg.documentWithCaptionMessage.message
    for field, kind in _MEDIA_FIELDS:
        if not msg.HasField(field):
            continue
        sub = getattr(msg, field)
        has = sub.DESCRIPTOR.fields_by_name
        return kind, Media(
            mimetype=_str(sub.mimetype) or "application/octet-stream",
            size=int(sub.fileLength),
            caption=(_str(sub.caption) or None) if "caption" in has else None,
            filename=(_str(sub.fileName) or None) if "fileName" in has else None,
            seconds=(int(sub.seconds) or None) if "seconds" in has else None,
            ptt=bool(sub.PTT) if "PTT" in has else False,
            ref=media_ref(field, sub),
        )
    return None, None


# --------------------------------------------------------------------------- other events


def translate_receipt(ev: Any) -> Receipt:
    """A ``ReceiptEv`` → ``Receipt`` (timestamp seconds → milliseconds).

    ``Type`` unset means a type neonize's encoder has no case for (whatsmeow's "server-error"
    or a newer one): "unknown", never a guess such as "delivered".
    """
    src = ev.MessageSource
    chat = jid_to_str(src.Chat) or ""
    sender = jid_to_str(src.Sender) or chat
    ids = tuple(_str(message_id) for message_id in ev.MessageIDs)
    kind = _enum_name(ev, "Type", "unknown")
    return Receipt(chat, sender, ids, _RECEIPT_TYPE_FIXES.get(kind, kind), _ms(ev.Timestamp))


def translate_logged_out(ev: Any) -> LoggedOut:
    """A ``LoggedOutEv`` → ``LoggedOut`` (whatsmeow has already deleted the device)."""
    return LoggedOut(_enum_name(ev, "Reason", "unknown"), on_connect=bool(ev.OnConnect))


def translate_temporary_ban(ev: Any) -> TemporaryBan:
    """A ``TemporaryBanEv`` → ``TemporaryBan``; ``Expire`` is the ban's length in seconds."""
    return TemporaryBan(_enum_name(ev, "Code", "unknown"), float(ev.Expire))


def translate_connect_failure(ev: Any) -> ConnectionEnd:
    """A ``ConnectFailureEv`` → the ``ConnectionEnd`` it amounts to."""
    reason = _enum_name(ev, "Reason", "generic").upper()
    if reason in _LOGOUT_REASONS:
        return LoggedOut(reason.lower(), on_connect=True)
    if reason == "CLIENT_OUTDATED":
        return ClientOutdated()
    if reason == "TEMP_BANNED":
        return TemporaryBan("unknown", 0.0)
    detail = f": {_str(ev.Message)}" if ev.Message else ""
    return Disconnected(f"connect failure {reason.lower()}{detail}")


def translate_pair_status(ev: Any) -> Paired | PairingFailed:
    """A ``PairStatusEv`` → ``Paired`` on success, ``PairingFailed`` otherwise."""
    if _enum_name(ev, "Status", "error") == "success" and not ev.ID.IsEmpty:
        device_jid = jid_to_str(ev.ID, keep_device=True) or ""
        return Paired(
            device_jid=device_jid,
            phone=_str(ev.ID.User).partition(":")[0],
            platform=_str(ev.Platform) or None,
            push_name=_str(ev.BusinessName) or None,
        )
    return PairingFailed(_str(ev.Error) or "error")


def _enum_name(ev: Any, field: str, default: str) -> str:
    """The lower-case enum name of ``field``, or ``default`` when it is unset or unknown."""
    if not ev.HasField(field):
        return default
    descriptor = ev.DESCRIPTOR.fields_by_name[field].enum_type
    value = descriptor.values_by_number.get(getattr(ev, field))
    return value.name.lower() if value is not None else default


def translate_event(ev: Any) -> ClientEvent | None:
    """Any consumed neonize event → its port event; None for events the port does not carry."""
    from neonize.events import (
        ClientOutdatedEv,
        ConnectedEv,
        ConnectFailureEv,
        DisconnectedEv,
        LoggedOutEv,
        MessageEv,
        PairStatusEv,
        ReceiptEv,
        StreamReplacedEv,
        TemporaryBanEv,
    )

    if isinstance(ev, MessageEv):
        return MessageReceived(translate_message(ev))
    if isinstance(ev, ReceiptEv):
        return translate_receipt(ev)
    if isinstance(ev, ConnectedEv):
        return Connected()
    if isinstance(ev, DisconnectedEv):
        return Disconnected("connection lost")
    if isinstance(ev, LoggedOutEv):
        return translate_logged_out(ev)
    if isinstance(ev, StreamReplacedEv):
        return StreamReplaced()
    if isinstance(ev, TemporaryBanEv):
        return translate_temporary_ban(ev)
    if isinstance(ev, ClientOutdatedEv):
        return ClientOutdated()
    if isinstance(ev, ConnectFailureEv):
        return translate_connect_failure(ev)
    if isinstance(ev, PairStatusEv):
        return translate_pair_status(ev)
    return None


# --------------------------------------------------------------------------- unreadable messages

_REASON_DETAIL = 200  # characters of the exception's message kept in a quarantine reason


def unreadable_reason(exc: BaseException) -> str:
    """The exception's class name and the start of its message, in plain ASCII."""
    detail = str(exc).encode("ascii", "backslashreplace").decode("ascii")
    if len(detail) > _REASON_DETAIL:
        detail = detail[:_REASON_DETAIL] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def unreadable_event(ev: Any, exc: BaseException) -> MessageUnreadable:
    """A parsed ``MessageEv`` that ``translate_message`` refused → ``MessageUnreadable``.

    ``raw`` is the event re-serialised; *partially*, because neonize's messages have required
    fields and a strict ``SerializeToString`` would refuse the very events that are odd.
    """
    try:
        message_id = _str(ev.Info.ID) or None
    except Exception:
        message_id = None
    try:
        raw = bytes(ev.SerializePartialToString())
    except Exception:
        raw = b""
    return MessageUnreadable(message_id, unreadable_reason(exc), raw)


def unreadable_bytes(data: bytes, exc: BaseException) -> MessageUnreadable:
    """A ``MessageEv`` whose bytes neonize could not even parse → ``MessageUnreadable``.

    The id is taken from the ``Info`` field alone when that parses: the bytes are read as an
    empty message first, so every field stays an opaque unknown field, however deep it nests.
    """
    return MessageUnreadable(_message_id_of(data), unreadable_reason(exc), data)


def _message_id_of(data: bytes) -> str | None:
    from google.protobuf.empty_pb2 import Empty  # type: ignore[import-untyped]
    from google.protobuf.unknown_fields import UnknownFieldSet  # type: ignore[import-untyped]
    from neonize.proto.Neonize_pb2 import Message, MessageInfo

    info_number = Message.DESCRIPTOR.fields_by_name["Info"].number
    try:
        for field in UnknownFieldSet(Empty.FromString(data)):
            if field.field_number == info_number and isinstance(field.data, bytes):
                return _str(MessageInfo.FromString(field.data).ID) or None
    except Exception:
        pass
    return None
