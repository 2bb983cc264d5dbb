"""Odd content from WhatsApp, fed through neonize's own callback path, never kills a session and
is never dropped: each message reaches the daemon's sink once, storable or quarantined.

The events are the bytes Go would hand over (built with neonize's protobuf classes, or by hand
where those refuse to build them) and go in through ``Event.execute``, the function neonize's
ctypes callback calls on its own thread, with the session's handlers registered as in a real
connect. Nothing is connected: the Go library is not called at all.

The sink stands in for the daemon's (``gatewayd/nursery/agent.py``): it records what it was
handed; storability is checked with the daemon's own ``sanitize_inbound``.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any, cast

import trio
import trio.testing

from gatewayd import textsafe
from gatewayd.nursery.inbound import sanitize_inbound
from gatewayd.store.messages import unstructure_inbound
from gatewayd.whatsapp.neonize.env import import_neonize
from gatewayd.whatsapp.neonize.session import (
    MESSAGE_CODE,
    SHUTDOWN_SEND_WAIT,
    STOP_WAIT,
    Session,
)
from gatewayd.whatsapp.port import (
    ClientEvent,
    Disconnected,
    InboundMessage,
    MessageReceived,
    MessageUnreadable,
)

import_neonize()  # before any other neonize import: it leaks a pipe at import (silenced there)

from neonize.client import NewClient  # noqa: E402
from neonize.events import EVENT_TO_INT, ConnectedEv, MessageEv  # noqa: E402
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (  # noqa: E402
    AudioMessage,
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    ImageMessage,
    Message,
)

ALICE = "628222000222"
MSG_ID = "3EB0POISON"
TS_MS = 1789015800000
BAD = b"caf\xe9\xff"  # Latin-1 and a stray byte: not UTF-8
MARK = "@@@@@"  # a placeholder as long as BAD, swapped for it in the serialised bytes


# --------------------------------------------------------------------------- building events


def jid(user: str, server: str = "s.whatsapp.net") -> JID:
    return JID(User=user, Server=server, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)


def info(
    message_id: str = MSG_ID, *, sender: str = ALICE, push_name: str = "Alice", ts: int = TS_MS
) -> MessageInfo:
    source = MessageSource(Chat=jid(ALICE), Sender=jid(sender), IsGroup=False, IsFromMe=False)
    return MessageInfo(MessageSource=source, ID=message_id, Pushname=push_name, Timestamp=ts)


def event_bytes(message: Message | bytes, info_: MessageInfo | None = None) -> bytes:
    """A ``MessageEv`` as Go serialises it (only some of neonize's required fields set)."""
    body = message if isinstance(message, bytes) else message.SerializePartialToString()
    head = (info_ or info()).SerializePartialToString()
    return _field(1, head) + _field(2, body)


def with_bad_utf8(data: bytes) -> bytes:
    """``data`` with the one ``MARK`` string replaced by invalid UTF-8 of the same length."""
    assert data.count(MARK.encode()) == 1 and len(MARK) == len(BAD)
    return data.replace(MARK.encode(), BAD)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_quotes(depth: int) -> bytes:
    """A text quoting a text quoting … ``depth`` levels deep, serialised by hand (Go's
    protobuf accepts 10,000 levels; neonize's classes refuse to even build 100)."""
    number = {
        "extendedTextMessage": Message.DESCRIPTOR.fields_by_name["extendedTextMessage"].number,
        "text": ExtendedTextMessage.DESCRIPTOR.fields_by_name["text"].number,
        "contextInfo": ExtendedTextMessage.DESCRIPTOR.fields_by_name["contextInfo"].number,
        "stanzaID": ContextInfo.DESCRIPTOR.fields_by_name["stanzaID"].number,
        "quotedMessage": ContextInfo.DESCRIPTOR.fields_by_name["quotedMessage"].number,
    }
    msg = Message(conversation="the bottom").SerializeToString()
    for level in range(depth):
        ctx = _field(number["stanzaID"], f"Q{level}".encode()) + _field(
            number["quotedMessage"], msg
        )
        text = _field(number["text"], f"level {level}".encode())
        msg = _field(number["extendedTextMessage"], text + _field(number["contextInfo"], ctx))
    return msg


# --------------------------------------------------------------------------- the session side


class Sink:
    """Records what the session hands over; a commit takes ``commit`` seconds (inf: never)."""

    def __init__(self, commit: float = 0.0) -> None:
        self.commit = commit
        self.events: list[ClientEvent] = []
        self.started = trio.Event()

    async def send(self, value: ClientEvent) -> None:
        self.started.set()
        if self.commit == math.inf:
            await trio.sleep_forever()
        await trio.sleep(self.commit)
        self.events.append(value)


def open_session(sink: Sink) -> tuple[Session, Any]:
    """A session with its handlers on a real (never connected) ``NewClient``."""
    session = Session(cast(Any, None), "agent-poison", f"{ALICE}:3@s.whatsapp.net", sink)
    nc = NewClient("unused.db", uuid="poison-test")
    nc._stop_finalizer.detach()  # it was never registered in Go: nothing to stop
    session.nc = nc
    session._register_handlers(nc)
    return session, nc


async def execute(nc: Any, data: bytes, code: int = MESSAGE_CODE) -> None:
    """What neonize's ctypes callback does with Go's bytes, on a thread of its own."""
    buffer = ctypes.create_string_buffer(data, len(data))
    await trio.to_thread.run_sync(
        nc.event.execute, nc.uuid, ctypes.addressof(buffer), len(data), code
    )


async def deliver(data: bytes) -> list[ClientEvent]:
    sink = Sink()
    _session, nc = open_session(sink)
    await execute(nc, data)
    return sink.events


def assert_storable(msg: InboundMessage) -> dict[str, str]:
    """What the daemon would store: only ``str``, valid once cleaned; returns the originals."""
    cleaned, escaped = sanitize_inbound(msg)
    payload = unstructure_inbound(cleaned)
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # bytes or surrogates would raise
    for key, value in payload.items():
        if key in ("media", "mentioned_jids") or value is None:
            continue
        assert isinstance(value, str | int | bool), (key, value)
    return escaped


# --------------------------------------------------------------------------- the cases

CASES: dict[str, tuple[bytes, type[ClientEvent]]] = {
    "NUL in the text": (event_bytes(Message(conversation="a\x00b")), MessageReceived),
    "invalid UTF-8 in the text": (
        with_bad_utf8(event_bytes(Message(conversation=MARK))),
        MessageReceived,
    ),
    "invalid UTF-8 in the id": (
        with_bad_utf8(event_bytes(Message(conversation="x"), info(MARK))),
        MessageReceived,
    ),
    "invalid UTF-8 in the push name": (
        with_bad_utf8(event_bytes(Message(conversation="x"), info(push_name=MARK))),
        MessageReceived,
    ),
    "invalid UTF-8 in the sender's JID": (
        with_bad_utf8(event_bytes(Message(conversation="x"), info(sender=MARK))),
        MessageReceived,
    ),
    "invalid UTF-8 in a mention and the quote": (
        with_bad_utf8(
            event_bytes(
                Message(
                    extendedTextMessage=ExtendedTextMessage(
                        text="hi",
                        contextInfo=ContextInfo(
                            mentionedJID=[MARK], stanzaID="Q1", participant="x"
                        ),
                    )
                )
            )
        ),
        MessageReceived,
    ),
    "absurd image metadata": (
        event_bytes(
            Message(imageMessage=ImageMessage(mimetype="", fileLength=2**64 - 1, caption="\x00"))
        ),
        MessageReceived,
    ),
    "invalid UTF-8 in a file name": (
        with_bad_utf8(
            event_bytes(Message(documentMessage=DocumentMessage(fileName=MARK, fileLength=1)))
        ),
        MessageReceived,
    ),
    "audio without mimetype, endless": (
        event_bytes(Message(audioMessage=AudioMessage(seconds=2**32 - 1, PTT=True))),
        MessageReceived,
    ),
    "no content at all": (event_bytes(Message()), MessageReceived),
    "no id": (event_bytes(Message(conversation="x"), info("")), MessageUnreadable),
    "timestamp 0": (event_bytes(Message(conversation="x"), info(ts=0)), MessageReceived),
    "negative timestamp": (event_bytes(Message(conversation="x"), info(ts=-5)), MessageReceived),
    "far-future timestamp": (
        event_bytes(Message(conversation="x"), info(ts=2**63 - 1)),
        MessageReceived,
    ),
    "10,000 mentions": (
        event_bytes(
            Message(
                extendedTextMessage=ExtendedTextMessage(
                    text="@all",
                    contextInfo=ContextInfo(
                        mentionedJID=[f"{628000000000 + i}@s.whatsapp.net" for i in range(10_000)]
                    ),
                )
            )
        ),
        MessageReceived,
    ),
    "quotes nested 30 deep": (event_bytes(nested_quotes(30)), MessageReceived),
    "quotes nested 40 deep": (event_bytes(nested_quotes(40)), MessageUnreadable),
    "quotes nested 3,000 deep": (event_bytes(nested_quotes(3000)), MessageUnreadable),
}


async def test_every_odd_message_is_handed_over_once_storable_or_quarantined() -> None:
    """Each odd message reaches the sink exactly once: translated and storable, or unreadable."""
    outcomes: dict[str, str] = {}
    for name, (data, _expected) in CASES.items():
        events = await deliver(data)
        outcomes[name] = ", ".join(type(event).__name__ for event in events) or "dropped"
        if len(events) == 1 and isinstance(events[0], MessageReceived):
            try:
                assert_storable(events[0].message)
            except Exception as exc:
                outcomes[name] = f"unstorable ({type(exc).__name__})"
    assert outcomes == {name: expected.__name__ for name, (_, expected) in CASES.items()}


async def test_invalid_utf8_is_escaped_and_the_sender_bytes_recoverable() -> None:
    """Invalid UTF-8 in the id and text is stored cleaned, its original bytes recoverable."""
    data = event_bytes(Message(conversation=MARK), info("ID" + MARK.replace("@", "#")))
    data = with_bad_utf8(data).replace(b"#####", BAD)
    [event] = await deliver(data)
    assert isinstance(event, MessageReceived)
    escaped = assert_storable(event.message)
    assert sanitize_inbound(event.message)[0].text == textsafe.clean(event.message.text or "")
    originals = {key: textsafe.restore(escaped[key]) for key in ("id", "text")}
    assert originals["text"].encode("utf-8", "surrogateescape") == BAD
    assert originals["id"].encode("utf-8", "surrogateescape") == b"ID" + BAD


async def test_unparsable_message_is_quarantined_with_its_bytes_and_id() -> None:
    """A message neonize cannot parse is handed over unreadable: Go's bytes, id, reason."""
    data = event_bytes(nested_quotes(200), info("3EB0DEEP"))
    [event] = await deliver(data)
    assert isinstance(event, MessageUnreadable)
    assert event.message_id == "3EB0DEEP"
    assert event.raw == data
    assert event.reason.startswith("DecodeError: ") and len(event.reason) < 300


async def test_untranslatable_message_is_quarantined_with_the_event_reserialised() -> None:
    """A parsed message translation refuses is handed over unreadable, the event re-serialised."""
    data = event_bytes(Message(conversation="who am I"), info(""))
    [event] = await deliver(data)
    assert event == MessageUnreadable(None, "ValueError: message without an id", event.raw)
    assert MessageEv.FromString(event.raw) == MessageEv.FromString(data)
    assert MESSAGE_CODE == EVENT_TO_INT[MessageEv]


async def test_closing_session_still_takes_messages_but_not_status_events() -> None:
    """Once closing, a session drops status events but still hands over (acked) messages."""
    sink = Sink()
    session, nc = open_session(sink)
    session.end = Disconnected("session ended")
    await execute(nc, event_bytes(Message(conversation="after the end")))
    session.closed = True
    await execute(nc, ConnectedEv(status=True).SerializeToString(), EVENT_TO_INT[ConnectedEv])
    await execute(nc, event_bytes(Message(conversation="while stopping"), info("3EB0LATE")))
    texts = [e.message.text for e in sink.events if isinstance(e, MessageReceived)]
    assert texts == ["after the end", "while stopping"] and len(sink.events) == 2


async def test_stop_lets_a_message_in_flight_finish_its_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Stopping the session gives a message being committed time to finish, not a cancel."""
    sink = Sink(commit=1.0)
    session, nc = open_session(sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(execute, nc, event_bytes(Message(conversation="in flight")))
        await sink.started.wait()
        await session._shutdown()  # never started a thread: only the Trio side stops
    [event] = sink.events
    assert isinstance(event, MessageReceived) and event.message.text == "in flight"


async def test_message_while_stopping_waits_for_its_commit_only_boundedly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message handed over while stopping waits for a commit at most SHUTDOWN_SEND_WAIT."""
    sink = Sink(commit=math.inf)
    session, nc = open_session(sink)
    session.closed = True
    start = trio.current_time()
    await execute(nc, event_bytes(Message(conversation="late")))
    waited = trio.current_time() - start
    assert sink.started.is_set() and not sink.events
    assert SHUTDOWN_SEND_WAIT <= waited < STOP_WAIT


async def test_garbage_bytes_never_raise_into_ctypes_and_a_message_is_kept() -> None:
    """Bytes that are no event never raise out of the callback; as a message they are kept."""
    sink = Sink()
    _session, nc = open_session(sink)
    for code in (MESSAGE_CODE, EVENT_TO_INT[ConnectedEv], 9999):
        await execute(nc, b"\xff\xff\xff\xff", code)
    assert [type(event) for event in sink.events] == [MessageUnreadable]
    assert isinstance(sink.events[0], MessageUnreadable)
    assert sink.events[0].raw == b"\xff\xff\xff\xff" and sink.events[0].message_id is None
