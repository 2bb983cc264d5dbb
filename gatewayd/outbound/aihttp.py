"""The AI backend's own HTTP/1.1 client: kept-alive connections, reused in constant time.

Every received message costs one POST to the AI backend, so this call sits on the forwarder's
hot path (docs/benchmarks.md, bench/inbound.py). It does not go through the shared httpx
client: httpcore's pool (1.0) looks for a connection for every waiting request by scanning
every connection, again at every request's start and end, so its CPU per call grows with the
calls in flight, and an AI backend that takes seconds to answer keeps hundreds in flight. On
the development machine, against a loopback server answering after 0.2 s, a call cost 1.4 ms
of CPU through httpx with 10 calls in flight and 15 ms with 100; through this client 0.4 ms
either way. In ``bench/inbound.py --only latency --ai-delay 0.2`` the gateway's CPU per
message went from 7.1 to 4.8 ms, and the 1 % of AI calls that had failed no longer did.

This client does only what the AI call needs: ``POST`` a body over HTTP/1.1 (TLS for
``https``, verified as the shared client verifies: certifi's roots, nothing from the
environment), read the answer up to a cap, and keep the connection for the next call to the
same origin. Idle connections are taken last in, first out; one idle for longer than
``KEEPALIVE`` seconds, or that the server has closed meanwhile, is dropped. A reused
connection that the server closed just as the request went out (no byte of an answer) is
replaced once by a fresh one when the request carries an ``Idempotency-Key`` (the
forwarder's do; without one a repeat could not be recognised, and the call fails). No
proxies, no cookies, no redirects followed (a 3xx is an answer like any other), no
compression asked for.

Failures are the project's errors, in the shared client's words (``gatewayd.outbound``):
BadGateway naming the host, never the URL or a header. The deadline is the caller's
(``trio.fail_after``); a connection a cancelled call leaves behind is closed, never reused.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import weakref
from collections import deque
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import attrs
import httpx
import idna
import structlog
import trio

from gatewayd.errors import BadGateway

__all__ = ["AiConnections", "host_of"]

log = structlog.get_logger(__name__)

#: Seconds an idle connection is kept: below the 5 s that common servers (uvicorn, hypercorn)
#: keep one, so that it is seldom found closed.
KEEPALIVE = 4.0
#: Idle connections kept per origin; more are closed when they come back.
MAX_IDLE = 32
#: Calls on the wire at once (the shared client's limit); more wait for a slot.
MAX_CONNECTIONS = 100
#: The longest status line and headers read.
MAX_HEAD = 64 * 1024

_WHAT = "the AI backend"
_RECEIVE = 65536
# Header values we send: visible ASCII, spaces and tabs (no CR/LF: nothing can be injected).
_VALUE = re.compile(r"[\t\x20-\x7e]*")
# A status code, a Content-Length, a chunk size: ASCII only (str.isdigit takes "²" too).
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# What RFC 3986 allows in a path and a query, besides percent-escapes.
_SAFE = "/%:@!$&'()*+,;=-._~"


@attrs.frozen
class _Origin:
    scheme: str
    host: str  # IDNA-encoded, lowercase, IPv6 without brackets
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@attrs.frozen
class _Target:
    origin: _Origin
    path: str  # the request target: path and query


class _InvalidUrl(ValueError):
    """The URL is not one an AI call can go to; its text is the reason's name."""


@functools.lru_cache(maxsize=1024)
def _parse(url: str) -> _Target:
    """``url`` as an origin and a request target (once per URL: the forwarder calls the same
    few endpoints for every message). Raises _InvalidUrl (not cached)."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _InvalidUrl("UnsupportedProtocol")
        host = parts.hostname
        if not host:
            raise _InvalidUrl("InvalidURL")
        if not host.isascii():  # IDNA 2008 with UTS 46, as httpx encodes it
            host = idna.encode(host, uts46=True).decode("ascii")
        port = parts.port or (443 if scheme == "https" else 80)
    except (ValueError, UnicodeError, idna.IDNAError) as exc:
        if isinstance(exc, _InvalidUrl):
            raise
        raise _InvalidUrl("InvalidURL") from None
    path = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_SAFE + "?")
    return _Target(_Origin(scheme, host, port), path)


def host_of(url: str) -> str:
    """The host of ``url`` (for messages and logs), or ``?``."""
    try:
        return _parse(url).origin.host
    except _InvalidUrl:
        return "?"


class _Closed(Exception):
    """The server closed the connection before the answer was complete."""


class _Retry(Exception):
    """The connection was dead before a byte of the answer came: the request may go again."""


class _Protocol(Exception):
    """The answer is not HTTP/1.x as we read it."""


@attrs.define(eq=False)
class _Connection:
    stream: trio.abc.Stream
    sock: trio.socket.SocketType
    buffer: bytearray = attrs.Factory(bytearray)
    #: Bytes of the current answer received so far.
    received: int = 0
    #: trio.current_time() when it last became idle.
    idle_since: float = 0.0

    async def fill(self) -> None:
        """Read what the server sent next into the buffer; _Closed at its end."""
        data = await self.stream.receive_some(_RECEIVE)
        if not data:
            raise _Closed("RemoteProtocolError")
        self.received += len(data)
        self.buffer += data

    async def line(self) -> bytes:
        """The next CRLF-terminated line, without its CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise _Protocol("a line too long")
            await self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


