"""neonize events, built from neonize's own protobuf classes, become the port's types; the
messages the adapter sends are built as WhatsApp expects them."""

from __future__ import annotations

import pytest

from gatewayd.whatsapp.neonize.env import import_neonize

import_neonize()  # before any other neonize import: it leaks a pipe at import (silenced there)

from neonize.events import (  # noqa: E402
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.exc import NeonizeError, SendMessageError
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource, UploadResponse
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    Message,
    ProtocolMessage,
    VideoMessage,
)

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.whatsapp.neonize import send as build
from gatewayd.whatsapp.neonize.gate import map_exceptions
from gatewayd.whatsapp.neonize.translate import (
    jid_to_str,
    str_to_jid,
    translate_event,
    translate_message,
)
from gatewayd.whatsapp.port import (
    ClientOutdated,
    Connected,
    Disconnected,
    LoggedOut,
    Media,
    MessageReceived,
    Paired,
    PairingFailed,
    Quote,
    Receipt,
    SendResult,
    StreamReplaced,
    TemporaryBan,
)

ME = "628111000111"
ALICE_PN, ALICE_LID = "628222000222", "111222333444555"
BOB_PN, BOB_LID = "628333000333", "999888777666555"
GROUP = "120363025246125486"
TS_MS = 1789015800000


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> JID:
    return JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


EMPTY = JID(User="", Server="", IsEmpty=True)


def message_ev(
    message: Message,
    *,
    chat: JID,
    sender: JID,
    sender_alt: JID = EMPTY,
    recipient_alt: JID = EMPTY,
    is_group: bool = False,
    from_me: bool = False,
    addressing: int | None = None,
    is_edit: bool = False,
    push_name: str = "Alice",
) -> MessageEv:
    source = MessageSource(
        Chat=chat, Sender=sender, SenderAlt=sender_alt, RecipientAlt=recipient_alt,
        IsGroup=is_group, IsFromMe=from_me,
    )  # fmt: skip
    if addressing is not None:
        source.AddressingMode = addressing
    info = MessageInfo(
        MessageSource=source, ID="3EB0ABC", Pushname=push_name, Timestamp=TS_MS, Type="text"
    )
    return MessageEv(Info=info, Message=message, IsEdit=is_edit)


def test_private_message_by_phone_number() -> None:
    """A private PN-addressed message keeps chat, sender, push name, text and ms timestamp."""
    ev = message_ev(
        Message(conversation="hello"), chat=jid(ALICE_PN), sender=jid(ALICE_PN, device=3)
    )
    out = translate_event(ev)
    assert isinstance(out, MessageReceived)
    msg = out.message
    assert (msg.id, msg.chat, msg.sender, msg.text) == (
        "3EB0ABC",
        f"{ALICE_PN}@s.whatsapp.net",
        f"{ALICE_PN}@s.whatsapp.net",
        "hello",
    )
    assert msg.timestamp_ms == TS_MS
    assert msg.push_name == "Alice"
    assert not (
        msg.is_group
        or msg.is_status_broadcast
        or msg.is_newsletter
        or msg.is_from_me
        or msg.is_edit
    )
    assert msg.sender_lid is None and msg.chat_lid is None


