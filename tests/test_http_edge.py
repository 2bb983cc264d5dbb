"""The one-layer HTTP edge (gatewayd/http/middleware.py ``Edge``) and the indexed router
(gatewayd/http/app.py ``IndexedRouter``): what the six layers they replace did, answer by
answer, and that the index never hides a route a path can match."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute

from gatewayd.http.app import IndexedRouter, create_app, hypercorn_config, serve_http
from tests.gateway_fixtures import Running

ORIGIN = "https://dash.example.com"


async def ignores_body(request: Request) -> Response:
    return JSONResponse({"data": "not read"})


async def sets_vary(request: Request) -> Response:
    return JSONResponse({"data": 1}, headers={"Vary": "Accept-Encoding"})


@pytest.fixture
async def client(running: Running, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    """A second server on the running gateway's state, with two test-only routes."""
    extra = [
        Route("/ignores-body", ignores_body, methods=["POST"]),
        Route("/vary", sets_vary),
    ]
    app = create_app(running.gateway.services, running.gateway, extra_routes=extra)
    stop = trio.Event()
    binds = await nursery.start(serve_http, app, hypercorn_config("127.0.0.1", 0, 1.0), stop.wait)
    async with httpx.AsyncClient(base_url=binds[0]) as c:
        yield c
    stop.set()


def allow(running: Running, *origins: str) -> None:
    gateway = running.gateway
    gateway.config = attrs.evolve(
        gateway.config, server=attrs.evolve(gateway.config.server, cors_origins=list(origins))
    )


async def test_a_preflight_answer_carries_only_its_own_cors_headers(
    client: httpx.AsyncClient, running: Running
) -> None:
    """204 with the allowed methods and headers, one Vary, no expose header, no close; the
    security headers and the trace id as on every answer."""
    allow(running, ORIGIN)
    r = await client.options(
        "/health", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers.get_list("vary") == ["Origin"]
    assert "access-control-expose-headers" not in r.headers
    assert "connection" not in r.headers
    assert r.headers["access-control-max-age"] == "600"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert len(r.headers["x-request-id"]) == 32
    r = await client.options(
        "/api/v1/sessions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key, x-evil",
        },
    )
    assert r.status_code == 403
    assert r.json()["success"] is False and r.json()["error"]["code"] == "CORS_REJECTED"
    assert "x-evil" in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers


async def test_cors_headers_join_a_route_own_vary(
    client: httpx.AsyncClient, running: Running
) -> None:
    """An allowed origin adds Origin to the Vary the route set, and exposes X-Request-ID."""
    allow(running, "*")
    r = await client.get("/vary", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-expose-headers"] == "X-Request-ID"
    assert r.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    r = await client.get("/vary")
    assert r.headers.get_list("vary") == ["Accept-Encoding"]
    assert "access-control-allow-origin" not in r.headers


async def test_an_answer_before_the_body_was_read_closes_the_connection(
    client: httpx.AsyncClient,
) -> None:
    """A handler that never reads the body, and a 404 before any handler: Connection: close.
    A body read to its end, or none at all: the connection stays open."""
    r = await client.post("/ignores-body", content=b"x" * 100)
    assert r.status_code == 200 and r.headers["connection"] == "close"
    r = await client.post("/nope", content=b"x" * 100)
    assert r.status_code == 404 and r.headers["connection"] == "close"
    r = await client.post("/ignores-body")
    assert r.status_code == 200 and "connection" not in r.headers
    r = await client.post("/sessions", json={"agentId": 5})
    assert r.status_code == 400 and "connection" not in r.headers


async def test_a_405_keeps_its_allow_header(client: httpx.AsyncClient) -> None:
    r = await client.delete("/health")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_errors_are_counted_by_route_status_and_code(client: httpx.AsyncClient) -> None:
    """Answers are counted with their real status under their route template, once each;
    error codes in whatsapp_errors_total."""
    for _ in range(3):
        await client.get("/sessions/nobody")
    await client.get("/health")
    families = {
        f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)
    }
    counted = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["gatewayd_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert counted[("/sessions/{agent_id}", "404")] == 3
    assert counted[("/health", "200")] == 1
    codes = {s.labels["code"]: s.value for s in families["whatsapp_errors"].samples}
    assert codes["SESSION_NOT_FOUND"] == 3


def _paths(route: BaseRoute) -> list[str]:
    """Paths near a route's template: its parameters filled in, with and without a trailing
    slash, one segment more and one less."""
    template = getattr(route, "path", "/")
    filled = "/".join("x" if "{" in part else part for part in template.split("/")) or "/"
    trimmed = filled.rstrip("/")
    return [filled, trimmed + "/", trimmed + "/more", filled.rsplit("/", 1)[0] or "/"]


def offers_every_match(router: IndexedRouter, paths: set[str]) -> None:
    """For each path, the routes the index offers include every route that matches it,
    fully or partly, in the routes' order: so the router picks what a walk through all
    routes would."""
    for path in sorted(paths):
        offered = router._candidates(path)
        for kind in ("http", "websocket"):
            for method in ("GET", "POST", "DELETE"):
                scope = {"type": kind, "path": path, "root_path": "", "method": method}
                matching = [r for r in router.routes if r.matches(scope)[0] is not Match.NONE]
                assert [r for r in offered if r in matching] == matching, (path, kind, method)
        positions = [router.routes.index(r) for r in offered]
        assert positions == sorted(positions), path


async def test_the_index_never_hides_a_route_a_path_matches(running: Running) -> None:
    """Paths near every route of the daemon, and a few beside them."""
    app = create_app(running.gateway.services, running.gateway)
    router = app.router
    assert isinstance(router, IndexedRouter)
    paths = {p for route in router.routes for p in _paths(route)}
    paths |= {"/", "/api", "/api/v1", "/nope", "//double", "/api/v1/sessions/x/y/z/w", ""}
    assert len(paths) > 100
    offers_every_match(router, paths)
    # It does narrow: a 404 under /agents tries a handful of routes, not all of them.
    assert len(router._candidates("/agents/nobody/nothing")) < len(router.routes) / 5


def test_the_index_keeps_routes_in_any_order() -> None:
    """Parameters before literals, literals before parameters, mounts, WebSocket routes, a
    parameter first, the root, a trailing slash."""

    async def endpoint(request: Request) -> Response:
        return Response()

    router = IndexedRouter(
        [
            Route("/a/{x}", endpoint),
            Route("/a/b", endpoint, methods=["POST"]),
            Route("/a/b/{y}", endpoint),
            Route("/a/b/c/", endpoint),
            Mount("/m", app=endpoint),
            Route("/m/inside", endpoint),
            WebSocketRoute("/ws/{id}", endpoint),
            Route("/{any}/z", endpoint),
            Route("/", endpoint),
            Route("/a/{x}/{y:path}", endpoint),
            Route("/file-{name}.png", endpoint),
        ]
    )
    paths = {p for route in router.routes for p in _paths(route)}
    paths |= {"/a/b/c", "/a/q/z", "/m", "/m/", "/m/x/y", "/ws/1", "/ws/1/", "/file-x.png"}
    offers_every_match(router, paths)


async def test_serving_collects_the_young_generation_less_often(
    client: httpx.AsyncClient,
) -> None:
    """Once a server runs, young collections wait for GC_YOUNG_THRESHOLD allocations."""
    import gc

    from gatewayd.http.app import GC_YOUNG_THRESHOLD

    assert (await client.get("/health")).status_code == 200
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
