"""How the daemon serves the dashboard (gatewayd/http/routes_dashboard.py): the app at ``/``
and its client-side routes, hashed assets cached for good and gzipped, its own CSP, and the
daemon's own paths never shadowed.

The routing tests serve a small build of their own (a directory laid out as ``vite build``
lays it out); the last ones read the real build that ``make test`` makes before pytest.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from gatewayd.http.app import create_app, hypercorn_config, serve_http
from gatewayd.http.routes_dashboard import (
    CSP,
    IMMUTABLE,
    Dashboard,
    accepts_gzip,
    is_reserved,
    static_root,
)
from tests.gateway_fixtures import Running

INDEX = (
    '<!doctype html><html><head><script type="module" src="/assets/index-Ab12Cd34.js">'
    '</script></head><body><div id="root"></div></body></html>'
)
SCRIPT = "console.log('dashboard');\n" * 200


def make_build(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "assets" / "index-Ab12Cd34.js").write_text(SCRIPT)
    (root / "assets" / "logo-Zz99.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 3000)
    return root


async def serve(
    running: Running, nursery: trio.Nursery, dashboard: Dashboard
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(running.gateway.services, running.gateway, dashboard=dashboard)
    stop = trio.Event()
    binds = await nursery.start(serve_http, app, hypercorn_config("127.0.0.1", 0, 1.0), stop.wait)
    # httpx asks for gzip by default; the tests say what they accept.
    async with httpx.AsyncClient(base_url=binds[0], headers={"Accept-Encoding": "identity"}) as c:
        yield c
    stop.set()


@pytest.fixture
async def client(
    running: Running, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(running, nursery, Dashboard(make_build(tmp_path / "static"))):
        yield c


@pytest.mark.parametrize(
    "path",
    ["/", "/login", "/dashboard", "/analytics/1b0e", "/session/abc", "/keys", "/no/such/page"],
)
async def test_client_side_routes_get_the_app(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert r.text == INDEX
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-security-policy"] == CSP


async def test_head_of_a_page_answers_without_a_body(client: httpx.AsyncClient) -> None:
    r = await client.head("/dashboard")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-security-policy"] == CSP


async def test_the_app_csp_allows_only_this_origin(client: httpx.AsyncClient) -> None:
    """No inline script or style, nothing from another origin; images also from data: (the
    QR), and the page cannot be framed."""
    policy = dict(
        (d.split(" ", 1)[0], d.split(" ", 1)[1]) for d in (p.strip() for p in CSP.split(";"))
    )
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["img-src"] == "'self' data:"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP and "http" not in CSP and "*" not in CSP


async def test_hashed_assets_are_immutable_and_gzipped_on_request(
    client: httpx.AsyncClient,
) -> None:
    plain = await client.get("/assets/index-Ab12Cd34.js")
    assert plain.status_code == 200
    assert plain.text == SCRIPT
    assert plain.headers["cache-control"] == IMMUTABLE
    assert plain.headers["content-type"].startswith("text/javascript")
    assert "content-encoding" not in plain.headers

    packed = await client.get(
        "/assets/index-Ab12Cd34.js", headers={"Accept-Encoding": "br, gzip;q=0.8"}
    )
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) < len(SCRIPT) / 10
    assert packed.text == SCRIPT  # httpx undid the gzip

    refused = await client.get("/assets/index-Ab12Cd34.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers

    image = await client.get("/assets/logo-Zz99.png", headers={"Accept-Encoding": "gzip"})
    assert image.headers["content-type"] == "image/png"
    assert "content-encoding" not in image.headers  # already compressed: sent as it is


@pytest.mark.parametrize(
    "path", ["/assets/missing-1234.js", "/assets/..%2Findex.html", "/assets/.hidden"]
)
async def test_unknown_assets_are_a_json_404_not_the_app(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_top_level_files_of_the_build_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/favicon.svg")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert r.text.startswith("<svg")


@pytest.mark.parametrize(
    ("method", "path", "status", "dialect"),
    [
        ("GET", "/api/v1/nope", 404, "v1"),
        ("GET", "/api/v1/sessions/not-a-uuid", 401, "v1"),
        ("GET", "/api", 404, "agents"),
        ("GET", "/sessions/nobody/nothing", 404, "agents"),
        ("GET", "/agents/a1/messages", 405, "agents"),  # a POST-only route keeps its 405
        ("GET", "/_sim/agents/a1/qr", 404, "agents"),  # no sim in this app
        ("GET", "/media/1/2/3/4", 404, "agents"),
        ("GET", "/ws/elsewhere", 404, "agents"),
        ("GET", "/docs/nothing", 404, "agents"),
        ("POST", "/dashboard", 404, "agents"),  # only GET and HEAD reach the app
        ("DELETE", "/", 404, "agents"),
    ],
)
async def test_the_daemon_paths_are_never_shadowed(
    client: httpx.AsyncClient, method: str, path: str, status: int, dialect: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == status
    body = r.json()
    assert ("success" in body) == (dialect == "v1")
    assert body["error"]["code"]


async def test_the_daemon_own_pages_keep_their_answers(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["status"] in ("ok", "degraded")
    assert "gatewayd_" in (await client.get("/metrics")).text
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")
    docs = await client.get("/docs")
    assert "<h1" in docs.text and docs.headers["content-security-policy"] != CSP


def test_reserved_prefixes_end_at_a_path_boundary() -> None:
    assert is_reserved("/api") and is_reserved("/api/v1/x") and is_reserved("/sessions/1")
    assert is_reserved("/openapi.json") and is_reserved("/_sim/agents")
    assert not is_reserved("/apiary") and not is_reserved("/sessionsboard")
    assert not is_reserved("/session/1") and not is_reserved("/") and not is_reserved("/login")


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.5", True),
        ("*", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("identity", False),
        ("", False),
        ("x-gzip-ish", False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


async def test_an_unbuilt_checkout_says_how_to_build(
    running: Running, nursery: trio.Nursery, tmp_path: Path
) -> None:
    async for client in serve(running, nursery, Dashboard(tmp_path / "nothing-here")):
        r = await client.get("/dashboard")
        assert r.status_code == 404
        assert "make run" in r.text and "npm run build" in r.text
        assert (await client.get("/health")).status_code == 200


# -------------------------------------------------------------------- the real build

BUDGET = 500 * 1024  # seed 003's "< 500KB gzipped"


def built() -> Path:
    root = Path(str(static_root()))
    assert (root / "index.html").is_file(), (
        "the dashboard is not built: `make test` builds it (cd dashboard && npm ci && npm run build)"
    )
    return root


def test_the_real_build_has_no_inline_script_or_style_and_only_local_urls() -> None:
    index = (built() / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.S)
    assert scripts, "the page loads its script"
    for attributes, text in scripts:
        assert 'src="/assets/' in attributes and text.strip() == ""
    assert "<style" not in index and " style=" not in index
    for url in re.findall(r'(?:src|href)="([^"]+)"', index):
        assert url.startswith("/"), url
    # Content-hashed names: a new build is a new URL, so immutable caching is safe.
    for name in re.findall(r'"/assets/([^"]+)"', index):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+-[A-Za-z0-9_-]{8,}\.(js|css)", name), name


def test_the_real_build_keeps_the_seed_budget() -> None:
    total = sum(
        len(gzip.compress(f.read_bytes(), compresslevel=9))
        for f in built().rglob("*")
        if f.is_file()
    )
    assert 0 < total < BUDGET, f"{total} bytes gzipped"