def test_private_message_by_lid_takes_the_phone_number_from_sender_alt() -> None:
    """A LID-addressed private message uses SenderAlt's PN and keeps both LIDs."""
    ev = message_ev(
        Message(conversation="hi"),
        chat=jid(ALICE_LID, "lid"), sender=jid(ALICE_LID, "lid", device=2),
        sender_alt=jid(ALICE_PN, device=2), addressing=2,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.sender == msg.chat == f"{ALICE_PN}@s.whatsapp.net"
    assert msg.sender_lid == msg.chat_lid == f"{ALICE_LID}@lid"


def test_own_message_in_a_lid_chat_takes_the_peer_from_recipient_alt() -> None:
    """Our own message in a LID chat gets the other side's PN from RecipientAlt."""
    ev = message_ev(
        Message(conversation="sent from phone"),
        chat=jid(ALICE_LID, "lid"), sender=jid(ME), recipient_alt=jid(ALICE_PN), from_me=True,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.is_from_me
    assert msg.chat == f"{ALICE_PN}@s.whatsapp.net" and msg.chat_lid == f"{ALICE_LID}@lid"
    assert msg.sender == f"{ME}@s.whatsapp.net"


def test_lid_sender_without_alternative_keeps_the_lid() -> None:
    """Without SenderAlt, sender stays the LID (resolved later by a connected client)."""
    ev = message_ev(
        Message(conversation="x"),
        chat=jid(GROUP, "g.us"),
        sender=jid(BOB_LID, "lid"),
        is_group=True,
    )
    msg = translate_message(ev)
    assert msg.sender == msg.sender_lid == f"{BOB_LID}@lid"


def test_group_message_with_mention_by_phone_number() -> None:
    """A group message carries the mentioned PN JIDs from contextInfo."""
    text = ExtendedTextMessage(
        text=f"@{ME} ping", contextInfo=ContextInfo(mentionedJID=[f"{ME}@s.whatsapp.net"])
    )
    ev = message_ev(
        Message(extendedTextMessage=text),
        chat=jid(GROUP, "g.us"),
        sender=jid(ALICE_PN),
        is_group=True,
    )
    msg = translate_message(ev)
    assert msg.is_group and msg.chat == f"{GROUP}@g.us"
    assert msg.text == f"@{ME} ping"
    assert msg.mentioned_jids == (f"{ME}@s.whatsapp.net",)


def test_group_message_with_mention_by_lid() -> None:
    """In a LID group, mentions are LID JIDs and the sender's PN comes from SenderAlt."""
    text = ExtendedTextMessage(
        text="@123 hi", contextInfo=ContextInfo(mentionedJID=["123456789@lid"])
    )
    ev = message_ev(
        Message(extendedTextMessage=text), chat=jid(GROUP, "g.us"), sender=jid(BOB_LID, "lid"),
        sender_alt=jid(BOB_PN), is_group=True, addressing=2,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.mentioned_jids == ("123456789@lid",)
    assert msg.sender == f"{BOB_PN}@s.whatsapp.net" and msg.sender_lid == f"{BOB_LID}@lid"


def test_status_broadcast_is_flagged_and_reported_as_group() -> None:
    """status@broadcast is a status broadcast, and (as WhatsApp says) a group."""
    ev = message_ev(
        Message(conversation="story"),
        chat=jid("status", "broadcast"),
        sender=jid(ALICE_LID, "lid"),
        is_group=True,
    )
    msg = translate_message(ev)
    assert msg.is_status_broadcast and msg.is_group
    assert msg.chat == "status@broadcast"


def test_newsletter_message_is_flagged() -> None:
    """A channel message is flagged as newsletter."""
    ev = message_ev(
        Message(conversation="news"),
        chat=jid("120363999", "newsletter"),
        sender=jid("120363999", "newsletter"),
    )
    msg = translate_message(ev)
    assert msg.is_newsletter and msg.chat == "120363999@newsletter"


@pytest.mark.parametrize(
    ("message", "media_type", "media"),
    [
        (
            Message(
                imageMessage=ImageMessage(mimetype="image/jpeg", fileLength=1234, caption="look")
            ),
            "image",
            Media(mimetype="image/jpeg", size=1234, caption="look"),
        ),
        (
            Message(
                audioMessage=AudioMessage(
                    mimetype="audio/ogg; codecs=opus", fileLength=99, seconds=7, PTT=True
                )
            ),
            "audio",
            Media(mimetype="audio/ogg; codecs=opus", size=99, seconds=7, ptt=True),
        ),
        (
            Message(
                documentMessage=DocumentMessage(
                    mimetype="application/pdf", fileLength=5, fileName="a.pdf", caption="doc"
                )
            ),
            "document",
            Media(mimetype="application/pdf", size=5, caption="doc", filename="a.pdf"),
        ),
        (
            Message(videoMessage=VideoMessage(mimetype="video/mp4", fileLength=10, seconds=3)),
            "video",
            Media(mimetype="video/mp4", size=10, seconds=3),
        ),
    ],
)
def test_media_messages_describe_their_attachment(
    message: Message, media_type: str, media: Media
) -> None:
    """Image, voice note, document and video messages carry type and metadata; captions are text."""
    msg = translate_message(message_ev(message, chat=jid(ALICE_PN), sender=jid(ALICE_PN)))
    assert msg.media_type == media_type
    assert msg.media == media
    assert msg.text == media.caption


def test_quoted_reply_carries_the_quoted_message() -> None:
    """A reply has the quoted id, sender and text from contextInfo."""
    ctx = ContextInfo(
        stanzaID="QUOTED1",
        participant=f"{ME}@s.whatsapp.net",
        quotedMessage=Message(conversation="original"),
    )
    ev = message_ev(
        Message(extendedTextMessage=ExtendedTextMessage(text="reply", contextInfo=ctx)),
        chat=jid(ALICE_PN), sender=jid(ALICE_PN),
    )  # fmt: skip
    msg = translate_message(ev)
    assert (msg.quoted_id, msg.quoted_sender, msg.quoted_text) == (
        "QUOTED1",
        f"{ME}@s.whatsapp.net",
        "original",
    )
    assert msg.text == "reply"


def edit_of(original_id: str, content: Message) -> Message:
    """An edit as WhatsApp sends it: a MESSAGE_EDIT protocol message naming the original."""
    return Message(
        protocolMessage=ProtocolMessage(
            key=MessageKey(remoteJID=f"{ALICE_PN}@s.whatsapp.net", fromMe=False, ID=original_id),
            type=ProtocolMessage.MESSAGE_EDIT,
            editedMessage=content,
            timestampMS=TS_MS,
        )
    )


def test_edit_carries_the_new_text_and_the_edited_message_id() -> None:
    """An edit (as whatsmeow hands it over: the protocol message, IsEdit set) has the new text."""
    ev = message_ev(
        edit_of("ORIGINAL1", Message(conversation="fixed")),
        chat=jid(ALICE_PN), sender=jid(ALICE_PN), is_edit=True,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.is_edit and msg.text == "fixed"
    assert msg.edited_id == "ORIGINAL1" and msg.id == "3EB0ABC"


def test_edit_is_read_with_or_without_its_outer_wrapper() -> None:
    """An edit still wrapped in editedMessage, or sent bare without IsEdit, reads the same."""
    content = edit_of("ORIGINAL2", Message(extendedTextMessage=ExtendedTextMessage(text="v2")))
    wrapped = Message(editedMessage=FutureProofMessage(message=content))
    for message in (wrapped, content):
        msg = translate_message(message_ev(message, chat=jid(ALICE_PN), sender=jid(ALICE_PN)))
        assert (msg.is_edit, msg.text, msg.edited_id) == (True, "v2", "ORIGINAL2")


def test_caption_edit_is_not_a_new_attachment() -> None:
    """A caption edit carries the new caption as text and no media."""
    content = Message(imageMessage=ImageMessage(caption="better caption"))
    ev = message_ev(
        edit_of("IMG1", content), chat=jid(ALICE_PN), sender=jid(ALICE_PN), is_edit=True
    )
    msg = translate_message(ev)
    assert msg.text == "better caption" and msg.media is None and msg.media_type is None


def test_broadcast_list_message_is_a_private_message_from_its_sender() -> None:
    """A broadcast-list message (reported as a group) is a replyable DM from its sender."""
    ev = message_ev(
        Message(conversation="to all my contacts"),
        chat=jid("1789015800", "broadcast"), sender=jid(ALICE_PN, device=2), is_group=True,
    )  # fmt: skip
    msg = translate_message(ev)
    assert not msg.is_group and not msg.is_status_broadcast
    assert msg.chat == msg.sender == f"{ALICE_PN}@s.whatsapp.net"


def test_broadcast_list_message_from_a_lid_keeps_the_lid_as_chat() -> None:
    """A LID-only broadcast-list sender is the chat, by LID, until the client resolves it."""
    ev = message_ev(
        Message(conversation="hi"),
        chat=jid("1789015801", "broadcast"), sender=jid(BOB_LID, "lid"), is_group=True,
    )  # fmt: skip
    msg = translate_message(ev)
    assert not msg.is_group
    assert msg.chat == msg.chat_lid == msg.sender == f"{BOB_LID}@lid"


def test_reply_in_a_lid_group_quotes_the_sender_by_lid() -> None:
    """A quote of a message in a LID-addressed group names the participant by LID."""
    ev = message_ev(
        Message(conversation="@bot hi"), chat=jid(GROUP, "g.us"), sender=jid(BOB_LID, "lid"),
        sender_alt=jid(BOB_PN), is_group=True, addressing=2,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.addressing_mode == "lid" and msg.sender == f"{BOB_PN}@s.whatsapp.net"
    ctx = build.text_message("answer", quote=msg.reply_quote()).extendedTextMessage.contextInfo
    assert (ctx.stanzaID, ctx.participant) == ("3EB0ABC", f"{BOB_LID}@lid")
    assert not ctx.remoteJID


def test_reply_in_a_pn_group_quotes_the_sender_by_phone_number() -> None:
    """A quote of a message in a PN-addressed group names the participant by phone number."""
    ev = message_ev(
        Message(conversation="@bot hi"), chat=jid(GROUP, "g.us"), sender=jid(BOB_PN),
        sender_alt=jid(BOB_LID, "lid"), is_group=True, addressing=1,
    )  # fmt: skip
    msg = translate_message(ev)
    assert msg.addressing_mode == "pn"
    ctx = build.text_message("answer", quote=msg.reply_quote()).extendedTextMessage.contextInfo
    assert ctx.participant == f"{BOB_PN}@s.whatsapp.net"


def test_receipt_is_translated_with_millisecond_time() -> None:
    """A read receipt keeps chat, sender, ids and type; seconds become milliseconds."""
    ev = ReceiptEv(
        MessageSource=MessageSource(Chat=jid(ALICE_PN), Sender=jid(ALICE_PN, device=1)),
        MessageIDs=["A", "B"], Timestamp=1789015800, Type=ReceiptEv.READ,
    )  # fmt: skip
    assert translate_event(ev) == Receipt(
        f"{ALICE_PN}@s.whatsapp.net",
        f"{ALICE_PN}@s.whatsapp.net",
        ("A", "B"),
        "read",
        1789015800000,
    )


@pytest.mark.parametrize(
    ("receipt_type", "expected"),
    [
        (ReceiptEv.PLAYED, "played"),
        # neonize's encoder writes whatsmeow's "played-self" as SERVER_ERROR
        (ReceiptEv.SERVER_ERROR, "played_self"),
        (ReceiptEv.PLAYED_SELF, "played_self"),
        (ReceiptEv.DELIVERED, "delivered"),
        (None, "unknown"),
    ],
)
def test_receipt_types(receipt_type: int | None, expected: str) -> None:
    """PlayedSelf receipts are "played_self", never a server error; an unset type is unknown."""
    ev = ReceiptEv(MessageSource=MessageSource(Chat=jid(ALICE_PN), Sender=jid(ALICE_PN)))
    ev.MessageIDs.append("A")
    if receipt_type is not None:
        ev.Type = receipt_type
    out = translate_event(ev)
    assert isinstance(out, Receipt) and out.type == expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [(2, "logged_out"), (4, "main_device_gone"), (5, "unknown_logout"), (None, "unknown")],
)
def test_logged_out_reasons(reason: int | None, expected: str) -> None:
    """Logged-out reasons become lower-case names; an unset reason is "unknown"."""
    ev = (
        LoggedOutEv(OnConnect=True)
        if reason is None
        else LoggedOutEv(OnConnect=False, Reason=reason)
    )
    out = translate_event(ev)
    assert out == LoggedOut(expected, on_connect=reason is None)
    assert out.terminal


def test_temporary_ban_carries_its_code_and_expiry() -> None:
    """A temporary ban names its reason and lasts ``Expire`` seconds."""
    out = translate_event(TemporaryBanEv(Code=TemporaryBanEv.SEND_TO_TOO_MANY_PEOPLE, Expire=3600))
    assert out == TemporaryBan("send_to_too_many_people", 3600.0)
    assert out.terminal


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (2, LoggedOut("logged_out", on_connect=True)),
        (6, ClientOutdated()),
        (3, TemporaryBan("unknown", 0.0)),
        (10, Disconnected("connect failure service_unavailable: try later")),
    ],
)
def test_connect_failure_reasons(reason: int, expected: object) -> None:
    """Connect failures become the connection end their reason amounts to."""
    assert translate_event(ConnectFailureEv(Reason=reason, Message="try later")) == expected


def test_connection_events() -> None:
    """Connected, disconnected, stream replaced and client outdated map one to one."""
    assert translate_event(ConnectedEv(status=True)) == Connected()
    assert translate_event(DisconnectedEv(status=True)) == Disconnected("connection lost")
    assert translate_event(StreamReplacedEv()) == StreamReplaced()
    assert translate_event(ClientOutdatedEv()) == ClientOutdated()
    assert translate_event(KeepAliveTimeoutEv(ErrorCount=1)) is None


def test_pair_status_success_and_error() -> None:
    """A successful pairing yields the device JID with its device number; an error its reason."""
    ok = PairStatusEv(
        ID=jid(ME, device=12), Status=PairStatusEv.SUCCESS, Platform="android", BusinessName=""
    )
    assert translate_event(ok) == Paired(
        device_jid=f"{ME}:12@s.whatsapp.net", phone=ME, platform="android"
    )
    assert translate_event(PairStatusEv(Status=PairStatusEv.ERROR, Error="bad")) == PairingFailed(
        "bad"
    )


def test_jid_strings_round_trip() -> None:
    """JID strings parse into neonize JIDs and back; garbage is InvalidRecipient."""
    assert (
        jid_to_str(str_to_jid(f"{ME}:12@s.whatsapp.net"), keep_device=True)
        == f"{ME}:12@s.whatsapp.net"
    )
    assert jid_to_str(str_to_jid(f"{ME}:12@s.whatsapp.net")) == f"{ME}@s.whatsapp.net"
    stored = str_to_jid(f"{ME}:12@s.whatsapp.net", device_in_user=True)
    assert (stored.User, stored.Device) == (f"{ME}:12", 0)
    assert jid_to_str(str_to_jid(f"{GROUP}@g.us")) == f"{GROUP}@g.us"
    assert jid_to_str(EMPTY) is None
    with pytest.raises(InvalidRecipient):
        str_to_jid("not a jid")


def test_text_message_is_plain_unless_quoting_or_mentioning() -> None:
    """Plain text is a conversation; quotes and mentions go into an extended text's contextInfo."""
    assert build.text_message("hi") == Message(conversation="hi")
    quote = Quote(
        message_id="Q1", sender=f"{ALICE_PN}@s.whatsapp.net", chat=f"{GROUP}@g.us", text="orig"
    )
    msg = build.text_message("@628 hey", quote=quote, mentions=[f"{BOB_PN}@s.whatsapp.net"])
    ctx = msg.extendedTextMessage.contextInfo
    assert msg.extendedTextMessage.text == "@628 hey"
    assert list(ctx.mentionedJID) == [f"{BOB_PN}@s.whatsapp.net"]
    assert (ctx.stanzaID, ctx.participant, ctx.quotedMessage.conversation) == (
        "Q1",
        quote.sender,
        "orig",
    )


def test_media_messages_are_built_from_the_upload_without_ffmpeg() -> None:
    """Audio and video messages are hand-built from the upload response (no ffmpeg involved)."""
    upload = UploadResponse(
        url="https://mmg/x",
        DirectPath="/x",
        MediaKey=b"k",
        FileEncSHA256=b"e",
        FileSHA256=b"s",
        FileLength=42,
    )
    voice = build.media_message("audio", upload, mimetype="audio/ogg; codecs=opus", ptt=True)
    assert (
        voice.audioMessage.PTT
        and voice.audioMessage.fileLength == 42
        and voice.audioMessage.URL == "https://mmg/x"
    )
    video = build.media_message("video", upload, mimetype="video/mp4", caption="clip")
    assert video.videoMessage.caption == "clip" and video.videoMessage.mimetype == "video/mp4"
    doc = build.media_message("document", upload, mimetype="application/pdf", filename="a.pdf")
    assert doc.documentMessage.fileName == "a.pdf"


def test_send_result_is_in_milliseconds() -> None:
    """WhatsApp's send time (seconds) becomes ``SendResult.timestamp_ms``."""
    from neonize.proto.Neonize_pb2 import SendResponse

    assert build.send_result(SendResponse(ID="3EB0X", Timestamp=1789015800)) == SendResult(
        "3EB0X", 1789015800000
    )


def test_neonize_errors_are_mapped_at_the_edge() -> None:
    """neonize errors become NotConnected or WhatsAppError; a missing ffmpeg is no crash."""
    with pytest.raises(NotConnected), map_exceptions():
        raise SendMessageError("client is nil: ensure client is connected")
    with pytest.raises(WhatsAppError) as info, map_exceptions():
        raise NeonizeError("server returned error 479")
    assert not isinstance(info.value, NotConnected)
    with pytest.raises(WhatsAppError), map_exceptions():
        raise FileNotFoundError(2, "No such file", "ffprobe")
