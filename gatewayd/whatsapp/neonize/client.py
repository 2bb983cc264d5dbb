"""One agent's ``WhatsAppClient`` on neonize: pairing, the connection, and the call surface.

``run`` drives one neonize session (``neonize_session.Session``: the session thread, the
callback bridge into Trio, connect-start and ``Stop`` under ``GATE.exclusive()``). Every other
call to Go goes through ``_call`` (``neonize_calls.call_go``), under ``GATE.shared()`` and with
a deadline; the rules in docs/neonize.md ("Process-global Go maps and the gate", "Calls that
abort the process") hold here:

* a read racing a connect-start or a stop aborts the process, hence the shared gate, held
  until the call's thread has left Go even when its caller gave up at the deadline;
* calls that abort when the Go client is missing (LID lookups) are made only while Go knows
  the client (``go_ready``: from the first callback until ``Stop``), sends only while the
  session is ``live`` (``Connected`` seen, not stopping), both checked under the gate;
* a send that misses its deadline raises ``SendTimeout`` when it never reached Go (or only its
  upload did), ``SendOutcomeUnknown`` when ``send_message`` had begun: WhatsApp may have the
  message, so the daemon records it ``unknown`` and never sends it again
  (docs/durability.md). Other calls raise ``WhatsAppError`` (``GoTimeout``).

``pair`` runs in a child process (``neonize_pairing``), because a pairing cannot be cancelled
inside the process (docs/neonize.md, "Threads, callbacks and the QR phase").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from gatewayd.errors import (
    InvalidRecipient,
    NotConnected,
    SendOutcomeUnknown,
    SendTimeout,
    WhatsAppError,
)
from gatewayd.whatsapp.neonize import send as build
from gatewayd.whatsapp.neonize.calls import GoCall, GoTimeout, call_go
from gatewayd.whatsapp.neonize.media import message_of_ref
from gatewayd.whatsapp.neonize.pairing import CodeRequests, pair_in_child
from gatewayd.whatsapp.neonize.session import CALL_TIMEOUT as CALL_TIMEOUT
from gatewayd.whatsapp.neonize.session import CONNECT_STUCK as CONNECT_STUCK
from gatewayd.whatsapp.neonize.session import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from gatewayd.whatsapp.neonize.session import STOP_WAIT as STOP_WAIT
from gatewayd.whatsapp.neonize.session import Session
from gatewayd.whatsapp.neonize.translate import LID_SERVER, empty_jid, jid_to_str, str_to_jid
from gatewayd.whatsapp.port import (
    ConnectionEnd,
    EventSink,
    LoggedOut,
    Media,
    Paired,
    Quote,
    SendResult,
)

if TYPE_CHECKING:
    from gatewayd.whatsapp.neonize.backend import NeonizeBackend

T = TypeVar("T")

SEND_TIMEOUT = 90.0
"""Deadline of one ``send_message`` (and of a logout): above whatsmeow's own 75 s wait for the
server's answer, so its error normally comes first."""

UPLOAD_TIMEOUT = 120.0
"""Deadline of one media upload (neonize and whatsmeow set none)."""

DOWNLOAD_TIMEOUT = 120.0
"""Deadline of one media download (whatsmeow's HTTP client sets none for the body)."""

PAIR_CODE_TIMEOUT = 30.0
"""Longest a phone-code request waits for the pairing child's answer (one IQ to WhatsApp)."""


