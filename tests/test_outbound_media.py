"""The address guard and media fetching against real servers on loopback; base64 and sniffing."""

from __future__ import annotations

import base64
import io
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import httpx
import pytest
import trio
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gatewayd.errors import AddressRefused, BadGateway, InvalidPayload, MediaTooLarge
from gatewayd.outbound.guard import check_url, refusal_reason
from gatewayd.outbound.media import decode_base64_media, fetch_media, sniff_image
from tests.loopback import serve_app

MB = 1024 * 1024
LOOPBACK_ONLY = [ipaddress.ip_network("127.0.0.1/32")]


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


# --- the address guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://localhost:8080/x", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
        ("https://192.0.2.1/", "reserved"),
        ("http://[::1]/", "loopback"),
        ("http://[::]/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback (as IPv6)"),
        ("http://[::ffff:169.254.169.254]/", "link-local (as IPv6)"),
        ("http://[::ffff:10.0.0.1]/", "private (as IPv6)"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local (as IPv6)"),
        ("http://[2002:7f00:1::]/", "loopback (as IPv6)"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://[ff02::1]/", "multicast"),
    ],
)
async def test_guard_refuses_non_public_addresses(url: str, reason: str) -> None:
    """A URL resolving to loopback, private, link-local or other non-public space is refused."""
    with pytest.raises(AddressRefused) as caught:
        await check_url(url, allow_private=False)
    assert reason in caught.value.message
    assert httpx.URL(url).host in caught.value.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/x", "http://localhost/", "http://[::1]/", "http://169.254.169.254/"],
)
async def test_guard_allows_private_when_configured(url: str) -> None:
    """With allow_private every resolvable address passes and the checked addresses are kept."""
    checked = await check_url(url, allow_private=True)
    assert checked.host == httpx.URL(url).host
    assert checked.addresses


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://93.184.216.34/img.png", "93.184.216.34"),
        ("https://[2606:4700:4700::1111]/a", "2606:4700:4700::1111"),
        ("http://[::ffff:8.8.8.8]/", "::ffff:808:808"),
    ],
)
async def test_guard_allows_public_addresses(url: str, address: str) -> None:
    """Public addresses pass without any configuration."""
    checked = await check_url(url, allow_private=False)
    assert [str(a) for a in checked.addresses] == [address]


async def test_guard_allowed_networks_open_only_themselves() -> None:
    """allowed_networks admits the addresses inside them and nothing else."""
    await check_url("http://127.0.0.1:9/", allow_private=False, allowed_networks=LOOPBACK_ONLY)
    with pytest.raises(AddressRefused, match="127.0.0.2"):
        await check_url("http://127.0.0.2:9/", allow_private=False, allowed_networks=LOOPBACK_ONLY)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/a.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "//x.org/a",
        "http://",
    ],
)
async def test_guard_refuses_other_schemes_and_malformed_urls(url: str) -> None:
    """Only http and https URLs with a host are accepted; others are the client's 400."""
    with pytest.raises(InvalidPayload):
        await check_url(url, allow_private=True)


async def test_guard_message_names_the_host_not_the_credentials() -> None:
    """A refusal names the host and leaves out credentials and the query."""
    with pytest.raises(AddressRefused) as caught:
        await check_url("http://admin:hunter2@10.0.0.1/x?token=abc", allow_private=False)
    assert "10.0.0.1" in caught.value.message
    assert "hunter2" not in caught.value.message and "token" not in caught.value.message


def test_refusal_reason_of_embedded_public_address_is_none() -> None:
    """IPv6 forms of public IPv4 addresses are public."""
    for text in ("::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"):
        assert refusal_reason(ipaddress.ip_address(text)) is None


# --- media over HTTP: a well-behaved server ------------------------------------------


async def host_echo(request: Request) -> Response:
    return PlainTextResponse(request.headers["host"])


async def hop(request: Request) -> Response:
    n = int(request.path_params["n"])
    return RedirectResponse("/img.png" if n <= 1 else f"/hop/{n - 1}", status_code=302)


APP = Starlette(
    routes=[
        Route("/img.png", lambda r: Response(PNG, media_type="image/png; charset=binary")),
        Route(
            "/download",
            lambda r: Response(
                JPEG,
                media_type="image/jpeg",
                headers={"content-disposition": 'attachment; filename="../../etc/photo.jpg"'},
            ),
        ),
        Route("/hop/{n}", hop),
        Route("/host", host_echo),
        Route(
            "/to-metadata", lambda r: RedirectResponse("http://169.254.169.254/latest/meta-data/")
        ),
        Route("/to-ftp", lambda r: RedirectResponse("ftp://127.0.0.1/x.png")),
        Route("/missing", lambda r: PlainTextResponse("no", status_code=404)),
    ]
)


@pytest.fixture
async def base(nursery: trio.Nursery) -> str:
    """Serves APP on an ephemeral loopback port; returns its base URL."""
    return await serve_app(nursery, APP)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client like the daemon's shared one, ignoring proxy settings of the environment."""
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


