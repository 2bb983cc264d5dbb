"""``/_sim/``: the control API of the simulated WhatsApp network.

Mounted only with ``whatsapp.mode = "sim"`` (``gatewayd run --whatsapp sim``), so the
real daemon can be driven end to end without a phone: scan an agent's QR, inject
inbound messages, drop or log out a device, list what was sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import Conflict, InvalidPayload
from gatewayd.http.app import read_json
from gatewayd.whatsapp.port import Quote
from gatewayd.whatsapp.sim import NoQrShowing, SimulatedWhatsApp

if TYPE_CHECKING:
    from gatewayd.nursery.supervisor import Gateway


def _sim(request: Request) -> tuple[SimulatedWhatsApp, str]:
    gateway: Gateway = request.app.state.gateway
    assert isinstance(gateway.backend, SimulatedWhatsApp)
    return gateway.backend, request.path_params["agent_id"]


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
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
    sim, agent_id = _sim(request)
    body = await read_json(request)
    try:
        paired = sim.scan(
            agent_id,
            _str(body, "phone") or "",
            lid=_str(body, "lid", required=False),
            push_name=_str(body, "pushName", required=False),
        )
    except NoQrShowing as exc:
        raise Conflict(exc.message) from None
    return JSONResponse({"data": attrs.asdict(paired)})


async def inject(request: Request) -> Response:
    sim, agent_id = _sim(request)
    body = await read_json(request)
    kind = body.get("kind", "text")
    sender = _str(body, "from") or ""
    text = _str(body, "text", required=False)
    quote = None
    if isinstance(body.get("quote"), dict):
        q = body["quote"]
        quote = Quote(
            message_id=_str(q, "id") or "",
            sender=_str(q, "sender") or "",
            chat=_str(q, "chat") or "",
            text=_str(q, "text", required=False),
        )
    if kind == "text":
        message = sim.inject_text(
            agent_id,
            sender,
            text or "",
            group=_str(body, "group", required=False),
            mentions=_strs(body, "mentions"),
            quote=quote,
            push_name=_str(body, "pushName", required=False),
            sender_lid=_str(body, "senderLid", required=False),
            lid_addressing=bool(body.get("lidAddressing", False)),
        )
    elif kind in ("image", "document", "audio", "video"):
        message = sim.inject_media(
            agent_id,
            kind,
            sender,
            caption=text,
            group=_str(body, "group", required=False),
            mentions=_strs(body, "mentions"),
            quote=quote,
            push_name=_str(body, "pushName", required=False),
        )
    elif kind == "status":
        message = sim.inject_status(agent_id, sender, text or "")
    elif kind == "newsletter":
        message = sim.inject_newsletter(agent_id, sender, text or "")
    else:
        raise InvalidPayload(
            "kind must be text, image, document, audio, video, status or newsletter"
        )
    return JSONResponse({"data": attrs.asdict(message)})


async def control(request: Request) -> Response:
    sim, agent_id = _sim(request)
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
    return JSONResponse({"data": {"event": event.kind}})


async def sent(request: Request) -> Response:
    sim, agent_id = _sim(request)
    return JSONResponse({"data": [attrs.asdict(record) for record in sim.sent(agent_id)]})


async def contact(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    assert isinstance(gateway.backend, SimulatedWhatsApp)
    body = await read_json(request)
    pn, lid = gateway.backend.add_contact(
        _str(body, "phone") or "",
        lid=_str(body, "lid", required=False),
        push_name=_str(body, "pushName", required=False),
    )
    return JSONResponse({"data": {"jid": pn, "lid": lid}})


def sim_routes() -> list[BaseRoute]:
    return [
        Route("/_sim/contacts", contact, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/qr", qr, methods=["GET"]),
        Route("/_sim/agents/{agent_id}/scan", scan, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/inject", inject, methods=["POST"]),
        Route("/_sim/agents/{agent_id}/sent", sent, methods=["GET"]),
        Route("/_sim/agents/{agent_id}/{action}", control, methods=["POST"]),
    ]
