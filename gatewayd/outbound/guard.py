"""The address guard: client-supplied URLs may not reach the daemon's own network.

A media URL comes from a tenant. Fetched naively it reaches whatever the daemon can:
its loopback services, the private network, the cloud metadata service at
169.254.169.254. ``check_url`` resolves the host and refuses every address that is not
public (unless the configuration allows private ones); ``open_checked`` then sends the
request to an address that was checked.

DNS rebinding (a name that resolves to a public address when checked and to a private
one when connected) is closed for ``http``: the request goes to the checked IP itself,
with the original ``Host`` header. For ``https`` the request goes to the host name, so
httpx resolves it again; there the certificate check is what defeats rebinding — a
rebound private server cannot present a valid certificate for the attacker's name.
Residual risk: an ``https`` fetch through a client built with ``verify=False``, or an
internal service holding a certificate for a public name. Pinning ``https`` too would
need SNI overrides, and httpx's pool keys connections by (scheme, IP, port) only, so a
pinned TLS connection verified for one name could be reused for another.

Redirects are not followed here; a caller follows them hop by hop through
``check_url`` + ``open_checked`` (see ``gatewayd.outbound.media``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import attrs
import httpx
import trio

from gatewayd.errors import AddressRefused, BadGateway, InvalidPayload

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
#: What each refused range is, for the error message. Checked in order.
_REFUSED: tuple[tuple[_V4 | _V6, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified"),  # connecting to 0.0.0.0 reaches this host on Linux
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("169.254.0.0/16"), "link-local"),  # includes the cloud metadata address
    (_V4("100.64.0.0/10"), "shared (CGNAT)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),  # includes the broadcast address
    (_V4("192.0.0.0/24"), "reserved"),
    (_V4("192.0.2.0/24"), "reserved"),
    (_V4("198.18.0.0/15"), "reserved"),
    (_V4("198.51.100.0/24"), "reserved"),
    (_V4("203.0.113.0/24"), "reserved"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("fc00::/7"), "private"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "private"),  # deprecated site-local
    (_V6("ff00::/8"), "multicast"),
    (_V6("::/96"), "reserved"),  # deprecated IPv4-compatible
    (_V6("100::/64"), "reserved"),
    (_V6("2001:db8::/32"), "reserved"),
)
_NAT64 = _V6("64:ff9b::/96")


def refusal_reason(address: Address) -> str | None:
    """Why ``address`` may not be reached (``"loopback"``, ``"private"``, …), or None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return None if reason is None else f"{reason} (as IPv6)"
    for network, reason in _REFUSED:
        if address.version == network.version and address in network:
            return reason
    # Anything else the IANA registries do not call global (benchmarking, ORCHID, …).
    return None if address.is_global else "reserved"


@attrs.frozen
class CheckedURL:
    """A URL whose host resolved only to allowed addresses."""

    url: httpx.URL
    addresses: tuple[Address, ...]

    @property
    def host(self) -> str:
        """The host name (never the credentials), for messages."""
        return self.url.host


#: A DNS name as it can be resolved: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_http_url(url: str | httpx.URL) -> tuple[httpx.URL, str]:
    """``url`` parsed, and its host, when it is an absolute http(s) URL that could be fetched.

    Raises InvalidPayload otherwise: a URL that cannot work is the caller's mistake (400), not
    an upstream failure. The message never quotes the URL (it may carry credentials).
    """
    try:
        parsed = httpx.URL(url)
        host = parsed.host
        raw_host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, TypeError, UnicodeError, ValueError):
        raise InvalidPayload("not a valid URL") from None
    if parsed.scheme not in SCHEMES:
        raise InvalidPayload(f"URL scheme must be http or https, not {parsed.scheme or 'none'!r}")
    if not host:
        raise InvalidPayload("URL has no host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidPayload("URL port must be 1 to 65535")
    if not _is_ip_literal(raw_host) and (len(raw_host) > 253 or not _HOSTNAME.fullmatch(raw_host)):
        raise InvalidPayload("URL host is not a valid host name")
    return parsed, host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return False
    return True


async def check_url(
    url: str | httpx.URL, *, allow_private: bool, allowed_networks: Iterable[Network] = ()
) -> CheckedURL:
    """Resolve ``url``'s host and check every address it resolves to.

    ``allow_private`` allows every address; ``allowed_networks`` allows just the
    addresses inside them (one internal media host, say, without the metadata service).

    Raises InvalidPayload for a malformed URL or a scheme other than http/https,
    BadGateway when the host does not resolve, AddressRefused when any address is refused
    (httpx may connect to any of them, so one bad address refuses the URL).
    """
    parsed, host = parse_http_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        # raw_host is the IDNA-encoded (ASCII) form of a non-ASCII name.
        infos = await trio.socket.getaddrinfo(
            parsed.raw_host.decode("ascii"), port, type=trio.socket.SOCK_STREAM
        )
    except (OSError, UnicodeError) as exc:
        raise BadGateway(f"cannot resolve {host}: {exc}") from None
    addresses: list[Address] = []
    for *_, sockaddr in infos:
        # Scope ids ("fe80::1%eth0") are not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise BadGateway(f"cannot resolve {host}: no addresses")
    if not allow_private:
        allowed = tuple(allowed_networks)
        for address in addresses:
            if any(address.version == net.version and address in net for net in allowed):
                continue
            reason = refusal_reason(address)
            if reason is not None:
                raise AddressRefused(
                    f"{host} resolves to {address}, a {reason} address; refusing to connect",
                    details={"host": host, "address": str(address), "reason": reason},
                )
    return CheckedURL(parsed, tuple(addresses))


@asynccontextmanager
async def open_checked(
    client: httpx.AsyncClient,
    checked: CheckedURL,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - httpx's per-operation timeout
) -> AsyncIterator[httpx.Response]:
    """Send one request to ``checked`` (with ``content`` as its body, if given) and yield the
    streaming response (closed on exit).

    Never follows redirects. For http the connection goes to a checked address (each in
    turn while connecting fails), with the original Host header; httpx errors propagate.
    """
    extra = dict(headers or {})
    if checked.url.scheme == "http":
        extra["Host"] = checked.url.netloc.decode("ascii")
        targets = [checked.url.copy_with(host=str(address)) for address in checked.addresses]
    else:
        targets = [checked.url]
    for index, target in enumerate(targets):
        request = client.build_request(
            method,
            target,
            headers=extra,
            content=content,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            if index == len(targets) - 1:
                raise
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
