"""The simulated WhatsApp network behaves like the port promises and like WhatsApp does."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.whatsapp.port import (
    ClientEvent,
    ClientOutdated,
    Connected,
    ConnectFailed,
    Disconnected,
    LoggedOut,
    MessageReceived,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
    Quote,
    Receipt,
    StreamReplaced,
    TemporaryBan,
    WhatsAppBackend,
    WhatsAppClient,
)
from gatewayd.whatsapp.sim import NoQrShowing, SimulatedClient, SimulatedWhatsApp

EPOCH = 1_800_000_000.0
AGENT_PHONE = "628111000111"
AGENT_JID = f"{AGENT_PHONE}@s.whatsapp.net"
USER = "628222000222"
USER_JID = f"{USER}@s.whatsapp.net"
GROUP = "120363025246125486@g.us"
B64_KEY = r"[A-Za-z0-9+/]{43}="
QR_RE = re.compile(
    r"https://wa\.me/settings/linked_devices#(?P<ref>2@[A-Za-z0-9+/]{88}),"
    rf"(?P<keys>{B64_KEY},{B64_KEY},{B64_KEY}),(?P<type>[0-9]+)"
)

Events = tuple[trio.MemorySendChannel[ClientEvent], trio.MemoryReceiveChannel[ClientEvent]]


@pytest.fixture
def sim() -> SimulatedWhatsApp:
    return SimulatedWhatsApp(seed=7, epoch=EPOCH)


def channel() -> Events:
    return trio.open_memory_channel[ClientEvent](100)


async def link(
    sim: SimulatedWhatsApp, nursery: trio.Nursery, agent_id: str = "bot", phone: str = AGENT_PHONE
) -> tuple[SimulatedClient, Paired, trio.MemoryReceiveChannel[ClientEvent]]:
    """Pair an agent and start its connection; its events channel is read up to Connected."""
    client = sim.client(agent_id)
    send, recv = channel()
    async with trio.open_nursery() as pairing:
        await pairing.start(client.pair, send)
        paired = sim.scan(agent_id, phone, lid="900000000000001", push_name="Bot")
    await nursery.start(client.run, paired.device_jid, send)
    received = [await recv.receive() for _ in range(3)]
    assert [type(e) for e in received] == [QrCode, Paired, Connected]
    return client, paired, recv


async def next_message(recv: trio.MemoryReceiveChannel[ClientEvent]) -> MessageReceived:
    event = await recv.receive()
    assert isinstance(event, MessageReceived)
    return event


def test_sim_implements_the_port(sim: SimulatedWhatsApp) -> None:
    """The simulated network and its clients satisfy the port's Protocols."""
    backend: WhatsAppBackend = sim
    client: WhatsAppClient = backend.client("bot")
    assert client is sim.client("bot")
    assert client.agent_id == "bot"


# ---------------------------------------------------------------------------- pairing


