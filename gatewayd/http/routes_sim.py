"""``/_sim/``: the control API of the simulated WhatsApp network.

Mounted by the daemon with ``whatsapp.mode = "sim"`` and the network in process
(``gatewayd run --whatsapp sim``), and by ``gatewayd simnet`` for a network of its own, so
the real daemon can be driven end to end without a phone: scan an agent's QR (or type its
phone pairing code on the phone, ``POST /_sim/pair-code``), inject
inbound messages, drop or log out a device, list what was sent.

The routes reach the network through a ``SimHost``: the daemon's is the in-process network;
the simnet's (``gatewayd/whatsapp/simnet/sessions.py``) also saves every change before the
answer and lets ``inject`` wait until the daemon acknowledged the message.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import attrs
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import Conflict, InvalidPayload
from gatewayd.http.request import read_json
from gatewayd.whatsapp.port import InboundMessage, Quote
from gatewayd.whatsapp.sim import NoQrShowing, PairCodeRefused, SimulatedWhatsApp

DEFAULT_WAIT = 30.0  # seconds inject waits for the acknowledgement
MAX_WAIT = 600.0


class SimHost(Protocol):
    """Where the routes find the network, and what they do around a change."""

    @property
    def network(self) -> SimulatedWhatsApp: ...

    async def changed(self) -> None:
        """Called after a change, before answering (the simnet saves it here)."""
        ...

    def watch(self, message_id: str) -> trio.Event | None:
        """An event set once a client acknowledged the message; None: nothing to wait for."""
        ...

    def unwatch(self, message_id: str) -> None: ...


@attrs.frozen
class InProcess:
    """The daemon's own network: nothing to save; ``inject`` waits until the daemon's callback
    returned (the message is committed), as it does against a simnet."""

    network: SimulatedWhatsApp

    async def changed(self) -> None:
        await trio.lowlevel.checkpoint()

    def watch(self, message_id: str) -> trio.Event | None:
        return self.network.watch_ack(message_id)

    def unwatch(self, message_id: str) -> None:
        self.network.unwatch_ack(message_id)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: injected text may hold lone surrogates, which UTF-8
    cannot encode but a ``\\ud800`` escape carries through."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _host(request: Request) -> SimHost:
    host: SimHost = request.app.state.sim_host
    return host


def _sim(request: Request) -> tuple[SimulatedWhatsApp, str]:
    return _host(request).network, request.path_params["agent_id"]


def body_str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """``body[key]`` as a non-empty string (None when absent and not required)."""
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidPayload(f"{key!r} must be a non-empty string")
    return value


def _strs(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidPayload(f"{key!r} must be a list of strings")
    return tuple(value)


async def qr(request: Request) -> Response:
    sim, agent_id = _sim(request)
    current = sim.current_qr(agent_id)
    return JSONResponse(
        {"data": None if current is None else {"payload": current.payload, "index": current.index}}
    )


async def scan(request: Request) -> Response:
    host, agent_id = _host(request), request.path_params["agent_id"]
    body = await read_json(request)
    try:
        paired = host.network.scan(
            agent_id,
            body_str(body, "phone") or "",
            lid=body_str(body, "lid", required=False),
            push_name=body_str(body, "pushName", required=False),
        )
    except NoQrShowing as exc:
        raise Conflict(exc.message) from None
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    await host.changed()
    return AsciiJSONResponse({"data": attrs.asdict(paired)})


async def pair_code(request: Request) -> Response:
    """The phone ``phone`` types ``code``: 200 with the linked device, 409 when the phone
    refuses the code (wrong, expired, asked for another number)."""
    host = _host(request)
    body = await read_json(request)
    try:
        paired = host.network.enter_pair_code(
            body_str(body, "code") or "",
            body_str(body, "phone") or "",
            lid=body_str(body, "lid", required=False),
            push_name=body_str(body, "pushName", required=False),
        )
    except PairCodeRefused as exc:
        raise Conflict(exc.message) from None
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    await host.changed()
    return AsciiJSONResponse({"data": attrs.asdict(paired)})


def _wait_seconds(body: dict[str, Any]) -> float | None:
    """None: answer without waiting for the acknowledgement (``"wait": false``)."""
    wait = body.get("wait", True)
    if not isinstance(wait, bool):
        raise InvalidPayload("'wait' must be true or false")
    seconds = body.get("waitSeconds", DEFAULT_WAIT)
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not 0 < seconds <= MAX_WAIT
    ):
        raise InvalidPayload(f"'waitSeconds' must be a number in (0, {MAX_WAIT:g}]")
    return float(seconds) if wait else None


def _inject_one(sim: SimulatedWhatsApp, agent_id: str, body: dict[str, Any]) -> InboundMessage:
    kind = body.get("kind", "text")
    sender = body_str(body, "from") or ""
    text = body_str(body, "text", required=False)
    quote = None
    if isinstance(body.get("quote"), dict):
        q = body["quote"]
        quote = Quote(
            message_id=body_str(q, "id") or "",
            sender=body_str(q, "sender") or "",
            chat=body_str(q, "chat") or "",
            text=body_str(q, "text", required=False),
        )
    if kind == "text":
        return sim.inject_text(
            agent_id,
            sender,
            text or "",
            group=body_str(body, "group", required=False),
            mentions=_strs(body, "mentions"),
            quote=quote,
            push_name=body_str(body, "pushName", required=False),
            sender_lid=body_str(body, "senderLid", required=False),
            lid_addressing=bool(body.get("lidAddressing", False)),
        )
    if kind in ("image", "document", "audio", "video"):
        return sim.inject_media(
            agent_id,
            kind,
            sender,
            caption=text,
            group=body_str(body, "group", required=False),
            mentions=_strs(body, "mentions"),
            quote=quote,
            push_name=body_str(body, "pushName", required=False),
        )
    if kind == "status":
        return sim.inject_status(agent_id, sender, text or "")
    if kind == "newsletter":
        return sim.inject_newsletter(agent_id, sender, text or "")
    raise InvalidPayload("kind must be text, image, document, audio, video, status or newsletter")


async def inject(request: Request) -> Response:
    """Deliver a message to the agent. Answer 200 once the daemon acknowledged
    it (its callback returned), 504 when that took over ``waitSeconds`` (the message stays
    queued), or 202 at once with ``"wait": false``."""
    host, agent_id = _host(request), request.path_params["agent_id"]
    body = await read_json(request)
    wait = _wait_seconds(body)
    try:
        message = _inject_one(host.network, agent_id, body)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    # Watched before the first checkpoint: the acknowledgement cannot come earlier.
    acked = host.watch(message.id) if wait is not None else None
    try:
        await host.changed()
        data = {"data": attrs.asdict(message)}
        if wait is None:
            return AsciiJSONResponse(data, status_code=202)
        if acked is not None:
            with trio.move_on_after(wait):
                await acked.wait()
            if not acked.is_set():
                error = {
                    "code": "NOT_ACKNOWLEDGED",
                    "message": f"the agent did not acknowledge message {message.id} within "
                    f"{wait:g} s; it stays queued",
                }
                return AsciiJSONResponse({"error": error, **data}, status_code=504)
        return AsciiJSONResponse(data)
    finally:
        host.unwatch(message.id)


async def control(request: Request) -> Response:
    host, agent_id = _host(request), request.path_params["agent_id"]
    sim = host.network
    action = request.path_params["action"]
    body = await read_json(request) if int(request.headers.get("content-length") or 0) else {}
    if action == "drop":
        event: Any = sim.drop(agent_id)
    elif action == "logout":
        event = sim.log_out(agent_id)
    elif action == "ban":
        seconds = body.get("seconds", 3600)
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise InvalidPayload("'seconds' must be a number")
        event = sim.ban(agent_id, float(seconds))
    elif action == "replace":
        event = sim.replace_stream(agent_id)
    elif action == "outdated":
        event = sim.outdated(agent_id)
    else:
        raise InvalidPayload("action must be drop, logout, ban, replace or outdated")
    await host.changed()
    return JSONResponse({"data": {"event": event.kind}})


async def sent(request: Request) -> Response:
    sim, agent_id = _sim(request)
    return AsciiJSONResponse({"data": [attrs.asdict(record) for record in sim.sent(agent_id)]})


async def contact(request: Request) -> Response:
    host = _host(request)
    body = await read_json(request)
    try:
        pn, lid = host.network.add_contact(
            body_str(body, "phone") or "",
            lid=body_str(body, "lid", required=False),
            push_name=body_str(body, "pushName", required=False),
        )
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    await host.changed()
    return JSONResponse({"data": {"jid": pn, "lid": lid}})


def sim_routes() -> list[BaseRoute]:
    return [
        Route("/_sim/contacts", contact, methods=["POST"]),
        Route("/_sim/pair-code", pair_code, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/qr", qr, methods=["GET"]),
        Route("/_sim/agents/{agent_id}/scan", scan, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/inject", inject, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/sent", sent, methods=["GET"]),
        Route("/_sim/agents/{agent_id}/{action}", control, methods=["POST"]),
    ]
