"""Pairing QR codes: rendering to PNG, and the latest QR of one agent for its watchers.

The supervisor feeds ``QrState`` from the client's events (``publish`` on ``QrCode``, ``clear``
on ``Paired`` / ``PairingFailed``); HTTP handlers and WebSocket subscribers read it or wait on it.
"""

from __future__ import annotations

import io

import attrs
import segno
import trio

from gatewayd.whatsapp.port import QrCode

QR_SCALE = 8  # pixels per module: a ~65-module WhatsApp QR becomes ~600 px, easy for a phone
QR_BORDER = 4  # the quiet zone the QR standard asks for


def render_qr_png(payload: str, *, scale: int = QR_SCALE, border: int = QR_BORDER) -> bytes:
    """Render ``payload`` as a black-on-white PNG QR code (error correction M or better)."""
    # Level M (boosted when it fits) survives screenshots and screen glare better than L.
    code = segno.make_qr(payload, error="m", boost_error=True)
    out = io.BytesIO()
    code.save(out, kind="png", scale=scale, border=border)
    return out.getvalue()


@attrs.frozen
class QrSnapshot:
    """A QR as published: the code and the virtual time (``trio.current_time()``) it appeared."""

    qr: QrCode
    created_at: float

    @property
    def payload(self) -> str:
        return self.qr.payload

    @property
    def expires_at(self) -> float:
        return self.created_at + self.qr.expires_in

    def age(self) -> float:
        """Seconds since it was published (needs a running Trio)."""
        return trio.current_time() - self.created_at

    def expires_in(self) -> float:
        """Seconds until WhatsApp stops accepting it (needs a running Trio)."""
        return max(0.0, self.expires_at - trio.current_time())


class QrState:
    """The latest QR of one agent, with its PNG rendered on demand and a way to await the next."""

    def __init__(self) -> None:
        self._latest: QrSnapshot | None = None
        self._png: tuple[QrSnapshot, bytes] | None = None
        # Replaced on every change: a waiter holds the Event of the state it saw.
        self._changed = trio.Event()

    @property
    def latest(self) -> QrSnapshot | None:
        """The QR showing now, or None when the agent is not pairing."""
        return self._latest

    def publish(self, qr: QrCode) -> QrSnapshot:
        """Make ``qr`` the latest and wake everyone waiting for the next one."""
        self._latest = QrSnapshot(qr, trio.current_time())
        self._notify()
        return self._latest

    def clear(self) -> None:
        """No QR is showing any more (paired, failed or stopped); wakes waiters with None."""
        self._latest = None
        self._png = None
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def png(self) -> bytes | None:
        """The latest QR as PNG, or None; rendered once per QR, in a worker thread."""
        snapshot = self._latest
        if snapshot is None:
            return None
        if self._png is not None and self._png[0] is snapshot:
            return self._png[1]
        # segno takes ~25 ms for a WhatsApp-sized code: too long to hold up every other agent.
        data = await trio.to_thread.run_sync(render_qr_png, snapshot.payload)
        if self._latest is snapshot:
            self._png = (snapshot, data)
        return data

    # The timeout is part of the answer (None: "no new QR yet"), which is what a waiting
    # HTTP request or WebSocket poll wants; a caller wanting an exception can use fail_after.
    async def wait_next(self, timeout: float) -> QrSnapshot | None:  # noqa: ASYNC109
        """Wait for the next change after this call; return the new QR.

        Returns None when ``timeout`` seconds pass first (no exception), and also when the
        change is a ``clear()`` (pairing ended): check the agent's status to tell them apart.
        """
        changed = self._changed
        with trio.move_on_after(timeout):
            await changed.wait()
            return self._latest
        return None
