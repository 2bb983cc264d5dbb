"""``/_net/``: the protocol between the simnet and the daemons' remote clients.

Every answer is ``{"data": …}`` or ``{"error": {"code", "message"}}``. A send that WhatsApp would
refuse answers ``NOT_CONNECTED`` (409), ``INVALID_RECIPIENT`` (400) or ``WHATSAPP_ERROR`` (502),
which the client raises again as the port's exceptions. Pairing and connecting open a session
whose events the client long-polls at ``/_net/sessions/{id}/events``, acknowledging by sequence
number (see ``sessions.py``).

Bodies are read with ``any_text``: a daemon's reply may carry any text WhatsApp accepts.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload, InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.http.request import read_json
from gatewayd.http.routes_sim import AsciiJSONResponse, body_str
from gatewayd.whatsapp.port import Media, Quote
from gatewayd.whatsapp.simnet.sessions import Session, SessionHub
from gatewayd.whatsapp.simnet.wire import event_to_json

MAX_MEDIA = 128 * 1024 * 1024  # the sim keeps only the size; refuse absurd ones
_T = TypeVar("_T")


def _hub(request: Request) -> SessionHub:
    hub: SessionHub = request.app.state.sim_host
    return hub


def _ok(data: Any) -> Response:
    return AsciiJSONResponse({"data": data})


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise InvalidPayload(f"{key!r} must be a number")
    return float(value)


async def _whatsapp(call: Awaitable[_T]) -> _T | Response:
    """Await a client call; WhatsApp's refusals become answers the remote client maps back."""
    try:
        return await call
    except NotConnected as exc:
        code, status, message = "NOT_CONNECTED", 409, exc.message
    except InvalidRecipient as exc:
        code, status, message = "INVALID_RECIPIENT", 400, exc.message
    except WhatsAppError as exc:
        code, status, message = "WHATSAPP_ERROR", 502, exc.message
    return AsciiJSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# ------------------------------------------------------------------ sessions


async def pair(request: Request) -> Response:
    session = await _hub(request).open_pair(request.path_params["agent_id"])
    return _ok({"session": session.id})


async def pair_phone(request: Request) -> Response:
    """A phone pairing code for the agent's pairing in progress (``NOT_CONNECTED`` without one)."""
    body = await read_json(request, any_text=True)
    client = _hub(request).network.client(request.path_params["agent_id"])
    result = await _whatsapp(client.pair_phone(body_str(body, "phone") or ""))
    return result if isinstance(result, Response) else _ok({"code": result})


async def connect(request: Request) -> Response:
    body = await read_json(request, any_text=True)
    device = body_str(body, "device") or ""
    result = await _hub(request).open_run(request.path_params["agent_id"], device)
    if isinstance(result, Session):
        return _ok({"session": result.id})
    return _ok({"failed": event_to_json(result)})


async def events(request: Request) -> Response:
    hub = _hub(request)
    session = hub.get(request.path_params["session_id"])
    body = await read_json(request, any_text=True)
    ack = body.get("ack", 0)
    if not isinstance(ack, int) or isinstance(ack, bool) or ack < 0:
        raise InvalidPayload("'ack' must be a sequence number")
    batch, over = await hub.poll(session, ack, _number(body, "wait", 20.0))
    return _ok(
        {"events": [{"seq": s, "event": event_to_json(e)} for s, e in batch], "closed": over}
    )


async def close(request: Request) -> Response:
    hub = _hub(request)
    body = (
        await read_json(request, any_text=True)
        if int(request.headers.get("content-length") or 0)
        else {}
    )
    ack = body.get("ack", 0)
    try:
        session = hub.get(request.path_params["session_id"])
    except WhatsAppError:
        return _ok({})  # closing is idempotent
    await hub.close(session, ack if isinstance(ack, int) and not isinstance(ack, bool) else 0)
    return _ok({})


# ------------------------------------------------------------------ calls


def _quote(body: dict[str, Any]) -> Quote | None:
    q = body.get("quote")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise InvalidPayload("'quote' must be an object")
    return Quote(
        message_id=body_str(q, "id") or "",
        sender=body_str(q, "sender") or "",
        chat=body_str(q, "chat") or "",
        text=body_str(q, "text", required=False),
    )


