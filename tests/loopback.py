"""Real HTTP servers on 127.0.0.1 for tests (AI backends, media hosts)."""

from __future__ import annotations

import trio
from starlette.types import ASGIApp

from gatewayd.http.app import hypercorn_config, serve_http


async def serve_app(nursery: trio.Nursery, app: ASGIApp) -> str:
    """Serve ``app`` with hypercorn on an ephemeral loopback port until the nursery ends;
    returns its base URL."""
    binds: list[str] = await nursery.start(
        serve_http, app, hypercorn_config("127.0.0.1", 0, 0.1), trio.sleep_forever
    )
    return binds[0]
