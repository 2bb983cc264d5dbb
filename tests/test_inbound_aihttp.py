"""The AI client's own HTTP/1.1 connections (gatewayd/outbound/aihttp.py), against scripted
servers on loopback: reuse, servers that close, chunked and unframed answers, limits, TLS."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from gatewayd.errors import BadGateway
from gatewayd.outbound.ai import MAX_ANSWER_BYTES, call_ai
from gatewayd.outbound.aihttp import KEEPALIVE, AiConnections

Handler = Callable[["Server", trio.abc.Stream, int], Awaitable[None]]


@attrs.define(eq=False)
class Server:
    """A loopback server whose connections run ``handler`` (with the connection's number)."""

    handler: Handler
    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    #: (connection number, Idempotency-Key) of every request read.
    requests: list[tuple[int, str]] = attrs.Factory(list)

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(self, stream, self.connections)
        except trio.BrokenResourceError:
            pass
        finally:
            self.open_now -= 1
            await trio.aclose_forcefully(stream)

    async def request(self, stream: trio.abc.Stream, number: int, buffer: bytearray) -> bool:
        """Read one request and note its key; False when the client closed the connection."""
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some()
            if not data:
                return False
            buffer += data
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        fields = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
        )
        size = len(head) + 4 + int(fields["Content-Length"])
        while len(buffer) < size:
            buffer += await stream.receive_some()
        del buffer[:size]
        self.requests.append((number, fields.get("Idempotency-Key", "")))
        return True


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith(("transfer-encoding", "connection: close")) for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REPLY = json.dumps({"reply": "hi"}).encode()


async def keep_alive(server: Server, stream: trio.abc.Stream, number: int) -> None:
    buffer = bytearray()
    while await server.request(stream, number, buffer):
        await stream.send_all(answer(REPLY))


async def start(
    nursery: trio.Nursery, handler: Handler, *, tls: ssl.SSLContext | None = None
) -> Server:
    server = Server(handler)
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
    if tls is not None:
        listeners = [trio.SSLListener(one, tls, https_compatible=True) for one in tcp]
    await nursery.start(trio.serve_listeners, server.serve, listeners)
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/agents/a/run"
    return server


async def call(
    connections: AiConnections, url: str, key: str = "m1", timeout: float = 10
) -> str | None:
    found = await call_ai(
        connections, url, api_key="k", payload={"message": "x"}, timeout=timeout, trace_id="t",
        idempotency_key=key,
    )  # fmt: skip
    return found.reply


@pytest.fixture
async def connections() -> AsyncIterator[AiConnections]:
    connections = AiConnections()
    try:
        yield connections
    finally:
        await connections.aclose()


async def test_calls_reuse_one_connection(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """Calls one after another to one origin go over one kept-alive connection."""
    server = await start(nursery, keep_alive)
    for n in range(5):
        assert await call(connections, server.url, f"m{n}") == "hi"
    assert server.connections == 1
    assert [key for _, key in server.requests] == [f"m{n}" for n in range(5)]


async def test_a_connection_idle_too_long_is_not_reused(
    nursery: trio.Nursery, connections: AiConnections, autojump_clock: trio.testing.MockClock
) -> None:
    """After KEEPALIVE seconds idle a connection is closed, and the next call opens one."""
    server = await start(nursery, keep_alive)
    assert await call(connections, server.url, "m0") == "hi"
    await trio.sleep(KEEPALIVE - 1)
    assert await call(connections, server.url, "m1") == "hi"
    await trio.sleep(KEEPALIVE + 1)
    assert await call(connections, server.url, "m2") == "hi"
    assert [number for number, _ in server.requests] == [1, 1, 2]


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    nursery: trio.Nursery, connections: AiConnections, autojump_clock: trio.testing.MockClock
) -> None:
    """A server that answers and closes (without saying so) costs a fresh connection, no error."""

    async def one_then_close(server: Server, stream: trio.abc.Stream, number: int) -> None:
        if await server.request(stream, number, bytearray()):
            await stream.send_all(answer(REPLY))

    server = await start(nursery, one_then_close)
    for n in range(3):
        assert await call(connections, server.url, f"m{n}") == "hi"
        await trio.sleep(0.05)  # the close reaches us while the connection is idle
    assert server.connections == 3