async def send(request: Request) -> Response:
    hub = _hub(request)
    client = hub.network.client(request.path_params["agent_id"])
    body = await read_json(request, any_text=True)
    kind, to, quote = body.get("kind"), body_str(body, "to") or "", _quote(body)
    text = body_str(body, "text", required=False)
    mimetype = body_str(body, "mimetype", required=False) or "application/octet-stream"
    size = int(_number(body, "size", 0))
    if not 0 <= size <= MAX_MEDIA:
        raise InvalidPayload("'size' is out of range")
    data = bytes(size)
    if kind == "text":
        mentions = body.get("mentions", [])
        if not isinstance(mentions, list) or not all(isinstance(m, str) for m in mentions):
            raise InvalidPayload("'mentions' must be a list of strings")
        call = client.send_text(to, text or "", quote=quote, mentions=mentions)
    elif kind == "image":
        filename = body_str(body, "filename", required=False)
        call = client.send_image(
            to, data, mimetype=mimetype, caption=text, filename=filename, quote=quote
        )
    elif kind == "document":
        filename = body_str(body, "filename") or ""
        call = client.send_document(
            to, data, mimetype=mimetype, filename=filename, caption=text, quote=quote
        )
    elif kind == "audio":
        ptt = body.get("ptt", False) is True
        call = client.send_audio(to, data, mimetype=mimetype, ptt=ptt, quote=quote)
    elif kind == "video":
        call = client.send_video(to, data, mimetype=mimetype, caption=text, quote=quote)
    else:
        raise InvalidPayload("kind must be text, image, document, audio or video")
    result = await _whatsapp(call)
    if isinstance(result, Response):
        return result
    await hub.changed()  # the sent log is on disk before the sender hears "sent"
    return _ok({"messageId": result.message_id, "timestampMs": result.timestamp_ms})


async def typing(request: Request) -> Response:
    hub = _hub(request)
    body = await read_json(request, any_text=True)
    on = body.get("on")
    if not isinstance(on, bool):
        raise InvalidPayload("'on' must be true or false")
    client = hub.network.client(request.path_params["agent_id"])
    result = await _whatsapp(client.set_typing(body_str(body, "chat") or "", on))
    hub.persister.changed()
    return result if isinstance(result, Response) else _ok({})


async def read(request: Request) -> Response:
    hub = _hub(request)
    body = await read_json(request, any_text=True)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidPayload("'ids' must be a list of strings")
    client = hub.network.client(request.path_params["agent_id"])
    call = client.mark_read(
        body_str(body, "chat") or "", body_str(body, "sender", required=False), ids
    )
    result = await _whatsapp(call)
    hub.persister.changed()
    return result if isinstance(result, Response) else _ok({})


async def lookup(request: Request) -> Response:
    body = await read_json(request, any_text=True)
    client = _hub(request).network.client(request.path_params["agent_id"])
    if "lid" in body:
        result = await _whatsapp(client.pn_for_lid(body_str(body, "lid") or ""))
    else:
        result = await _whatsapp(client.lid_for_pn(body_str(body, "pn") or ""))
    return result if isinstance(result, Response) else _ok({"jid": result})


async def media(request: Request) -> Response:
    body = await read_json(request, any_text=True)
    size = _number(body, "size", 0)
    if not 0 <= size <= MAX_MEDIA:
        raise InvalidPayload(f"'size' must be 0..{MAX_MEDIA}")
    mimetype = body_str(body, "mimetype", required=False) or "application/octet-stream"
    wanted = Media(mimetype=mimetype, size=int(size), ref=body_str(body, "ref", required=False))
    client = _hub(request).network.client(request.path_params["agent_id"])
    result = await _whatsapp(client.download_media(wanted))
    if isinstance(result, Response):
        return result
    return _ok({"base64": base64.b64encode(result).decode("ascii")})


async def logout(request: Request) -> Response:
    hub = _hub(request)
    result = await _whatsapp(hub.network.client(request.path_params["agent_id"]).logout())
    await hub.changed()
    return result if isinstance(result, Response) else _ok({})


async def devices(request: Request) -> Response:
    return _ok(sorted(await _hub(request).network.known_devices()))


async def forget(request: Request) -> Response:
    hub = _hub(request)
    body = await read_json(request, any_text=True)
    await hub.network.forget_device(body_str(body, "device") or "")
    await hub.changed()
    return _ok({})


def net_routes() -> list[BaseRoute]:
    return [
        Route("/_net/devices", devices, methods=["GET"]),
        Route("/_net/devices/forget", forget, methods=["POST"]),
        Route("/_net/agents/{agent_id}/pair", pair, methods=["POST"]),
        Route("/_net/agents/{agent_id}/pair-phone", pair_phone, methods=["POST"]),
        Route("/_net/agents/{agent_id}/connect", connect, methods=["POST"]),
        Route("/_net/agents/{agent_id}/send", send, methods=["POST"]),
        Route("/_net/agents/{agent_id}/typing", typing, methods=["POST"]),
        Route("/_net/agents/{agent_id}/read", read, methods=["POST"]),
        Route("/_net/agents/{agent_id}/lookup", lookup, methods=["POST"]),
        Route("/_net/agents/{agent_id}/logout", logout, methods=["POST"]),
        Route("/_net/agents/{agent_id}/media", media, methods=["POST"]),
        Route("/_net/sessions/{session_id}/events", events, methods=["POST"]),
        Route("/_net/sessions/{session_id}/close", close, methods=["POST"]),
    ]
