"""Pairing QR codes render to scannable PNGs, and QrState tracks and announces the latest one."""

from __future__ import annotations

import io

import PIL.Image
import trio
import trio.testing
import zxingcpp

from gatewayd.whatsapp.port import ClientEvent, QrCode
from gatewayd.whatsapp.qr import QrState, render_qr_png
from gatewayd.whatsapp.sim import SimulatedWhatsApp


async def real_format_payload() -> str:
    """A payload exactly as the simulated network (and whatsmeow) produces it."""
    send, recv = trio.open_memory_channel[ClientEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(SimulatedWhatsApp(seed=3).client("bot").pair, send)
        nursery.cancel_scope.cancel()
    qr = recv.receive_nowait()
    assert isinstance(qr, QrCode)
    return qr.payload


def decode(png: bytes) -> list[str]:
    return [barcode.text for barcode in zxingcpp.read_barcodes(PIL.Image.open(io.BytesIO(png)))]


async def test_rendered_png_decodes_to_the_exact_payload() -> None:
    """The PNG of a real-format WhatsApp QR decodes, with zxing, back to the same string."""
    payload = await real_format_payload()
    assert payload.startswith("https://wa.me/settings/linked_devices#2@")
    png = render_qr_png(payload)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert decode(png) == [payload]


def test_rendered_png_has_a_quiet_zone_and_a_readable_size() -> None:
    """The image keeps a white border of 4 modules and is large enough for a phone camera."""
    image = PIL.Image.open(
        io.BytesIO(render_qr_png("https://wa.me/settings/linked_devices#x"))
    ).convert("L")
    assert image.width == image.height >= 200
    border = 4 * 8
    assert {image.getpixel((x, y)) for x in range(border) for y in range(image.height)} == {255}


async def test_wait_next_returns_the_next_published_qr(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wait_next wakes with the QR published after the call, stamped with its virtual time."""
    state = QrState()
    state.publish(QrCode("first", 0, 60))
    got = []

    async def waiter() -> None:
        got.append(await state.wait_next(timeout=120))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(60)
        published = state.publish(QrCode("second", 1, 20))
    assert got == [published]
    assert published.created_at == 60 and published.expires_at == 80
    await trio.sleep(5)
    assert published.age() == 5
    assert state.latest == published


async def test_wait_next_times_out_with_none(autojump_clock: trio.testing.MockClock) -> None:
    """wait_next returns None after its timeout when no new QR appears."""
    state = QrState()
    state.publish(QrCode("only", 0, 60))
    assert await state.wait_next(timeout=20) is None
    assert trio.current_time() == 20


async def test_clear_wakes_waiters_with_none(autojump_clock: trio.testing.MockClock) -> None:
    """Clearing the state (pairing ended) wakes waiters with None and leaves no QR or PNG."""
    state = QrState()
    state.publish(QrCode("shown", 0, 60))
    got = []

    async def waiter() -> None:
        got.append(await state.wait_next(timeout=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(7)
        state.clear()
    assert got == [None]
    assert trio.current_time() == 7
    assert state.latest is None
    assert await state.png() is None


async def test_png_is_rendered_once_per_qr() -> None:
    """png() renders the latest QR once and serves the same bytes until the QR changes."""
    state = QrState()
    state.publish(QrCode("https://wa.me/settings/linked_devices#one", 0, 60))
    first = await state.png()
    assert first is not None and decode(first) == ["https://wa.me/settings/linked_devices#one"]
    assert await state.png() is first
    state.publish(QrCode("https://wa.me/settings/linked_devices#two", 1, 20))
    second = await state.png()
    assert second is not None and decode(second) == ["https://wa.me/settings/linked_devices#two"]
