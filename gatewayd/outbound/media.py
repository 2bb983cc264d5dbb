"""Media from clients: a URL to fetch or base64 to decode, both under a size cap.

The cap is enforced twice for a URL: from ``Content-Length`` before a byte of the body
is read, and while streaming, because a server may send no length (chunked, or
close-delimited) or a compressed body that inflates. Every redirect hop goes through
the address guard. Whether bytes are an image is decided by their content
(``sniff_image``), never by the type the client or the server claims.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import re
from collections.abc import Iterable
from urllib.parse import unquote

import attrs
import httpx
import trio

from gatewayd.errors import BadGateway, GatewayError, InvalidPayload, MediaTooLarge
from gatewayd.outbound import map_exceptions, read_capped
from gatewayd.outbound.guard import CheckedURL, Network, check_url, open_checked

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HEADERS = {"Accept-Encoding": "identity"}
_WHITESPACE = re.compile(r"\s+")
_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),", re.IGNORECASE)


@attrs.frozen
class FetchedMedia:
    """A downloaded body with what the server said about it (unverified)."""

    data: bytes
    content_type: str | None  # media type only, lower case, without parameters
    filename: str | None  # a bare file name (no directories), when one was given


async def fetch_media(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    allow_private: bool,
    allowed_networks: Iterable[Network] = (),
    timeout: float = 30,  # noqa: ASYNC109 - also httpx's per-operation timeout and in messages
) -> FetchedMedia:
    """Download ``url`` (at most ``max_bytes``, ``timeout`` seconds in all).

    ``allow_private`` and ``allowed_networks`` are the guard's (``check_url``), for every hop.

    Raises InvalidPayload (malformed URL, bad scheme), AddressRefused (any hop resolves
    to a refused address), MediaTooLarge (declared or actual size over the cap), and
    BadGateway (unreachable, non-2xx, too many redirects, timeout, broken body).
    """
    with trio.move_on_after(timeout):
        # The first URL is the client's: its mistakes are 400s. Redirect targets are the
        # server's, so their malformations are BadGateway (see _follow).
        policy = _Policy(allow_private, tuple(allowed_networks))
        checked = await policy.check(url)
        return await _download(client, checked, max_bytes=max_bytes, policy=policy, timeout=timeout)
    # Resolving counts against the timeout too; the URL parsed, or check_url had raised.
    raise BadGateway(f"media from {httpx.URL(url).host} did not arrive within {timeout:g} s")


@attrs.frozen
class _Policy:
    allow_private: bool
    allowed_networks: tuple[Network, ...]

    async def check(self, url: str | httpx.URL) -> CheckedURL:
        return await check_url(
            url, allow_private=self.allow_private, allowed_networks=self.allowed_networks
        )


async def _download(
    client: httpx.AsyncClient,
    checked: CheckedURL,
    *,
    max_bytes: int,
    policy: _Policy,
    timeout: float,  # noqa: ASYNC109 - httpx's per-operation timeout; fetch_media has the deadline
) -> FetchedMedia:
    for _ in range(MAX_REDIRECTS + 1):
        with map_exceptions("the media server", checked.host, timeout):
            # Images are compressed already; identity keeps a deflate bomb off the wire.
            # The per-operation timeout is the whole one, so the client's default (maybe
            # shorter) does not decide; the deadline in fetch_media bounds the total.
            async with open_checked(client, checked, headers=_HEADERS, timeout=timeout) as response:
                status = response.status_code
                location = response.headers.get("location")
                if status not in _REDIRECT_STATUSES or location is None:
                    if not 200 <= status < 300:
                        raise BadGateway(
                            f"media URL answered HTTP {status} from {checked.host}",
                            details={"status": status},
                        )
                    data = await _read_capped(response, max_bytes)
                    return FetchedMedia(
                        data, _media_type(response.headers), _filename(response, checked.url)
                    )
        # The redirect's body is never read; leaving the block closed its connection.
        checked = await _follow(checked, location, policy)
    raise BadGateway(f"media URL redirected more than {MAX_REDIRECTS} times")


async def _follow(checked: CheckedURL, location: str, policy: _Policy) -> CheckedURL:
    try:
        return await policy.check(checked.url.join(location))
    except (httpx.InvalidURL, InvalidPayload) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        raise BadGateway(f"media URL redirected to an unusable URL: {message}") from None


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        # Refused from the headers: the body is never read (the connection is closed).
        raise MediaTooLarge(
            f"media is {int(declared)} bytes, over the limit of {max_bytes} bytes",
            details={"limit": max_bytes, "size": int(declared)},
        )
    # Counted after Content-Encoding is undone, so an inflating body is stopped as it inflates.
    data, over = await read_capped(response, max_bytes)
    if over:
        raise MediaTooLarge(
            f"media is over the limit of {max_bytes} bytes", details={"limit": max_bytes}
        )
    return data


def _media_type(headers: httpx.Headers) -> str | None:
    value = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return value or None


def _filename(response: httpx.Response, url: httpx.URL) -> str | None:
    disposition = response.headers.get("content-disposition")
    name: str | None = None
    if disposition:
        message = email.message.Message()
        message["content-disposition"] = disposition
        name = message.get_filename()
    if not name:
        name = unquote(url.path.rsplit("/", 1)[-1])
    return _safe_filename(name)


def _safe_filename(name: str) -> str | None:
    """The last path component of ``name`` without control characters, or None."""
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return base if base not in ("", ".", "..") else None


def decode_base64_media(data: str, *, max_bytes: int) -> bytes:
    """The bytes of base64 ``data`` (or of a ``data:…;base64,…`` URL), at most ``max_bytes``.

    Whitespace is ignored and the URL-safe alphabet and missing padding are accepted.
    Too large is decided from the encoded length before decoding. Raises InvalidPayload
    (empty, not base64, a data URL that is not base64) or MediaTooLarge.
    """
    if not isinstance(data, str):
        raise InvalidPayload(f"data must be a base64 string, not {type(data).__name__}")
    match = _DATA_URL.match(data)
    if match is not None:
        if "base64" not in (p.strip().lower() for p in match["params"].split(";")):
            raise InvalidPayload("data URL is not base64-encoded (expected data:<type>;base64,…)")
        data = data[match.end() :]
    encoded = _WHITESPACE.sub("", data)
    if not encoded:
        raise InvalidPayload("data is empty")
    # Every 4 characters are 3 bytes; padding makes the estimate at most 2 bytes high.
    if (len(encoded) * 3) // 4 - 2 > max_bytes:
        raise MediaTooLarge(
            f"media is over the limit of {max_bytes} bytes", details={"limit": max_bytes}
        )
    encoded = encoded.replace("-", "+").replace("_", "/").rstrip("=")
    if len(encoded) % 4 == 1:
        raise InvalidPayload("data is not valid base64 (truncated)")
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPayload("data is not valid base64") from None
    if len(decoded) > max_bytes:
        raise MediaTooLarge(
            f"media is {len(decoded)} bytes, over the limit of {max_bytes} bytes",
            details={"limit": max_bytes, "size": len(decoded)},
        )
    return decoded


def sniff_image(data: bytes) -> str | None:
    """The image type the bytes really are (jpeg, png, gif, webp), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None
