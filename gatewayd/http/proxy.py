"""The client's address behind a reverse proxy (``server.trusted_proxies``).

A request whose peer is one of the trusted proxies has its client taken from
``X-Forwarded-For``: walking the list from the right (the hop nearest to us), the first address
that is not itself a trusted proxy is the client. Entries to its left were written by whoever
sent the request and are not believed. A request from any other peer keeps its own address,
whatever headers it carries. The address found replaces ``scope["client"]``, so rate limits,
login throttling and logs all see the same client.

Without trusted proxies (the default) nothing is read: a daemon reachable directly must not let
a client choose its address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gatewayd.config import Config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32  # entries of X-Forwarded-For looked at; a longer list is someone's invention


def networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """The config's entries (checked when it was loaded) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def client_address(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """Who the client is, given the peer's address and its ``X-Forwarded-For`` value."""
    peer_address = _address(peer)
    if not trusted or peer_address is None or not _trusted(peer_address, trusted):
        return peer
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()][-MAX_HOPS:]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # not an address: the chain cannot be followed past it
        if not _trusted(address, trusted):
            return str(address)
        peer = str(address)
    return peer


class TrustedProxies:
    """ASGI wrapper: ``scope["client"]`` becomes the client behind a trusted proxy."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Config]) -> None:
        self.app = app
        self.settings = settings
        self._entries: list[str] = []
        self._networks: tuple[Network, ...] = ()

    def _current(self) -> tuple[Network, ...]:
        entries = self.settings().server.trusted_proxies
        if entries != self._entries:  # the config was reloaded
            self._entries, self._networks = list(entries), networks(entries)
        return self._networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trusted = self._current()
        client = scope.get("client")
        if trusted and client and scope["type"] in ("http", "websocket"):
            forwarded = ",".join(Headers(scope=scope).getlist("x-forwarded-for"))
            host = client_address(client[0], forwarded, trusted)
            if host != client[0]:
                scope = {**scope, "client": (host, 0)}
        await self.app(scope, receive, send)
