"""``GET /media/{row_id}/{expires}/{signature}``: a received attachment, by signed link.

No ``Authorization``: the link is the credential (gatewayd/media/links.py). An expired or
altered link is 403, a row that is not an inbound media message 404, both in the agents API's
error shape. A file not kept (yet, or any more) is downloaded on demand when the agent is
connected (409 SESSION_NOT_READY when it is not, 502 when WhatsApp cannot deliver it, 413 over
``media.inbound_max_bytes``).

The mimetype comes from the sender, so it is served only when it looks like one, and with a
sandboxing CSP and ``nosniff``; anything but images, audio, video and PDF is an attachment
(``Content-Disposition``) rather than something a browser renders on our origin.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gatewayd.errors import Forbidden, NotFound
from gatewayd.media.fetch import InboundMedia
from gatewayd.media.links import INVALID_LINK
from gatewayd.store.inbound_media import MediaRow

CHUNK = 64 * 1024
_MIMETYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
_INLINE = re.compile(r"(image|audio|video)/[a-z0-9.+-]+|application/pdf")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")


def _content_type(row: MediaRow) -> str:
    """The media type the sender gave (parameters dropped), when it is one."""
    base = row.media.mimetype.split(";", 1)[0].strip().lower()
    return base if _MIMETYPE.fullmatch(base) else "application/octet-stream"


def _disposition(row: MediaRow, content_type: str) -> str:
    kind = (
        "inline"
        if _INLINE.fullmatch(content_type) and content_type != "image/svg+xml"
        else ("attachment")
    )
    name = row.media.filename or f"{row.type}-{row.row_id}"
    # RFC 6266: an ASCII fallback and the exact name percent-encoded.
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "media"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def media_routes(media: InboundMedia) -> list[BaseRoute]:
    """The media link route, served by ``media``."""

    async def get_media(request: Request) -> Response:
        params = request.path_params
        row_text, expires_text, sig = params["row_id"], params["expires"], params["signature"]
        if not (row_text.isascii() and row_text.isdigit() and len(row_text) <= 19):
            raise NotFound("No such media")
        well_formed = expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12
        if not (well_formed and _SIGNATURE.fullmatch(sig)):
            raise Forbidden(INVALID_LINK)
        row_id, expires = int(row_text), int(expires_text)
        media.check(row_id, expires, sig)
        row, path = await media.ensure(row_id)
        return await _serve(row, path, expires)

    return [Route("/media/{row_id}/{expires}/{signature}", get_media, methods=["GET"])]


async def _serve(row: MediaRow, path: Path, expires: int) -> Response:
    # Opened before answering: a cleanup removing the file meanwhile cannot cut the answer.
    try:
        file = await trio.open_file(path, "rb")
    except FileNotFoundError:
        raise NotFound("No such media") from None
    size = os.fstat(file.wrapped.fileno()).st_size

    async def body() -> AsyncIterator[bytes]:
        async with file:
            while chunk := await file.read(CHUNK):
                yield chunk

    content_type = _content_type(row)
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": _disposition(row, content_type),
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Cache-Control": "private, max-age=300",
    }
    return StreamingResponse(body(), media_type=content_type, headers=headers)