class NeonizeClient:
    """One agent's client; get it from ``NeonizeBackend.client(agent_id)``."""

    def __init__(self, backend: NeonizeBackend, agent_id: str) -> None:
        self._backend = backend
        self._agent_id = agent_id
        self._session: Session | None = None
        self._pairing = False
        self._codes = CodeRequests()

    def __repr__(self) -> str:
        return f"NeonizeClient(agent_id={self._agent_id!r})"

    @property
    def agent_id(self) -> str:
        """The agent this client belongs to."""
        return self._agent_id

    @property
    def connected(self) -> bool:
        """True while the session is online (after ``Connected``, before a drop or the end)."""
        session = self._session
        return session is not None and session.online and not session.closed

    # ------------------------------------------------------------------ pairing

    async def pair(
        self,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> Paired:
        """Link a new device in a child process; see ``WhatsAppClient.pair``."""
        async with self._pairing_slot():
            paired: Paired = await pair_in_child(
                self._backend.pairing_config(), events, codes=self._codes, task_status=task_status
            )
            return paired

    async def pair_phone(self, phone: str) -> str:
        """A code linking ``phone`` to the pairing showing QR codes now (its child asks
        whatsmeow's ``PairPhone``); see ``WhatsAppClient.pair_phone``.

        ``NotConnected`` when no pairing shows QR codes, ``InvalidRecipient`` for a number that
        is not international digits, ``WhatsAppError`` when WhatsApp refuses or the child does
        not answer within ``PAIR_CODE_TIMEOUT``; none of them ends the pairing.
        """
        digits = _pairing_digits(phone)
        if not self._codes.open:
            await trio.lowlevel.checkpoint()
            raise NotConnected(f"agent {self._agent_id!r} is not waiting for a QR scan")
        return await self._codes.request(digits, timeout=PAIR_CODE_TIMEOUT)

    async def pair_by_phone(
        self,
        phone: str,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> Paired:
        """Link a new device by phone code: ``task_status.started(code)`` with the 8-character
        code to type on the phone (WhatsApp → Linked devices → Link with phone number).

        ``phone`` is the account's number in international digits. QR codes are shown too until
        the code is entered (``QrCode`` events, as in ``pair``); the outcome is the same.
        """
        digits = _pairing_digits(phone)
        async with self._pairing_slot():
            paired: Paired = await pair_in_child(
                self._backend.pairing_config(), events, phone=digits, task_status=task_status
            )
            return paired

    @asynccontextmanager
    async def _pairing_slot(self) -> AsyncIterator[None]:
        """One pairing at a time per agent."""
        await trio.lowlevel.checkpoint()
        if self._pairing:
            raise WhatsAppError(f"agent {self._agent_id!r} is already pairing")
        self._pairing = True
        try:
            yield
        finally:
            self._pairing = False

    # ------------------------------------------------------------------ connection

    async def run(
        self,
        device_jid: str,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> ConnectionEnd:
        """Connect ``device_jid`` and push its events until the connection ends.

        See ``WhatsAppClient.run``. An offline or unreachable WhatsApp ends in
        ``ConnectFailed(Disconnected(...))``; a device missing from the store in
        ``ConnectFailed(LoggedOut(on_connect=True))``. Retrying is the caller's business; every
        attempt costs one database connection until ``idle_session_timeout`` reaps it, so back
        off long (``NeonizeBackend.retry_backoff()``).
        """
        if self._session is not None:
            raise WhatsAppError(f"agent {self._agent_id!r} is already running")
        str_to_jid(device_jid)  # InvalidRecipient for something that cannot be a device
        session = Session(self._backend, self._agent_id, device_jid, events)
        self._session = session
        try:
            with self._backend.claim_device(session):
                return await session.run(task_status)
        finally:
            self._session = None

    async def aclose(self) -> None:
        """Nothing to do: a running ``run`` ends when its caller's scope is cancelled."""
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ calls

    async def _call(
        self,
        step: str,
        fn: Callable[[Any], T],
        *,
        online: bool = True,
        seconds: float = CALL_TIMEOUT,
    ) -> T:
        """Run ``fn(neonize_client)`` in a thread under the shared gate, with a deadline.

        The check happens after the gate is taken: a session that starts stopping clears
        ``live`` and ``go_ready`` before it waits for the exclusive gate, so no call can reach
        a Go client that ``Stop`` has removed. ``online=False`` (local lookups) needs only that
        Go knows the client. Past ``seconds``: ``GoTimeout`` (step ``None``: never reached Go).
        """
        session = self._session
        agent = self._agent_id

        def admit() -> None:
            if session is None or session.nc is None or not session.go_ready:
                raise NotConnected(f"agent {agent!r} is not connected")
            if online and not session.live:
                raise NotConnected(f"agent {agent!r} is not connected")
            if online and not session.online:
                raise NotConnected(f"agent {agent!r} is not connected (reconnecting)")

        nc = session.nc if session is not None else None

        def run(call: GoCall) -> T:
            call.enter(step)
            return fn(nc)

        return await call_go(run, seconds=seconds, admit=admit, what=step)

    async def _send(self, message: Any, jid: Any) -> SendResult:
        """``send_message`` with ``SEND_TIMEOUT``: abandoned once begun, the outcome is unknown."""
        try:
            response = await self._call(
                "send", lambda nc: nc.send_message(jid, message), seconds=SEND_TIMEOUT
            )
        except GoTimeout as exc:
            if exc.step is None:
                raise SendTimeout(exc.message, details=exc.details) from None
            raise SendOutcomeUnknown(
                f"{exc.message}: WhatsApp may have the message", details=exc.details
            ) from None
        return build.send_result(response)

    async def send_text(
        self, to: str, text: str, *, quote: Quote | None = None, mentions: Sequence[str] = ()
    ) -> SendResult:
        """Send a text, optionally quoting a message and mentioning JIDs (used as given)."""
        jid = str_to_jid(to)
        message = build.text_message(text, quote=quote, mentions=mentions)
        return await self._send(message, jid)

    async def _send_media(
        self, kind: build.SendKind, to: str, data: bytes, **fields: Any
    ) -> SendResult:
        jid = str_to_jid(to)
        media_type = build.upload_media_type(kind)
        if kind == "image":
            fields["thumbnail"] = await trio.to_thread.run_sync(build.image_thumbnail, data)
        elif kind in ("audio", "video"):
            fields["seconds"] = await trio.to_thread.run_sync(build.media_seconds, data)

        try:
            upload = await self._call(
                "upload", lambda nc: nc.upload(data, media_type), seconds=UPLOAD_TIMEOUT
            )
        except GoTimeout as exc:  # nothing was sent: the upload's result is abandoned
            raise SendTimeout(exc.message, details=exc.details) from None
        return await self._send(build.media_message(kind, upload, **fields), jid)

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
        """Send an image (uploaded from bytes, with a JPEG preview when Pillow can make one)."""
        return await self._send_media(
            "image", to, data, mimetype=mimetype, caption=caption, quote=quote
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
            "document", to, data, mimetype=mimetype, filename=filename, caption=caption, quote=quote
        )

    async def send_audio(
        self, to: str, data: bytes, *, mimetype: str, ptt: bool = False, quote: Quote | None = None
    ) -> SendResult:
        """Send audio (a voice note when ``ptt``); needs no ffmpeg."""
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
        """Send a video; needs no ffmpeg (no thumbnail and no duration without it)."""
        return await self._send_media(
            "video", to, data, mimetype=mimetype, caption=caption, quote=quote
        )

    async def download_media(self, media: Media) -> bytes:
        """An attachment's bytes through whatsmeow's ``DownloadAny`` (fetched and decrypted;
        its hashes checked by whatsmeow), from the sub-message kept in ``media.ref``."""
        message = message_of_ref(media.ref)
        data: bytes = await self._call(
            "download", lambda nc: nc.download_any(message), seconds=DOWNLOAD_TIMEOUT
        )
        return data

    async def set_typing(self, chat: str, on: bool) -> None:
        """Show or clear "typing…" in ``chat``."""
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        jid = str_to_jid(chat)
        state = ChatPresence.CHAT_PRESENCE_COMPOSING if on else ChatPresence.CHAT_PRESENCE_PAUSED
        media = ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
        await self._call("typing", lambda nc: nc.send_chat_presence(jid, state, media))

    async def mark_read(self, chat: str, sender: str | None, message_ids: Sequence[str]) -> None:
        """Send a read receipt; ``sender`` is needed in groups (all ids from that sender)."""
        from neonize.utils.enum import ReceiptType

        if not message_ids:
            return
        chat_jid = str_to_jid(chat)
        sender_jid = str_to_jid(sender) if sender else empty_jid()
        ids = list(message_ids)
        await self._call(
            "mark read",
            lambda nc: nc.mark_read(
                *ids, chat=chat_jid, sender=sender_jid, receipt=ReceiptType.READ
            ),
        )

    async def pn_for_lid(self, lid: str) -> str | None:
        """The phone-number JID whatsmeow's store knows for ``lid`` (local), or None."""
        jid = str_to_jid(lid)
        if jid.Server != LID_SERVER:
            raise InvalidRecipient(f"not a LID: {lid!r}", details={"jid": lid})
        return jid_to_str(
            await self._call("lookup", lambda nc: nc.get_pn_from_lid(jid), online=False)
        )

    async def lid_for_pn(self, pn: str) -> str | None:
        """The LID whatsmeow's store knows for the phone-number JID ``pn`` (local), or None."""
        jid = str_to_jid(pn)
        if jid.Server == LID_SERVER:
            raise InvalidRecipient(f"not a phone-number JID: {pn!r}", details={"jid": pn})
        return jid_to_str(
            await self._call("lookup", lambda nc: nc.get_lid_from_pn(jid), online=False)
        )

    async def go_connected(self) -> bool:
        """whatsmeow's own "is the websocket up" (``IsConnected``), read under the shared gate.

        Safe in every state (False for a client Go does not know), so it is also the probe the
        race tests hammer while other clients connect and stop.
        """
        session = self._session
        nc = None if session is None else session.nc

        def admit() -> None:
            if session is None or nc is None or session.closed:
                raise NotConnected(f"agent {self._agent_id!r} is not running")

        def probe(call: GoCall) -> bool:
            assert nc is not None  # admitted
            call.enter("probe")
            return bool(nc.is_connected)

        try:
            return await call_go(probe, seconds=CALL_TIMEOUT, admit=admit, what="probe")
        except NotConnected:
            return False

    async def logout(self) -> None:
        """Unlink the device; the running connection then ends with ``LoggedOut("logout")``.

        whatsmeow deletes the device from its store and sends no event for a logout we asked
        for, so the end is pushed here.
        """
        await self._call("logout", lambda nc: nc.logout(), seconds=SEND_TIMEOUT)
        session = self._session
        if session is not None:
            await session.finish(LoggedOut("logout", on_connect=False))


def _pairing_digits(phone: str) -> str:
    """``phone`` as whatsmeow's ``PairPhone`` takes it: international digits, or refused."""
    digits = "".join(ch for ch in phone if "0" <= ch <= "9")
    if not 6 <= len(digits) <= 15 or digits.startswith("0"):
        raise InvalidRecipient(f"not an international phone number: {phone!r}")
    return digits