@attrs.frozen
class _Answer:
    status: int
    body: bytes
    truncated: bool
    #: The connection can carry the next call.
    reusable: bool


async def _head(conn: _Connection) -> tuple[int, str, dict[str, str]]:
    """Status, HTTP version and headers (lowercase names, repeated ones joined)."""
    while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
        if len(conn.buffer) > MAX_HEAD:
            raise _Protocol("headers too long")
        await conn.fill()
    lines = bytes(conn.buffer[:end]).decode("latin-1").split("\r\n")
    del conn.buffer[: end + 4]
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or _DIGITS.fullmatch(code) is None:
        raise _Protocol("not an HTTP/1 status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _Protocol("a header without a colon")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), version, headers


async def _chunked(conn: _Connection, cap: int) -> tuple[bytes, bool]:
    """A chunked body, up to ``cap`` bytes: (body, truncated); when truncated the rest is
    left unread (the connection is then closed)."""
    body = bytearray()
    while True:
        digits = (await conn.line()).split(b";")[0].strip()
        if _HEX.fullmatch(digits) is None:
            raise _Protocol("a bad chunk size")
        size = int(digits, 16)
        if size == 0:
            while await conn.line():  # trailers, until the empty line
                pass
            return bytes(body), False
        room = cap - len(body)
        if size > room:  # over the cap: read no more than it (a chunk may claim anything)
            body += await conn.exactly(room)
            return bytes(body), True
        body += await conn.exactly(size)
        if await conn.line():
            raise _Protocol("a chunk without its CRLF")


async def _answer(conn: _Connection, cap: int) -> _Answer:
    """Read one answer (skipping interim 1xx ones)."""
    status, version, headers = await _head(conn)
    while 100 <= status < 200:
        status, version, headers = await _head(conn)
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return _Answer(status, b"", False, keep)
    coding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if coding is not None:
        # RFC 9112 §6.1, §6.3: chunked last is read as chunked (with a Content-Length too,
        # the connection is not trusted again); any other coding runs to the end.
        if coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
            body, truncated = await _chunked(conn, cap)
            return _Answer(status, body, truncated, keep and not truncated and length is None)
        length, keep = None, False
    if length is not None:
        if _DIGITS.fullmatch(length) is None:
            raise _Protocol("a bad Content-Length")
        size = int(length)
        body = await conn.exactly(min(size, cap))
        return _Answer(status, body, size > cap, keep and size <= cap)
    # Neither: the body runs to the end of the connection.
    while len(conn.buffer) <= cap:
        try:
            await conn.fill()
        except _Closed:
            break
    return _Answer(status, bytes(conn.buffer[:cap]), len(conn.buffer) > cap, False)


def _request(target: _Target, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.origin.authority}",
        "User-Agent: gatewayd",
        f"Content-Length: {len(body)}",
    ]
    for name, value in headers.items():
        if _VALUE.fullmatch(value) is None:
            raise _Protocol("LocalProtocolError")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _pending(stream: trio.abc.Stream) -> bool:
    """Bytes received after the answer that TLS holds back from the socket: trio's incoming
    buffer or OpenSSL's next record (a plain socket shows them as readable instead). A
    connection with any is never used again: they would be read as the next call's answer."""
    if not isinstance(stream, trio.SSLStream):
        return False
    try:
        return bool(stream._incoming.pending or stream._ssl_object.pending())
    except AttributeError:  # another trio: trust no TLS connection with leftovers unknown
        return True


def _failed(host: str, reason: str) -> BadGateway:
    log.warning("gatewayd.outbound.failed", what=_WHAT, host=host, reason=reason)
    return BadGateway(f"the call to {_WHAT} at {host} failed: {reason}")


def _unreachable(host: str) -> BadGateway:
    log.warning("gatewayd.outbound.failed", what=_WHAT, host=host, reason="ConnectError")
    return BadGateway(f"cannot connect to {_WHAT} at {host}")