async def test_fetch_happy_path(client: httpx.AsyncClient, base: str) -> None:
    """An image is downloaded with its media type and the file name from the URL."""
    media = await fetch_media(client, f"{base}/img.png", max_bytes=10 * MB, allow_private=True)
    assert (media.data, media.content_type, media.filename) == (PNG, "image/png", "img.png")
    assert sniff_image(media.data) == "image/png"


async def test_fetch_takes_a_safe_filename_from_content_disposition(
    client: httpx.AsyncClient, base: str
) -> None:
    """Content-Disposition names the file; directory parts are dropped."""
    media = await fetch_media(client, f"{base}/download", max_bytes=MB, allow_private=True)
    assert (media.data, media.content_type, media.filename) == (JPEG, "image/jpeg", "photo.jpg")


async def test_fetch_connects_to_the_checked_address_with_the_original_host(
    client: httpx.AsyncClient, base: str
) -> None:
    """A request pinned to the checked IP still carries the URL's host name in Host."""
    port = httpx.URL(base).port
    media = await fetch_media(
        client, f"http://localhost:{port}/host", max_bytes=MB, allow_private=True
    )
    assert media.data == f"localhost:{port}".encode()


async def test_fetch_size_exactly_at_the_limit_passes(client: httpx.AsyncClient, base: str) -> None:
    """A body of exactly max_bytes is accepted; with a limit one byte lower it is refused."""
    media = await fetch_media(client, f"{base}/img.png", max_bytes=len(PNG), allow_private=True)
    assert media.data == PNG
    with pytest.raises(MediaTooLarge, match=f"limit of {len(PNG) - 1} bytes"):
        await fetch_media(client, f"{base}/img.png", max_bytes=len(PNG) - 1, allow_private=True)


async def test_fetch_follows_up_to_five_redirects(client: httpx.AsyncClient, base: str) -> None:
    """Five redirects are followed; a sixth is BadGateway."""
    media = await fetch_media(client, f"{base}/hop/5", max_bytes=MB, allow_private=True)
    assert media.data == PNG
    with pytest.raises(BadGateway, match="more than 5"):
        await fetch_media(client, f"{base}/hop/6", max_bytes=MB, allow_private=True)


async def test_redirect_to_metadata_address_is_refused(
    client: httpx.AsyncClient, base: str
) -> None:
    """A redirect from an allowed host to the cloud metadata address is refused at that hop."""
    with pytest.raises(AddressRefused, match=r"169\.254\.169\.254.*link-local"):
        await fetch_media(
            client,
            f"{base}/to-metadata",
            max_bytes=MB,
            allow_private=False,
            allowed_networks=LOOPBACK_ONLY,
        )


async def test_first_hop_to_private_address_is_refused(
    client: httpx.AsyncClient, base: str
) -> None:
    """Without allow_private a loopback URL is refused before connecting."""
    with pytest.raises(AddressRefused, match="loopback"):
        await fetch_media(client, f"{base}/img.png", max_bytes=MB, allow_private=False)


@pytest.mark.parametrize(("path", "match"), [("/missing", "HTTP 404"), ("/to-ftp", "unusable URL")])
async def test_bad_upstream_answers_are_bad_gateway(
    client: httpx.AsyncClient, base: str, path: str, match: str
) -> None:
    """A non-2xx answer or a redirect to a non-HTTP URL is BadGateway."""
    with pytest.raises(BadGateway, match=match):
        await fetch_media(client, f"{base}{path}", max_bytes=MB, allow_private=True)


