"""Signed, expiring media links: ``{base}/media/{row_id}/{expires}/{signature}``.

A receiver such as n8n fetches ``media_url`` without credentials, so the link itself is the
credential: ``signature`` is HMAC-SHA256 over ``"{row_id}.{expires}"`` (base64url, unpadded)
under a key derived from the daemon's auth secret with its own label, as the PIN key is
(gatewayd/usecases/tokens.py). ``expires`` is a Unix time in whole seconds. A link past its
expiry or with another signature is refused (403); changing the auth secret voids every link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence

from gatewayd.config import Config
from gatewayd.errors import Forbidden
from gatewayd.store.inbound_media import DOWNLOADABLE
from gatewayd.usecases.tokens import AuthSecrets

_LINK_KEY_LABEL = b"gatewayd/media-link/v1"
_EXPIRED = "This media link has expired"
INVALID_LINK = "This media link is not valid"


def link_key(secrets: AuthSecrets) -> bytes:
    """The key of media link signatures (never the token key itself)."""
    return hmac.new(secrets.jwt_key, _LINK_KEY_LABEL, hashlib.sha256).digest()


def signature(secrets: AuthSecrets, row_id: int, expires: int) -> str:
    digest = hmac.new(link_key(secrets), f"{row_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def public_base(config: Config, binds: Sequence[str] = ()) -> str:
    """Where links point: ``server.base_url`` (APP_BASE_URL), else the address HTTP listens
    on (the first bind, which knows the port picked for ``port = 0``), else host:port."""
    if config.server.base_url:
        return config.server.base_url.rstrip("/")
    if binds:
        return binds[0].rstrip("/")
    host = config.server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}"


def media_path(secrets: AuthSecrets, row_id: int, *, now: float, ttl: float) -> str:
    """The path of a link to ``row_id`` valid ``ttl`` s from ``now`` (Unix seconds)."""
    expires = math.ceil(now + ttl)
    return f"/media/{row_id}/{expires}/{signature(secrets, row_id, expires)}"


def media_url(
    base_url: str,
    secrets: AuthSecrets,
    row_id: int,
    message_type: str | None,
    *,
    now: float,
    ttl: float,
) -> str | None:
    """The absolute signed link to the attachment of inbound message ``row_id``; None when
    its type (the ``messages.type`` column) has no attachment."""
    if message_type not in DOWNLOADABLE:
        return None
    return base_url.rstrip("/") + media_path(secrets, row_id, now=now, ttl=ttl)


def check_link(secrets: AuthSecrets, row_id: int, expires: int, sig: str, *, now: float) -> None:
    """Forbidden unless ``sig`` signs (row_id, expires) and ``expires`` has not passed."""
    expected = signature(secrets, row_id, expires)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace")):
        raise Forbidden(INVALID_LINK)
    if expires <= now:
        raise Forbidden(_EXPIRED)