async def test_a_request_the_reused_connection_lost_goes_again_once(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """Closed just as the request went out (no byte of an answer), it goes once more on a fresh
    connection with the same Idempotency-Key; a fresh connection that does it is BadGateway."""

    async def flaky(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            if len(server.requests) in (2, 3):
                return  # drop it without an answer
            await stream.send_all(answer(REPLY))

    server = await start(nursery, flaky)
    assert await call(connections, server.url, "m0") == "hi"
    with pytest.raises(BadGateway, match="127.0.0.1"):
        await call(connections, server.url, "m1")  # reused, dropped; fresh, dropped again
    assert await call(connections, server.url, "m2") == "hi"
    assert [key for _, key in server.requests] == ["m0", "m1", "m1", "m2"]


async def test_chunked_and_unframed_answers_are_read(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """A chunked answer (with a trailer) and one that ends with the connection are both read."""
    reply = json.dumps({"reply": "chunked"}).encode()

    async def chunked(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            if len(server.requests) == 1:
                parts = [reply[:5], reply[5:]]
                body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
                await stream.send_all(
                    answer(body + b"0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked")
                )
            else:
                await stream.send_all(answer(REPLY, "Connection: close"))
                return

    server = await start(nursery, chunked)
    assert await call(connections, server.url) == "chunked"
    assert await call(connections, server.url) == "hi"
    assert server.connections == 1  # the chunked answer left the connection reusable


async def test_an_answer_over_the_cap_is_refused_whatever_its_framing(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """Over MAX_ANSWER_BYTES, chunked or with a length, the answer is BadGateway."""
    huge = b'{"reply": "' + b"x" * MAX_ANSWER_BYTES + b'"}'

    async def big(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            if len(server.requests) % 2:
                parts = [huge[i : i + 65536] for i in range(0, len(huge), 65536)]
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
                await stream.send_all(answer(chunks + b"0\r\n\r\n", "Transfer-Encoding: chunked"))
            else:
                await stream.send_all(answer(huge))

    server = await start(nursery, big)
    for _ in range(2):
        with pytest.raises(BadGateway, match="larger than"):
            await call(connections, server.url)


async def test_a_header_value_that_could_inject_is_refused_unsent(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """A message id with CR/LF (it comes from the network) never reaches the wire."""
    server = await start(nursery, keep_alive)
    with pytest.raises(BadGateway):
        await call(connections, server.url, "m1\r\nX-Injected: yes")
    assert server.connections == 0 and server.requests == []


async def test_calls_in_flight_are_bounded_and_all_answered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """200 calls at once to a slow backend: all answered, never more than the limit open."""
    connections = AiConnections(max_connections=10)

    async def slow(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            await trio.sleep(0.01)
            await stream.send_all(answer(REPLY))

    server = await start(nursery, slow)
    replies: list[str | None] = []

    async def one(n: int) -> None:
        replies.append(await call(connections, server.url, f"m{n}"))

    async with trio.open_nursery() as calls:
        for n in range(200):
            calls.start_soon(one, n)
    assert replies == ["hi"] * 200
    assert server.most_open <= 10 and server.connections <= 10
    await connections.aclose()


async def test_a_cancelled_call_leaves_no_connection_to_reuse(
    nursery: trio.Nursery, connections: AiConnections, autojump_clock: trio.testing.MockClock
) -> None:
    """A call cancelled while the answer was on its way closes its connection."""

    async def late(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            if len(server.requests) == 1:
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{")
                await trio.sleep_forever()
            await stream.send_all(answer(REPLY))

    server = await start(nursery, late)
    with trio.move_on_after(0.2):
        await call(connections, server.url, "m0", timeout=60)
    assert await call(connections, server.url, "m1") == "hi"
    assert server.connections == 2


def _certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_https_is_verified_and_kept_alive(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Over TLS the certificate is checked (a backend the roots do not vouch for is refused)
    and the connection is kept alive like a plain one."""
    key, cert = _certificate(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server = await start(nursery, keep_alive, tls=served)
    with pytest.raises(BadGateway, match="cannot connect"):
        await call(AiConnections(), server.url)  # certifi's roots: a self-signed one fails
    trusting = AiConnections(ssl_context=ssl.create_default_context(cafile=str(cert)))
    for n in range(3):
        assert await call(trusting, server.url, f"m{n}") == "hi"
    assert [key for _, key in server.requests] == ["m0", "m1", "m2"]
    assert server.connections == 2  # the refused handshake, then one kept alive
    await trusting.aclose()


async def test_stray_bytes_after_an_answer_over_tls_never_answer_the_next_call(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A backend that sends more than its answer (here a whole second answer, in its own TLS
    record of the same TCP write) has its connection closed: TLS holds those bytes back from
    the socket, and reusing it would hand them to the next call as its answer."""
    key, cert = _certificate(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    stray = json.dumps({"reply": "stray"}).encode()

    async def chatty(server: Server, stream: trio.abc.Stream, number: int) -> None:
        assert isinstance(stream, trio.SSLStream)
        raw = stream.transport_stream
        assert isinstance(raw, trio.SocketStream)
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            raw.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_CORK, 1)
            await stream.send_all(answer(REPLY))
            await stream.send_all(answer(stray))
            raw.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_CORK, 0)

    server = await start(nursery, chatty, tls=served)
    trusting = AiConnections(ssl_context=ssl.create_default_context(cafile=str(cert)))
    replies = [await call(trusting, server.url, f"m{n}") for n in range(3)]
    await trusting.aclose()
    assert replies == ["hi", "hi", "hi"]
    assert server.connections == 3


async def test_a_request_without_a_key_is_not_sent_twice(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """A reused connection that ends without an answer fails a call without an
    Idempotency-Key at once: the backend may have handled it, and could not tell a repeat."""

    async def drops_the_second(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            if len(server.requests) == 2:
                return
            await stream.send_all(answer(REPLY))

    server = await start(nursery, drops_the_second)
    url = server.url
    assert (await connections.post(url, {}, b"{}", cap=1000))[0] == 200
    with pytest.raises(BadGateway, match="RemoteProtocolError"):
        await connections.post(url, {}, b"{}", cap=1000)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("a status code in other digits", b"HTTP/1.1 \xb200 OK\r\nContent-Length: 2\r\n\r\n{}"),
        ("a negative chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n"),
        ("a chunk size in 0x", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n"),
        ("a signed Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}"),
    ],
)
async def test_malformed_answers_are_bad_gateway_at_once(
    nursery: trio.Nursery, connections: AiConnections, name: str, raw: bytes
) -> None:
    """Numbers a lenient parser would take (Unicode digits, signs, 0x, negatives) are refused
    as not HTTP, at once, never a crash or a wait for bytes that will not come."""

    async def malformed(server: Server, stream: trio.abc.Stream, number: int) -> None:
        if await server.request(stream, number, bytearray()):
            await stream.send_all(raw)
            await trio.sleep_forever()

    server = await start(nursery, malformed)
    with trio.fail_after(5), pytest.raises(BadGateway, match="RemoteProtocolError"):
        await connections.post(server.url, {}, b"{}", cap=1000)


async def test_a_chunk_larger_than_the_cap_is_not_read_past_it(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """A chunk that claims 50 MiB with a 1 KiB cap: the call returns truncated once it has
    the cap, without waiting for (or buffering) the rest, and the connection is not kept."""

    async def huge_chunk(server: Server, stream: trio.abc.Stream, number: int) -> None:
        if await server.request(stream, number, bytearray()):
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            await stream.send_all(head + b"%x\r\n" % (50 * 2**20) + b"x" * 4096)
            await trio.sleep_forever()  # the other 50 MiB never come

    server = await start(nursery, huge_chunk)
    with trio.fail_after(5):
        status, body, truncated = await connections.post(server.url, {}, b"{}", cap=1024)
    assert (status, body, truncated) == (200, b"x" * 1024, True)


async def test_transfer_encoding_with_a_length_is_read_chunked_and_not_kept(
    nursery: trio.Nursery, connections: AiConnections
) -> None:
    """Transfer-Encoding and Content-Length together (a smuggling shape): the body is read
    as chunked, and the connection is not used again."""

    async def both(server: Server, stream: trio.abc.Stream, number: int) -> None:
        buffer = bytearray()
        while await server.request(stream, number, buffer):
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(REPLY), REPLY)
            await stream.send_all(answer(body, "Transfer-Encoding: chunked", "Content-Length: 3"))

    server = await start(nursery, both)
    assert await call(connections, server.url, "m0") == "hi"
    assert await call(connections, server.url, "m1") == "hi"
    assert server.connections == 2