def _close_sockets(sockets: set[trio.socket.SocketType]) -> None:
    # Outside Trio too (garbage collection, interpreter exit): the descriptors directly.
    for sock in list(sockets):
        try:
            os.close(sock.detach())
        except OSError:
            pass
    sockets.clear()


class AiConnections:
    """Connections to AI backends; ``post`` one call. ``aclose`` closes the idle ones; the
    open ones are closed too when the object is collected or the interpreter exits."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._ssl = ssl_context
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._sockets: set[trio.socket.SocketType] = set()
        self._slots = trio.CapacityLimiter(max_connections)
        weakref.finalize(self, _close_sockets, self._sockets)

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, cap: int, retry: bool = False
    ) -> tuple[int, bytes, bool]:
        """POST ``body`` to ``url``: the answer's status, its body up to ``cap`` bytes, and
        whether there was more. BadGateway when the URL is unusable, the backend cannot be
        reached, or its answer is not HTTP. ``retry``: the request may go again on a fresh
        connection when a reused one ends without a byte of an answer — only for a request
        the backend can recognise as a repeat (an ``Idempotency-Key``): the server may have
        handled it before the connection ended."""
        try:
            target = _parse(url)
        except _InvalidUrl as exc:
            raise _failed("?", str(exc)) from None
        host = target.origin.host
        try:
            request = _request(target, headers, body)
        except _Protocol as exc:
            raise _failed(host, str(exc)) from None
        async with self._slots:
            conn = self._take(target.origin)
            if conn is not None:
                try:
                    return await self._exchange(conn, target, request, cap)
                except _Retry:
                    if not retry:
                        raise _failed(host, "RemoteProtocolError") from None
                    # The server closed it (while idle, most likely): once on a fresh one.
            conn = await self._connect(target.origin)
            try:
                return await self._exchange(conn, target, request, cap)
            except _Retry:
                raise _failed(host, "RemoteProtocolError") from None

    async def _exchange(
        self, conn: _Connection, target: _Target, request: bytes, cap: int
    ) -> tuple[int, bytes, bool]:
        """One request and its answer on ``conn``, which goes back to the idle ones if it
        can carry another, and is closed otherwise (also when cancelled)."""
        host = target.origin.host
        conn.received = 0
        try:
            await conn.stream.send_all(request)
            answer = await _answer(conn, cap)
        except (_Closed, trio.BrokenResourceError):
            self._close(conn)
            if conn.received == 0:
                raise _Retry from None
            raise _failed(host, "RemoteProtocolError") from None
        except _Protocol:
            self._close(conn)
            raise _failed(host, "RemoteProtocolError") from None
        except BaseException:
            self._close(conn)
            raise
        if answer.reusable and not conn.buffer and not _pending(conn.stream):
            self._put(target.origin, conn)
        else:
            self._close(conn)
        return answer.status, answer.body, answer.truncated

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if (
                now - conn.idle_since > KEEPALIVE
                or conn.sock.is_readable()
                or _pending(conn.stream)
            ):
                self._close(conn)  # expired, the server closed it (EOF is readable), or stray bytes
                continue
            return conn
        return None

    def _put(self, origin: _Origin, conn: _Connection) -> None:
        now = conn.idle_since = trio.current_time()
        self._idle.setdefault(origin, deque()).append(conn)
        # Expired ones of every origin go (one no longer called would keep them otherwise).
        for key, idle in list(self._idle.items()):
            while idle and (len(idle) > MAX_IDLE or now - idle[0].idle_since > KEEPALIVE):
                self._close(idle.popleft())
            if not idle:
                del self._idle[key]

    async def _connect(self, origin: _Origin) -> _Connection:
        try:
            tcp = await trio.open_tcp_stream(origin.host, origin.port)
        except OSError:
            raise _unreachable(origin.host) from None
        conn = _Connection(tcp, tcp.socket)
        self._sockets.add(tcp.socket)
        if origin.scheme == "https":
            stream = trio.SSLStream(
                tcp, self._context(), server_hostname=origin.host, https_compatible=True
            )
            conn.stream = stream
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                self._close(conn)
                raise _unreachable(origin.host) from None
            except BaseException:
                self._close(conn)
                raise
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # As the shared client verifies: certifi's roots, nothing from the environment.
            self._ssl = httpx.create_ssl_context(trust_env=False)
        return self._ssl

    def _close(self, conn: _Connection) -> None:
        self._sockets.discard(conn.sock)
        conn.sock.close()

    async def aclose(self) -> None:
        """Close every idle connection (calls still running close theirs when they end)."""
        for idle in self._idle.values():
            while idle:
                self._close(idle.pop())
        self._idle.clear()
        await trio.lowlevel.checkpoint()
