"""The dashboard: the web app of ``dashboard/``, built into ``gatewayd/static/``, served at ``/``.

- ``/assets/<name>`` are the build's content-hashed files: cached for a year, ``immutable``,
  and sent gzipped to a client that accepts it (compressed once, kept in memory: the whole
  build is well under a megabyte).
- Any other GET or HEAD that no route answers and that is not under a path the daemon's own
  interfaces own (``RESERVED``) is a client-side route of the app: it gets ``index.html``,
  never cached, so a new build is picked up at the next load. Under ``RESERVED`` nothing is
  shadowed: an unknown API path keeps its dialect's JSON 404, a wrong method its 405.
- Every answer from here carries the app's own Content-Security-Policy (``CSP``): script,
  style, fetch and WebSocket only from this origin, images also from ``data:`` (the QR), no
  inline script or style. The rest of the daemon keeps ``default-src 'none'``.

A checkout whose app was never built answers ``/`` with a short page saying how to build it.
"""

from __future__ import annotations

import gzip
import mimetypes
import re
from collections.abc import Mapping
from importlib import resources
from importlib.abc import Traversable

import attrs
import trio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths the daemon's interfaces own; the app's client-side routes never use them.
RESERVED = (
    "/api",
    "/ws",
    "/sessions",
    "/agents",
    "/health",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/media",
    "/_sim",
    "/assets",
)

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

IMMUTABLE = "public, max-age=31536000, immutable"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
#: Worth compressing; images and fonts already are.
_COMPRESSIBLE = (".js", ".css", ".html", ".svg", ".json", ".txt")

NOT_BUILT = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>gatewayd</title>
<h1>gatewayd</h1>
<p>The dashboard is not built in this checkout. <code>make run</code> builds it
(<code>cd dashboard &amp;&amp; npm ci &amp;&amp; npm run build</code> does too); the API is served
regardless: see <a href="/docs">/docs</a>.</p>
</html>
"""


def is_reserved(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in RESERVED)


@attrs.frozen
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str


def _media_type(name: str) -> str:
    suffix = name[name.rfind(".") :] if "." in name else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _asset(file: Traversable) -> Asset:
    body = file.read_bytes()
    packed = None
    if file.name.endswith(_COMPRESSIBLE) and len(body) > 1024:
        packed = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(body, packed, _media_type(file.name))


@attrs.frozen
class Build:
    """What the static directory held when it was first read."""

    index: bytes | None
    top: Mapping[str, Asset]  # files beside index.html: favicon.svg, …
    assets: Mapping[str, Asset]  # assets/<hashed name>


def read_build(root: Traversable) -> Build:
    """Read the built app under ``root`` (blocking: run it in a thread)."""
    index = root / "index.html"
    if not index.is_file():
        return Build(None, {}, {})
    top = {f.name: _asset(f) for f in root.iterdir() if f.is_file() and f.name != "index.html"}
    folder = root / "assets"
    assets = {f.name: _asset(f) for f in folder.iterdir() if f.is_file()} if folder.is_dir() else {}
    return Build(index.read_bytes(), top, assets)


def static_root() -> Traversable:
    return resources.files("gatewayd") / "static"


class Dashboard:
    """The built app, read once on first use."""

    def __init__(self, root: Traversable | None = None) -> None:
        self.root = root if root is not None else static_root()
        self._build: Build | None = None
        self._lock = trio.Lock()

    async def build(self) -> Build:
        if self._build is None:
            async with self._lock:
                if self._build is None:
                    self._build = await trio.to_thread.run_sync(read_build, self.root)
        return self._build

    async def asset(self, scope: Scope, name: str) -> Response:
        found = (await self.build()).assets.get(name) if _NAME.fullmatch(name) else None
        if found is None:
            raise HTTPException(status_code=404)
        return _send(scope, found, IMMUTABLE)

    async def page(self, scope: Scope) -> Response:
        """A top-level file of the build, or ``index.html`` for a client-side route."""
        build = await self.build()
        if build.index is None:
            return HTMLResponse(NOT_BUILT, status_code=404, headers=_headers("no-cache"))
        name = scope["path"].lstrip("/")
        found = build.top.get(name)
        if found is not None:
            return _send(scope, found, "public, max-age=3600")
        page = Asset(build.index, None, _TYPES[".html"])
        return _send(scope, page, "no-cache")

    def fallback(self, not_found: ASGIApp) -> ASGIApp:
        """The router's default: the app for GET and HEAD outside ``RESERVED``, else
        ``not_found`` (the daemon's JSON 404)."""

        async def default(scope: Scope, receive: Receive, send: Send) -> None:
            if (
                scope["type"] == "http"
                and scope["method"] in ("GET", "HEAD")
                and not is_reserved(scope["path"])
            ):
                response = await self.page(scope)
                await response(scope, receive, send)
                return
            await not_found(scope, receive, send)

        return default


def accepts_gzip(accept_encoding: str) -> bool:
    """``gzip`` (or ``*``) listed in ``Accept-Encoding`` without ``q=0``."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params.strip().startswith("q=") and q.strip("0.") == "")
    return False


def _headers(cache: str) -> dict[str, str]:
    return {"Cache-Control": cache, "Content-Security-Policy": CSP, "Vary": "Accept-Encoding"}


def _send(scope: Scope, asset: Asset, cache: str) -> Response:
    headers = _headers(cache)
    if asset.gzipped is not None and accepts_gzip(Headers(scope=scope).get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def dashboard_routes(dashboard: Dashboard) -> list[BaseRoute]:
    async def asset(request: Request) -> Response:
        return await dashboard.asset(request.scope, request.path_params["name"])

    return [Route("/assets/{name}", asset, methods=["GET", "HEAD"])]