async def test_connection_refused_is_bad_gateway(client: httpx.AsyncClient) -> None:
    """Nobody listening is BadGateway naming the host."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BadGateway, match="cannot connect to the media server at 127.0.0.1"):
        await fetch_media(
            client, f"http://127.0.0.1:{port}/x.png", max_bytes=MB, allow_private=True
        )


# --- media over HTTP: misbehaving raw servers ----------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(nursery: trio.Nursery, handler: Handler) -> str:
    """Serves ``handler`` on raw TCP on an ephemeral loopback port; returns its base URL."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def read_request_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def test_declared_size_is_refused_before_reading_the_body(
    client: httpx.AsyncClient, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A Content-Length over the limit refuses at once, without reading the body, and hangs up."""
    hung_up = trio.Event()

    async def huge_then_stall(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 50000000\r\n\r\n"
        )
        await stream.send_all(PNG[:16])  # the rest never comes
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # a reset: the client closed with our bytes unread
        hung_up.set()

    url = await serve_raw(nursery, huge_then_stall)
    start = trio.current_time()
    with pytest.raises(MediaTooLarge, match="50000000 bytes, over the limit of 1048576 bytes"):
        await fetch_media(client, f"{url}/big.png", max_bytes=MB, allow_private=True, timeout=30)
    assert trio.current_time() == start  # not a virtual second spent reading
    with trio.fail_after(1):
        await hung_up.wait()


async def send_forever(
    stream: trio.SocketStream, head: bytes, chunk: bytes, stopped: trio.Event
) -> None:
    await read_request_head(stream)
    try:
        await stream.send_all(head)
        while True:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        stopped.set()


@pytest.mark.parametrize(
    ("head", "frame"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            lambda b: b"%x\r\n%b\r\n" % (len(b), b),
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", lambda b: b),
    ],
    ids=["chunked", "close-delimited"],
)
async def test_size_is_enforced_while_streaming_an_endless_body(
    client: httpx.AsyncClient, nursery: trio.Nursery, head: bytes, frame: Callable[[bytes], bytes]
) -> None:
    """An endless body without a length is cut off past the limit and the connection dropped."""
    stopped = trio.Event()
    url = await serve_raw(
        nursery, partial(send_forever, head=head, chunk=frame(b"x" * 16384), stopped=stopped)
    )
    with pytest.raises(MediaTooLarge, match="over the limit of 100000 bytes"):
        await fetch_media(
            client, f"{url}/endless", max_bytes=100_000, allow_private=True, timeout=10
        )
    with trio.fail_after(5):
        await stopped.wait()


async def test_body_shorter_than_declared_is_bad_gateway(
    client: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    """A server that declares more than it sends and closes is BadGateway, not truncated media."""

    async def short_body(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + PNG[:100])
        await stream.aclose()

    url = await serve_raw(nursery, short_body)
    with pytest.raises(BadGateway, match="RemoteProtocolError"):
        await fetch_media(client, f"{url}/short.png", max_bytes=MB, allow_private=True)


async def test_silent_server_times_out_at_the_deadline(
    client: httpx.AsyncClient, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A server that never answers is BadGateway exactly when the whole-download timeout ends."""

    async def never_answer(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await trio.sleep_forever()

    url = await serve_raw(nursery, never_answer)
    start = trio.current_time()
    with pytest.raises(BadGateway, match="within 30 s"):
        await fetch_media(client, f"{url}/slow.png", max_bytes=MB, allow_private=True, timeout=30)
    assert trio.current_time() == start + 30


# --- base64 and sniffing -------------------------------------------------------------

B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "data",
    [
        B64,
        f"data:image/png;base64,{B64}",
        f"DATA:image/jpeg;name=x.png;base64,{B64}",
        "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76)),
        f"  {B64}  ",
        base64.urlsafe_b64encode(PNG).decode().rstrip("="),
    ],
    ids=["plain", "data-url", "data-url-params", "wrapped", "padded-spaces", "urlsafe-unpadded"],
)
def test_decode_base64_accepts(data: str) -> None:
    """Plain, data-URL, line-wrapped and URL-safe unpadded base64 decode to the same bytes."""
    assert decode_base64_media(data, max_bytes=MB) == PNG


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "data is empty"),
        ("   \n", "data is empty"),
        ("data:image/png;base64,", "data is empty"),
        ("not base64!", "not valid base64"),
        ("QUJD*", "not valid base64"),
        ("QUJDR", "truncated"),
        ("data:image/png,rawbytes", "not base64-encoded"),
    ],
)
def test_decode_base64_refuses(data: str, message: str) -> None:
    """Empty, malformed or non-base64 data is InvalidPayload saying which."""
    with pytest.raises(InvalidPayload, match=message):
        decode_base64_media(data, max_bytes=MB)


def test_decode_base64_refuses_non_strings() -> None:
    """A JSON number or object where base64 is expected is InvalidPayload."""
    with pytest.raises(InvalidPayload, match="must be a base64 string"):
        decode_base64_media(12345, max_bytes=MB)  # type: ignore[arg-type]


def test_decode_base64_size_limit() -> None:
    """Exactly max_bytes decodes; one byte more is MediaTooLarge."""
    data = bytes(range(256)) * 4
    assert decode_base64_media(base64.b64encode(data).decode(), max_bytes=len(data)) == data
    with pytest.raises(MediaTooLarge, match=f"limit of {len(data) - 1} bytes"):
        decode_base64_media(base64.b64encode(data).decode(), max_bytes=len(data) - 1)


def test_decode_base64_size_is_judged_before_decoding() -> None:
    """An oversized string is MediaTooLarge from its length alone, even when it is not base64."""
    with pytest.raises(MediaTooLarge):
        decode_base64_media("!" * 2000, max_bytes=1000)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (image_bytes("GIF"), "image/gif"),
        (image_bytes("WEBP"), "image/webp"),
        (b"%PDF-1.7\n", None),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"RIFF", None),
        (b"\x89PNG", None),
        (b"", None),
        (b"hello", None),
    ],
)
def test_sniff_image(data: bytes, kind: str | None) -> None:
    """Images are recognised by their magic bytes; anything else is None whatever it claims."""
    assert sniff_image(data) == kind


async def test_failure_message_leaves_out_credentials_and_query(client: httpx.AsyncClient) -> None:
    """A failed fetch's message (what a client reads) names the host, never the URL's secrets."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://alice:pa55word@127.0.0.1:{port}/x.png?token=t0ps3cret"
    with pytest.raises(BadGateway) as caught:
        await fetch_media(client, url, max_bytes=MB, allow_private=True)
    message = str(caught.value.message)
    assert "127.0.0.1" in message
    for secret in ("alice", "pa55word", "t0ps3cret"):
        assert secret not in message