async def test_qr_rotates_on_whatsapp_schedule_then_times_out(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """QRs appear at 0, 60, 80, 100, 120 and 140 s and pairing fails with "timeout" at 160 s."""
    send, recv = channel()
    seen: list[tuple[float, ClientEvent]] = []

    async def watch() -> None:
        async for event in recv:
            seen.append((trio.current_time(), event))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with pytest.raises(PairingError) as failure:
            await sim.client("bot").pair(send)
        assert trio.current_time() == 160
        await send.aclose()

    assert failure.value.reason == "timeout"
    qrs = [(t, e) for t, e in seen if isinstance(e, QrCode)]
    assert [t for t, _ in qrs] == [0, 60, 80, 100, 120, 140]
    assert [(e.index, e.expires_in) for _, e in qrs] == [
        (0, 60), (1, 20), (2, 20), (3, 20), (4, 20), (5, 20),
    ]  # fmt: skip
    assert seen[-1] == (160, PairingFailed("timeout"))
    matches = [QR_RE.fullmatch(e.payload) for _, e in qrs]
    assert all(matches)
    assert len({m["ref"] for m in matches if m}) == 6  # refs rotate
    assert len({m["keys"] for m in matches if m}) == 1  # the device keys do not
    assert sim.current_qr("bot") is None


async def test_scanning_the_current_qr_pairs_and_connects(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A phone scanning the shown QR ends pairing with Paired; run() then connects that device."""
    client = sim.client("bot")
    send, recv = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.pair, send)
        await trio.sleep(70)  # the second QR is showing now
        qr = sim.current_qr("bot")
        assert qr is not None and qr.index == 1
        scanned = sim.scan("bot", "+628111000111", push_name="Bot", payload=qr.payload)
    assert trio.current_time() == 70
    assert scanned.device_jid == "628111000111:1@s.whatsapp.net"
    assert (scanned.phone, scanned.push_name, scanned.platform) == (AGENT_PHONE, "Bot", "android")
    assert scanned.lid is not None and re.fullmatch(r"[0-9]{15}@lid", scanned.lid)
    assert [type(recv.receive_nowait()) for _ in range(2)] == [QrCode, QrCode]
    assert recv.receive_nowait() == scanned
    assert await sim.known_devices() == {scanned.device_jid}

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, scanned.device_jid, send)
        assert await recv.receive() == Connected()
        assert sim.is_connected("bot")
        assert sim.account("bot") == scanned
        nursery.cancel_scope.cancel()
    assert not sim.is_connected("bot")


async def test_pair_returns_the_scanned_device(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """pair() returns the same Paired the scan produced, at the time of the scan."""
    result: list[Paired] = []
    send, _ = channel()

    async def pair() -> None:
        result.append(await sim.client("bot").pair(send))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair)
        await trio.sleep(5)
        scanned = sim.scan("bot", AGENT_PHONE)
    assert result == [scanned]
    assert trio.current_time() == 5


async def test_scanning_without_a_qr_is_an_error(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Scanning an agent that shows no QR, or a QR that has rotated away, raises NoQrShowing."""
    with pytest.raises(NoQrShowing):
        sim.scan("nobody", AGENT_PHONE)
    send, _ = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.client("bot").pair, send)
        first = sim.current_qr("bot")
        assert first is not None
        await trio.sleep(61)
        with pytest.raises(NoQrShowing):
            sim.scan("bot", AGENT_PHONE, payload=first.payload)
        nursery.cancel_scope.cancel()
    with pytest.raises(NoQrShowing):
        sim.scan("bot", AGENT_PHONE)
    assert await sim.known_devices() == frozenset()


async def test_phone_side_pairing_error_fails_pairing(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A pairing error from the phone pushes PairingFailed and raises PairingError at once."""
    send, recv = channel()

    async def refuse_later() -> None:
        await trio.sleep(3)
        sim.fail_pairing("bot", "err-scanned-without-multidevice")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse_later)
        with pytest.raises(PairingError) as failure:
            await sim.client("bot").pair(send)
    assert trio.current_time() == 3
    assert failure.value.reason == "err-scanned-without-multidevice"
    assert isinstance(recv.receive_nowait(), QrCode)
    assert recv.receive_nowait() == PairingFailed("err-scanned-without-multidevice")


async def test_pairing_twice_at_once_is_refused(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A client pairs once at a time."""
    send, _ = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.client("bot").pair, send)
        with pytest.raises(WhatsAppError, match="already pairing"):
            await sim.client("bot").pair(send)
        nursery.cancel_scope.cancel()


async def test_run_with_an_unknown_device_fails_like_a_logged_out_device(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """run() on a device the network does not know pushes LoggedOut and fails to start."""
    send, recv = channel()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConnectFailed) as failure:
            await nursery.start(sim.client("bot").run, "628999:3@s.whatsapp.net", send)
    assert failure.value.event == LoggedOut("logged_out", on_connect=True)
    assert failure.value.terminal
    assert recv.receive_nowait() == LoggedOut("logged_out", on_connect=True)


async def test_cancelling_pair_takes_the_qr_down(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A cancelled pairing stops showing its QR and links nothing."""
    send, _ = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.client("bot").pair, send)
        assert sim.current_qr("bot") is not None
        nursery.cancel_scope.cancel()
    assert sim.current_qr("bot") is None
    assert sim.account("bot") is None


# ---------------------------------------------------------------------------- inbound messages


async def test_private_text_carries_sender_chat_and_time(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A one-to-one text arrives with PN chat and sender, the sender's LID, push name and time."""
    sim.add_contact(USER, lid="200000000000002", push_name="Budi")
    async with trio.open_nursery() as nursery:
        _, _, recv = await link(sim, nursery)
        await trio.sleep(12.5)
        injected = sim.inject_text("bot", USER, "halo")
        event = await next_message(recv)
        nursery.cancel_scope.cancel()
    message = event.message
    assert message == injected
    assert (message.chat, message.sender) == (USER_JID, USER_JID)
    assert message.sender_lid == "200000000000002@lid"
    assert message.chat_lid is None
    assert (message.text, message.push_name) == ("halo", "Budi")
    assert message.timestamp_ms == int((EPOCH + 12.5) * 1000)
    assert re.fullmatch(r"3A[0-9A-F]{18}", message.id)
    assert not (message.is_group or message.is_from_me or message.is_status_broadcast)
    assert not (message.is_newsletter or message.is_edit)
    assert message.media_type is None and message.media is None


async def test_lid_addressed_message_keeps_both_forms(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A LID-addressed message resolves to the PN and keeps the LID; an unknown LID stays."""
    sim.add_contact(USER, lid="200000000000002")
    async with trio.open_nursery() as nursery:
        client, _, recv = await link(sim, nursery)
        sim.inject_text("bot", "200000000000002@lid", "via lid", lid_addressing=True)
        known = (await next_message(recv)).message
        sim.inject_text("bot", "377777777777777@lid", "stranger", lid_addressing=True)
        stranger = (await next_message(recv)).message
        assert await client.pn_for_lid("200000000000002@lid") == USER_JID
        assert await client.lid_for_pn(f"{USER}:4@s.whatsapp.net") == "200000000000002@lid"
        assert await client.pn_for_lid("377777777777777@lid") is None
        nursery.cancel_scope.cancel()
    assert (known.chat, known.sender) == (USER_JID, USER_JID)
    assert (known.chat_lid, known.sender_lid) == ("200000000000002@lid",) * 2
    assert (stranger.chat, stranger.sender) == ("377777777777777@lid",) * 2
    assert stranger.sender_lid == "377777777777777@lid"


async def test_group_mentions_by_phone_and_by_lid(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Group messages carry the group chat and the mentions as given: PN JIDs, LIDs or none."""
    sim.add_group(GROUP, [USER, AGENT_PHONE])
    async with trio.open_nursery() as nursery:
        _, paired, recv = await link(sim, nursery)
        sim.inject_text("bot", USER, f"@{AGENT_PHONE} hi", group=GROUP, mentions=[AGENT_PHONE])
        by_phone = (await next_message(recv)).message
        assert paired.lid is not None
        sim.inject_text(
            "bot", USER, "@900000000000001 hi", group=GROUP, mentions=[paired.lid],
            lid_addressing=True,
        )  # fmt: skip
        by_lid = (await next_message(recv)).message
        sim.inject_text("bot", USER, "just chatting", group=GROUP)
        unmentioned = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert sim.participants(GROUP) == (USER_JID, AGENT_JID)
    for message in (by_phone, by_lid, unmentioned):
        assert (message.chat, message.sender, message.is_group) == (GROUP, USER_JID, True)
        assert message.chat_lid is None
    assert by_phone.mentioned_jids == (AGENT_JID,)
    assert by_lid.mentioned_jids == ("900000000000001@lid",)
    assert unmentioned.mentioned_jids == ()


async def test_status_broadcast_is_flagged_and_reported_as_group(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A status post arrives in status@broadcast, flagged as status and (like neonize) as group."""
    async with trio.open_nursery() as nursery:
        _, _, recv = await link(sim, nursery)
        sim.inject_status("bot", USER, "my story")
        message = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert (message.chat, message.sender, message.text) == (
        "status@broadcast",
        USER_JID,
        "my story",
    )
    assert message.is_status_broadcast and message.is_group
    assert not message.is_newsletter


async def test_newsletter_post_is_flagged(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A channel post arrives from the …@newsletter JID, flagged as newsletter, not as group."""
    async with trio.open_nursery() as nursery:
        _, _, recv = await link(sim, nursery)
        sim.inject_newsletter("bot", "120363144038483540", "news")
        message = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert message.chat == message.sender == "120363144038483540@newsletter"
    assert message.is_newsletter and not message.is_group and not message.is_status_broadcast
    assert message.text == "news"


@pytest.mark.parametrize(
    ("kind", "mimetype", "filename", "seconds", "ptt"),
    [
        ("image", "image/jpeg", None, None, False),
        ("document", "application/pdf", "invoice.pdf", None, False),
        ("audio", "audio/ogg; codecs=opus", None, 7, True),
        ("video", "video/mp4", None, 12, False),
    ],
)
async def test_media_message_carries_caption_and_details(
    sim: SimulatedWhatsApp,
    autojump_clock: trio.testing.MockClock,
    kind: str,
    mimetype: str,
    filename: str | None,
    seconds: int | None,
    ptt: bool,
) -> None:
    """A media message has its media type, details, and its caption as text."""
    async with trio.open_nursery() as nursery:
        _, _, recv = await link(sim, nursery)
        sim.inject_media(
            "bot", kind, USER, caption="see this", filename=filename, seconds=seconds,  # type: ignore[arg-type]
            ptt=ptt, size=4096,
        )  # fmt: skip
        message = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert message.media_type == kind
    assert message.text == "see this"
    assert message.media is not None
    assert (message.media.mimetype, message.media.size) == (mimetype, 4096)
    assert (message.media.caption, message.media.filename) == ("see this", filename)
    assert (message.media.seconds, message.media.ptt) == (seconds, ptt)


async def test_quoted_reply_and_edit_are_marked(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A quoted reply names the quoted message and its sender; an edit is flagged."""
    async with trio.open_nursery() as nursery:
        client, _, recv = await link(sim, nursery)
        sent = await client.send_text(USER_JID, "what is your order number?")
        quote = Quote(message_id=sent.message_id, sender=AGENT_JID, chat=USER_JID, text="what…")
        sim.inject_text("bot", USER, "A-17", quote=quote)
        reply = (await next_message(recv)).message
        sim.inject_text("bot", USER, "A-18", is_edit=True)
        edit = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert (reply.quoted_id, reply.quoted_sender, reply.quoted_text) == (
        sent.message_id, AGENT_JID, "what…",
    )  # fmt: skip
    assert edit.is_edit and edit.quoted_id is None


async def test_messages_from_the_agents_own_phone_are_from_me(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A message the linked phone itself sends is is_from_me, in the chat with its peer."""
    async with trio.open_nursery() as nursery:
        _, _, recv = await link(sim, nursery)
        sim.inject_text("bot", AGENT_PHONE, "typed on the phone", chat=USER)
        message = (await next_message(recv)).message
        nursery.cancel_scope.cancel()
    assert message.is_from_me
    assert (message.chat, message.sender) == (USER_JID, AGENT_JID)


async def test_receipts_arrive_as_events(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A read receipt for sent messages arrives as a Receipt event."""
    async with trio.open_nursery() as nursery:
        client, _, recv = await link(sim, nursery)
        sent = await client.send_text(USER_JID, "hi")
        receipt = sim.inject_receipt("bot", USER_JID, [sent.message_id])
        assert await recv.receive() == receipt
        nursery.cancel_scope.cancel()
    assert receipt == Receipt(USER_JID, USER_JID, (sent.message_id,), "read", int(EPOCH * 1000))


async def test_messages_sent_while_offline_arrive_after_reconnect(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Messages injected while the agent is offline are delivered right after Connected."""
    async with trio.open_nursery() as nursery:
        client, paired, recv = await link(sim, nursery)
        sim.drop("bot")
        assert await recv.receive() == Disconnected("connection lost")
        injected = sim.inject_text("bot", USER, "are you there?")
        send, recv = channel()
        await nursery.start(client.run, paired.device_jid, send)
        assert await recv.receive() == Connected()
        assert (await next_message(recv)).message == injected
        nursery.cancel_scope.cancel()


async def test_injecting_into_an_unlinked_agent_is_an_error(sim: SimulatedWhatsApp) -> None:
    """There is nobody to deliver to before an agent has a linked device."""
    with pytest.raises(NotConnected):
        sim.inject_text("ghost", USER, "hello?")


# ---------------------------------------------------------------------------- connection ends


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (lambda sim: sim.drop("bot", "network"), Disconnected("network")),
        (lambda sim: sim.log_out("bot"), LoggedOut("logged_out", on_connect=False)),
        (lambda sim: sim.ban("bot", 3600), TemporaryBan("sent_to_too_many_people", 3600)),
        (lambda sim: sim.replace_stream("bot"), StreamReplaced()),
        (lambda sim: sim.outdated("bot"), ClientOutdated()),
    ],
    ids=["drop", "log_out", "ban", "replace_stream", "outdated"],
)
async def test_connection_end_is_pushed_and_returned_by_run(
    sim: SimulatedWhatsApp,
    autojump_clock: trio.testing.MockClock,
    end: object,
    expected: ClientEvent,
) -> None:
    """Each way a connection ends pushes its event after earlier messages, and run() returns it."""
    client = sim.client("bot")
    send, recv = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.pair, send)
        paired = sim.scan("bot", AGENT_PHONE)
    results: list[ClientEvent] = []

    async def run() -> None:
        results.append(await client.run(paired.device_jid, send))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.sleep(30)
        sim.inject_text("bot", USER, "last words")
        assert end(sim) == expected  # type: ignore[operator]
        if sim.account("bot") is not None:  # a logged-out agent has nobody to deliver to
            sim.inject_text("bot", USER, "too late")  # kept for the next connection
    assert trio.current_time() == 30
    assert results == [expected]
    assert not sim.is_connected("bot")
    events = [recv.receive_nowait() for _ in range(5)]
    assert [type(e) for e in events[:4]] == [QrCode, Paired, Connected, MessageReceived]
    assert events[4] == expected
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()
    with pytest.raises(NotConnected):
        await client.send_text(USER_JID, "anyone?")


async def test_log_out_forgets_the_device(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """After the phone logs the device out, run() fails with LoggedOut(on_connect=True)."""
    async with trio.open_nursery() as nursery:
        client, paired, recv = await link(sim, nursery)
        sim.log_out("bot")
    assert await sim.known_devices() == frozenset()
    assert sim.account("bot") is None
    send, recv = channel()
    with pytest.raises(ConnectFailed) as failure:
        await client.run(paired.device_jid, send)
    assert failure.value.event == LoggedOut("logged_out", on_connect=True)
    with pytest.raises(NotConnected):
        sim.inject_text("bot", USER, "hello?")


async def test_ban_refuses_connections_until_it_expires(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """While banned, run() fails with the remaining ban time; after it, run() connects again."""
    async with trio.open_nursery() as nursery:
        client, paired, _ = await link(sim, nursery)
        sim.ban("bot", 600, code="blocked_by_users")
    await trio.sleep(100)
    send, recv = channel()
    with pytest.raises(ConnectFailed) as failure:
        await client.run(paired.device_jid, send)
    assert failure.value.event == TemporaryBan("blocked_by_users", 500)
    assert failure.value.terminal
    await trio.sleep(500)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, paired.device_jid, send)
        assert trio.current_time() == 600
        nursery.cancel_scope.cancel()


async def test_second_connection_on_one_device_replaces_the_first(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Running a device that is already online elsewhere ends the first with StreamReplaced."""
    async with trio.open_nursery() as nursery:
        _, paired, recv = await link(sim, nursery)
        send, other_recv = channel()
        await nursery.start(sim.client("other").run, paired.device_jid, send)
        assert await recv.receive() == StreamReplaced()
        assert not sim.is_connected("bot") and sim.is_connected("other")
        nursery.cancel_scope.cancel()


async def test_cancelling_run_disconnects_without_logging_out(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancelling run() goes offline but keeps the device, so it can connect again."""
    async with trio.open_nursery() as nursery:
        client, paired, _ = await link(sim, nursery)
        nursery.cancel_scope.cancel()
    assert not sim.is_connected("bot")
    assert await sim.known_devices() == {paired.device_jid}
    send, recv = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, paired.device_jid, send)
        assert sim.is_connected("bot")
        nursery.cancel_scope.cancel()


async def test_logout_unlinks_the_device(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """logout() ends the connection with LoggedOut("logout") and forgets the device."""
    async with trio.open_nursery() as nursery:
        client, paired, recv = await link(sim, nursery)
        await client.logout()
        assert await recv.receive() == LoggedOut("logout", on_connect=False)
    assert paired.device_jid not in await sim.known_devices()
    with pytest.raises(NotConnected):
        await client.logout()


async def test_forget_device_removes_credentials(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """forget_device drops a device so it can no longer connect."""
    async with trio.open_nursery() as nursery:
        client, paired, _ = await link(sim, nursery)
        nursery.cancel_scope.cancel()
    await sim.forget_device(paired.device_jid)
    await sim.forget_device(paired.device_jid)  # idempotent
    assert sim.account("bot") == paired
    send, _ = channel()
    with pytest.raises(ConnectFailed):
        await client.run(paired.device_jid, send)
    assert sim.account("bot") is None  # found logged out: nothing is delivered to it any more


# ---------------------------------------------------------------------------- sending


async def test_sends_are_recorded_in_order_with_virtual_times(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Every send, typing change and read mark is recorded in order with its virtual time."""
    quote = Quote(message_id="3A0000000000000000AA", sender=USER_JID, chat=GROUP)
    async with trio.open_nursery() as nursery:
        client, _, _ = await link(sim, nursery)
        await trio.sleep(1)
        await client.mark_read(GROUP, USER_JID, ["3A0000000000000000AA"])
        await client.set_typing(GROUP, True)
        await trio.sleep(2)
        text = await client.send_text(GROUP, "@628222000222 ok", quote=quote, mentions=[USER_JID])
        await client.set_typing(GROUP, False)
        image = await client.send_image(
            USER_JID, b"\x89PNG" * 10, mimetype="image/png", caption="c"
        )
        await trio.sleep(1)
        doc = await client.send_document(
            USER_JID, b"%PDF", mimetype="application/pdf", filename="a.pdf"
        )
        audio = await client.send_audio(USER_JID, b"ogg", mimetype="audio/ogg", ptt=True)
        video = await client.send_video(USER_JID, b"mp4", mimetype="video/mp4", caption="v")
        nursery.cancel_scope.cancel()

    records = sim.sent("bot")
    assert [(r.kind, r.to, r.at) for r in records] == [
        ("read", GROUP, 1), ("typing", GROUP, 1), ("text", GROUP, 3), ("typing", GROUP, 3),
        ("image", USER_JID, 3), ("document", USER_JID, 4), ("audio", USER_JID, 4),
        ("video", USER_JID, 4),
    ]  # fmt: skip
    read, typing_on, sent_text, typing_off, sent_image, sent_doc, sent_audio, sent_video = records
    assert (read.sender, read.message_ids, read.message_id) == (
        USER_JID, ("3A0000000000000000AA",), None,
    )  # fmt: skip
    assert (typing_on.typing, typing_off.typing) == (True, False)
    assert (sent_text.text, sent_text.quote, sent_text.mentions) == (
        "@628222000222 ok", quote, (USER_JID,),
    )  # fmt: skip
    assert (sent_image.text, sent_image.media_size, sent_image.mimetype) == ("c", 40, "image/png")
    assert (sent_doc.filename, sent_doc.media_size) == ("a.pdf", 4)
    assert sent_audio.ptt and sent_video.text == "v"
    results = [text, image, doc, audio, video]
    assert [r.message_id for r in results] == [r.message_id for r in records if r.message_id]
    assert all(re.fullmatch(r"3EB0[0-9A-F]{16}", r.message_id) for r in results)
    assert len({r.message_id for r in results}) == 5
    assert text.timestamp_ms == int(EPOCH + 3) * 1000


async def test_sending_when_not_connected_raises(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Every call that needs a connection raises NotConnected before connecting and after a drop."""
    client = sim.client("bot")
    with pytest.raises(NotConnected):
        await client.send_text(USER_JID, "hi")
    async with trio.open_nursery() as nursery:
        client, _, _ = await link(sim, nursery)
        sim.drop("bot")
        calls = [
            client.send_text(USER_JID, "hi"),
            client.send_image(USER_JID, b"x", mimetype="image/png"),
            client.send_document(USER_JID, b"x", mimetype="text/plain", filename="x.txt"),
            client.send_audio(USER_JID, b"x", mimetype="audio/ogg"),
            client.send_video(USER_JID, b"x", mimetype="video/mp4"),
            client.set_typing(USER_JID, True),
            client.mark_read(USER_JID, None, ["x"]),
            client.pn_for_lid("1@lid"),
            client.lid_for_pn(USER_JID),
            client.logout(),
        ]
        for call in calls:
            with pytest.raises(NotConnected):
                await call
    assert sim.sent("bot") == []


async def test_sending_to_something_that_is_not_a_jid_is_refused(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A destination that is not a WhatsApp JID raises InvalidRecipient and sends nothing."""
    async with trio.open_nursery() as nursery:
        client, _, _ = await link(sim, nursery)
        for bad in ["628222000222", "628222000222@c.us", "hello@s.whatsapp.net"]:
            with pytest.raises(InvalidRecipient):
                await client.send_text(bad, "hi")
        nursery.cancel_scope.cancel()
    assert sim.sent("bot") == []


# ---------------------------------------------------------------------------- scale


async def test_a_thousand_agents_pair_and_connect(autojump_clock: trio.testing.MockClock) -> None:
    """1,000 simulated agents pair, connect and receive a message in one Trio run."""
    sim = SimulatedWhatsApp(seed=1)
    count = 1000
    send, recv = trio.open_memory_channel[ClientEvent](4 * count)
    async with trio.open_nursery() as nursery:
        for n in range(count):
            await nursery.start(sim.client(f"agent-{n}").pair, send.clone())
        devices = [sim.scan(f"agent-{n}", f"62800{n:07d}") for n in range(count)]
        await trio.sleep(1)  # let every pair() finish
        for n, device in enumerate(devices):
            await nursery.start(sim.client(f"agent-{n}").run, device.device_jid, send.clone())
        assert all(sim.is_connected(f"agent-{n}") for n in range(count))
        for n in range(count):
            sim.inject_text(f"agent-{n}", USER, "ping")
        received = 0
        while received < count:
            if isinstance(await recv.receive(), MessageReceived):
                received += 1
        nursery.cancel_scope.cancel()
    assert len(await sim.known_devices()) == count


async def test_a_self_healing_drop_reconnects_within_run(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """A drop the client heals pushes Disconnected, refuses sends, then Connected and backlog."""
    async with trio.open_nursery() as nursery:
        client, paired, recv = await link(sim, nursery)
        sim.drop("bot", "keepalive timeout", back_after=15)
        assert await recv.receive() == Disconnected("keepalive timeout")
        with pytest.raises(NotConnected):
            await client.send_text(USER_JID, "hello?")
        injected = sim.inject_text("bot", USER, "sent during the gap")
        assert await recv.receive() == Connected()
        assert trio.current_time() == 15
        assert (await next_message(recv)).message == injected
        await client.send_text(USER_JID, "back")
        assert sim.is_connected("bot")
        nursery.cancel_scope.cancel()
    assert [r.at for r in sim.sent("bot")] == [15]


async def test_undelivered_messages_are_redelivered_in_order(
    sim: SimulatedWhatsApp, autojump_clock: trio.testing.MockClock
) -> None:
    """Messages not yet taken when run() is cancelled come back first on the next connection."""
    client = sim.client("bot")
    send, recv = trio.open_memory_channel[ClientEvent](0)  # nothing is taken unless received
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.pair, send)
        await trio.sleep(1)
        paired = sim.scan("bot", AGENT_PHONE)
        assert isinstance(await recv.receive(), QrCode)
        assert await recv.receive() == paired
        await nursery.start(client.run, paired.device_jid, send)
        first = sim.inject_text("bot", USER, "one")
        second = sim.inject_text("bot", USER, "two")
        assert await recv.receive() == Connected()
        nursery.cancel_scope.cancel()
    third = sim.inject_text("bot", USER, "three")
    send, recv = channel()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, paired.device_jid, send)
        events = [await recv.receive() for _ in range(4)]
        nursery.cancel_scope.cancel()
    assert events == [Connected()] + [MessageReceived(m) for m in (first, second, third)]
