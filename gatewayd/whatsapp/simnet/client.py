"""The daemon's side of ``gatewayd simnet``: a ``WhatsAppBackend`` over HTTP.

``SimnetClient`` keeps the contracts of ``gatewayd/whatsapp/port.py``. Events come by long poll
(``routes.py``); each is acknowledged only after ``events.send`` returned — the daemon has taken
responsibility for it — by the next poll, so a daemon killed in between gets it again on its next
connection, like whatsmeow with ``SynchronousAck``. The simnet being unreachable or answering
oddly is a lost connection (``Disconnected``) for ``run`` and ``NotConnected`` /
``WhatsAppError`` for calls: the agent's reconnect loop copes, nothing crashes its tree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote as urlquote

import attrs
import httpx
import structlog
import trio

from gatewayd.errors import InvalidRecipient, NotConnected, SendOutcomeUnknown, WhatsAppError
from gatewayd.whatsapp.port import (
    CONNECTION_END_TYPES,
    ClientEvent,
    Connected,
    ConnectFailed,
    ConnectionEnd,
    Disconnected,
    EventSink,
    Media,
    Paired,
    PairingError,
    PairingFailed,
    Quote,
    SendResult,
)
from gatewayd.whatsapp.simnet.wire import WireError, event_from_json

log = structlog.get_logger()

POLL_WAIT = 20.0  # seconds one long poll may wait for an event
LOST_AFTER = 3  # failed polls in a row that make a lost connection
RETRY_DELAY = 0.5  # seconds, times the failures so far
CLOSE_TIMEOUT = 2.0
PAIR_RETRY_MAX = 5.0
CALL_TIMEOUT = 10.0


class SessionGone(WhatsAppError):
    """The simnet no longer knows the session (it restarted, or replaced it)."""


@attrs.define
class _Stream:
    id: str
    ack: int = 0  # the last event ``events.send`` returned for
    gone: bool = False


class SimnetBackend:
    """A ``WhatsAppBackend`` whose network is a ``gatewayd simnet`` at the other end of ``http``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._clients: dict[str, SimnetClient] = {}

    def client(self, agent_id: str) -> SimnetClient:
        client = self._clients.get(agent_id)
        if client is None:
            client = self._clients[agent_id] = SimnetClient(self, agent_id)
        return client

    async def known_devices(self) -> frozenset[str]:
        data = await self.call("GET", "/_net/devices")
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise WhatsAppError("simnet: odd answer listing devices")
        return frozenset(data)

    async def forget_device(self, device_jid: str) -> None:
        try:
            await self.call("POST", "/_net/devices/forget", {"device": device_jid})
        except WhatsAppError as exc:
            # A logged-out device is already gone from the network; nothing to undo here.
            log.warning("gatewayd.simnet.forget_failed", error=exc.message)

    async def call(
        self, method: str, path: str, body: object = None, *, seconds: float = CALL_TIMEOUT
    ) -> Any:
        """The ``data`` of the simnet's answer, or the port's exception for its refusal."""
        # Encoded here with ASCII escapes: a lone surrogate in a text is not UTF-8.
        content = None if body is None else json.dumps(body).encode("ascii")
        try:
            response = await self._http.request(
                method,
                path,
                content=content,
                headers={"Content-Type": "application/json"} if content else None,
                timeout=seconds,  # an httpx request timeout, not a Trio deadline
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotConnected(f"simnet unreachable ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            # The request may have been taken: for a send, its outcome is unknown.
            raise SendOutcomeUnknown(f"simnet did not answer ({type(exc).__name__})") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise WhatsAppError(f"simnet answered {response.status_code} without a JSON object")
        if response.is_success and "data" in payload:
            return payload["data"]
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        message = f"simnet: {error.get('message') if isinstance(error, dict) else 'odd answer'}"
        if code == "NOT_CONNECTED":
            raise NotConnected(message)
        if code == "INVALID_RECIPIENT":
            raise InvalidRecipient(message)
        if response.status_code == 404:
            raise SessionGone(message)
        raise WhatsAppError(message)


@asynccontextmanager
async def open_simnet_backend(url: str) -> AsyncIterator[SimnetBackend]:
    """A backend on the simnet at ``url`` (``http://127.0.0.1:4000``)."""
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"),
        trust_env=False,
        follow_redirects=False,
        # One long poll per connected agent: the pool must not make them queue.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        headers={"User-Agent": "gatewayd"},
    ) as http:
        yield SimnetBackend(http)


class SimnetClient:
    """One agent's client on a remote simnet (get it from ``SimnetBackend.client``)."""

    def __init__(self, backend: SimnetBackend, agent_id: str) -> None:
        self._backend = backend
        self._agent_id = agent_id
        self._path = f"/_net/agents/{urlquote(agent_id, safe='')}"

    @property
    def agent_id(self) -> str:
        return self._agent_id

    # ------------------------------------------------------------------ pair and run

    async def pair(
        self,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> Paired:
        """See ``WhatsAppClient.pair``. Waits (retrying) while the simnet is unreachable."""
        stream = _Stream(await self._open_pairing())
        try:
            task_status.started()  # the simnet answered once the first QR was showing
            end = await self._pump(stream, events, (Paired, PairingFailed))
            if isinstance(end, Paired):
                return end
            if isinstance(end, PairingFailed):
                raise PairingError(end.reason)
            # The simnet lost the pairing (it restarted): whatsmeow's QR channel says this.
            failed = PairingFailed("err-unexpected-state")
            await events.send(failed)
            raise PairingError(failed.reason)
        finally:
            await self._close(stream)

    async def _open_pairing(self) -> str:
        delay = RETRY_DELAY
        while True:
            try:
                return _session_id(await self._backend.call("POST", f"{self._path}/pair", {}))
            except WhatsAppError as exc:
                log.warning("gatewayd.simnet.pair_retry", error=exc.message, delay=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, PAIR_RETRY_MAX)

    async def pair_phone(self, phone: str) -> str:
        """See ``WhatsAppClient.pair_phone``; the simnet's pairing of this agent answers."""
        data = await self._backend.call("POST", f"{self._path}/pair-phone", {"phone": phone})
        code = data.get("code") if isinstance(data, dict) else None
        if not isinstance(code, str) or not code:
            raise WhatsAppError("simnet: odd answer to a pair-code request")
        return code

    async def run(
        self,
        device_jid: str,
        events: EventSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> ConnectionEnd:
        """See ``WhatsAppClient.run``."""
        end: ConnectionEnd | None = None
        try:
            data = await self._backend.call("POST", f"{self._path}/connect", {"device": device_jid})
            if isinstance(data, dict) and data.get("failed") is not None:
                end = _connection_end(data["failed"])
            else:
                stream = _Stream(_session_id(data))
        except WhatsAppError as exc:
            end = Disconnected(exc.message)  # unreachable or odd: the reconnect loop retries
        if end is not None:
            await events.send(end)
            raise ConnectFailed(end)
        try:
            # The simnet registered the connection before answering: sends work from here.
            task_status.started()
            last = await self._pump(stream, events, (*CONNECTION_END_TYPES, Connected))
            if isinstance(last, CONNECTION_END_TYPES):
                return last
            lost = Disconnected("simnet connection lost")
            await events.send(lost)
            return lost
        finally:
            await self._close(stream)

    async def _pump(
        self, stream: _Stream, events: EventSink, watch: tuple[type[ClientEvent], ...]
    ) -> ClientEvent | None:
        """Hand the session's events to ``events`` until it is over; the last event of a
        ``watch`` type, or None when the session was lost."""
        failures = 0
        last: ClientEvent | None = None
        while True:
            try:
                data = await self._backend.call(
                    "POST",
                    f"/_net/sessions/{stream.id}/events",
                    {"ack": stream.ack, "wait": POLL_WAIT},
                    seconds=POLL_WAIT + CALL_TIMEOUT,
                )
                batch, closed = _batch(data)
            except SessionGone:
                stream.gone = True
                log.warning("gatewayd.simnet.session_lost")
                return None
            except WhatsAppError as exc:
                failures += 1
                log.warning("gatewayd.simnet.poll_failed", error=exc.message, failures=failures)
                if failures >= LOST_AFTER:
                    return None
                await trio.sleep(RETRY_DELAY * failures)
                continue
            failures = 0
            for seq, raw in batch:
                if seq <= stream.ack:
                    continue  # a repeat of an answer we had before
                try:
                    event = event_from_json(raw)
                except WireError as exc:
                    log.warning("gatewayd.simnet.bad_event", seq=seq, error=exc.message)
                else:
                    await events.send(event)
                    if isinstance(event, watch):
                        last = event
                # Acknowledged with the next poll: the daemon is responsible for it now.
                stream.ack = seq
            if closed:
                return last

    async def _close(self, stream: _Stream) -> None:
        """Tell the simnet we are done (it requeues whatever we did not acknowledge)."""
        if stream.gone:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._backend.call(
                    "POST", f"/_net/sessions/{stream.id}/close", {"ack": stream.ack}
                )
            except WhatsAppError as exc:
                # The simnet expires a silent session by itself.
                log.info("gatewayd.simnet.close_failed", error=exc.message)

    # ------------------------------------------------------------------ calls

    async def _send(self, body: dict[str, Any]) -> SendResult:
        try:
            data = await self._backend.call("POST", f"{self._path}/send", body)
        except InvalidRecipient as exc:
            raise InvalidRecipient(exc.message, details={"to": body["to"]}) from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("messageId"), str)
            or not isinstance(data.get("timestampMs"), int)
        ):
            raise WhatsAppError("simnet: odd answer to a send")
        return SendResult(data["messageId"], data["timestampMs"])

    async def send_text(
        self, to: str, text: str, *, quote: Quote | None = None, mentions: Sequence[str] = ()
    ) -> SendResult:
        return await self._send(
            {"kind": "text", "to": to, "text": text, "mentions": list(mentions), **_quote(quote)}
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
        return await self._send(
            _media("image", to, data, mimetype, quote, text=caption, filename=filename)
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
        return await self._send(
            _media("document", to, data, mimetype, quote, text=caption, filename=filename)
        )

    async def send_audio(
        self, to: str, data: bytes, *, mimetype: str, ptt: bool = False, quote: Quote | None = None
    ) -> SendResult:
        return await self._send(_media("audio", to, data, mimetype, quote, ptt=ptt))

    async def send_video(
        self,
        to: str,
        data: bytes,
        *,
        mimetype: str,
        caption: str | None = None,
        quote: Quote | None = None,
    ) -> SendResult:
        return await self._send(_media("video", to, data, mimetype, quote, text=caption))

    async def download_media(self, media: Media) -> bytes:
        body = {"ref": media.ref, "size": media.size, "mimetype": media.mimetype}
        data = await self._backend.call("POST", f"{self._path}/media", body)
        encoded = data.get("base64") if isinstance(data, dict) else None
        try:
            return base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except ValueError:
            raise WhatsAppError("simnet: odd media answer") from None

    async def set_typing(self, chat: str, on: bool) -> None:
        await self._backend.call("POST", f"{self._path}/typing", {"chat": chat, "on": on})

    async def mark_read(self, chat: str, sender: str | None, message_ids: Sequence[str]) -> None:
        body = {"chat": chat, "sender": sender, "ids": list(message_ids)}
        await self._backend.call("POST", f"{self._path}/read", body)

    async def pn_for_lid(self, lid: str) -> str | None:
        return await self._lookup({"lid": lid})

    async def lid_for_pn(self, pn: str) -> str | None:
        return await self._lookup({"pn": pn})

    async def _lookup(self, body: dict[str, str]) -> str | None:
        data = await self._backend.call("POST", f"{self._path}/lookup", body)
        jid = data.get("jid") if isinstance(data, dict) else None
        return jid if isinstance(jid, str) else None

    async def logout(self) -> None:
        await self._backend.call("POST", f"{self._path}/logout", {})


def _session_id(data: object) -> str:
    session = data.get("session") if isinstance(data, dict) else None
    if not isinstance(session, str) or not session.isalnum():
        raise WhatsAppError("simnet: odd answer opening a session")
    return session


def _connection_end(data: object) -> ConnectionEnd:
    try:
        event = event_from_json(data)
    except WireError as exc:
        return Disconnected(exc.message)
    return event if isinstance(event, CONNECTION_END_TYPES) else Disconnected("simnet: odd answer")


def _batch(data: object) -> tuple[list[tuple[int, object]], bool]:
    """The (seq, raw event) pairs of a poll answer and whether the session is over."""
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise WireError("simnet: odd poll answer")
    batch: list[tuple[int, object]] = []
    for item in data["events"]:
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise WireError("simnet: an event without a sequence number")
        batch.append((seq, item.get("event")))
    return batch, data.get("closed") is True


def _quote(quote: Quote | None) -> dict[str, Any]:
    if quote is None:
        return {}
    return {
        "quote": {"id": quote.message_id, "sender": quote.sender, "chat": quote.chat,
                  "text": quote.text}
    }  # fmt: skip


def _media(
    kind: str, to: str, data: bytes, mimetype: str, quote: Quote | None, **fields: object
) -> dict[str, Any]:
    """A media send: the simnet keeps the size, not the bytes."""
    body = {"kind": kind, "to": to, "size": len(data), "mimetype": mimetype, **_quote(quote)}
    body.update({key: value for key, value in fields.items() if value is not None})
    return body
