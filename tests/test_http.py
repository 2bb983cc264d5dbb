"""The HTTP skeleton: middleware stack, error dialects, /health, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
import trio
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.http.app import create_app, hypercorn_config, serve_http
from gatewayd.http.request import read_json
from tests.gateway_fixtures import Running


async def echo_json(request: Request) -> Response:
    body = await read_json(request)
    return JSONResponse({"data": body})


async def boom(request: Request) -> Response:
    raise RuntimeError("secret internal detail")


async def slow(request: Request) -> Response:
    await trio.sleep(float(request.query_params.get("s", "1")))
    return JSONResponse({"data": "done"})


EXTRA = [
    Route("/echo", echo_json, methods=["POST"]),
    Route("/api/v1/echo", echo_json, methods=["POST"]),
    Route("/boom", boom),
    Route("/api/v1/boom", boom),
    Route("/items/{item_id}", slow),
]


@pytest.fixture
async def client(running: Running, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    """A second server on the running gateway's state, with a few test-only routes."""
    app = create_app(running.gateway.services, running.gateway, extra_routes=EXTRA)
    stop = trio.Event()
    binds = await nursery.start(serve_http, app, hypercorn_config("127.0.0.1", 0, 1.0), stop.wait)
    async with httpx.AsyncClient(base_url=binds[0]) as c:
        yield c
    stop.set()


async def test_unknown_route_is_404_in_both_dialects(client: httpx.AsyncClient) -> None:
    """Unknown routes answer 404 in the agents shape, and in the /api/v1 shape under /api/v1.
    (A GET elsewhere is the dashboard's: tests/test_dashboard_http.py.)"""
    r = await client.post("/nope")
    assert r.status_code == 404
    body = r.json()
    assert body == {
        "error": {"code": "NOT_FOUND", "message": "Not found", "traceId": r.headers["x-request-id"]}
    }
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json() == {
        "success": False,
        "error": {
            "code": "NOT_FOUND",
            "message": "Not found",
            "traceId": r.headers["x-request-id"],
        },
    }


async def test_wrong_method_is_405_in_the_error_shape(client: httpx.AsyncClient) -> None:
    """A known path with the wrong method is 405 METHOD_NOT_ALLOWED."""
    r = await client.get("/echo")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_bad_json_is_400_invalid_payload(client: httpx.AsyncClient) -> None:
    """Malformed JSON and non-object JSON are 400 INVALID_PAYLOAD with a reason."""
    r = await client.post(
        "/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "INVALID_PAYLOAD"
    assert "not valid JSON" in error["message"]
    r = await client.post("/api/v1/echo", content=b"[1, 2]")
    assert r.status_code == 400
    assert r.json()["success"] is False
    assert r.json()["error"]["message"] == "Request body must be a JSON object"
    r = await client.post("/echo", json={"a": 1})
    assert r.status_code == 200 and r.json() == {"data": {"a": 1}}


async def test_body_over_limit_is_413_by_length_and_while_streaming(
    client: httpx.AsyncClient, running: Running
) -> None:
    """Bodies over server.body_limit are refused by Content-Length and when chunked."""
    import attrs

    gateway = running.gateway
    gateway.config = attrs.evolve(
        gateway.config, server=attrs.evolve(gateway.config.server, body_limit=4096)
    )
    r = await client.post("/echo", content=b"x" * 5000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "4096" in r.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"y" * 1024

    # No Content-Length: the limit is enforced while the body streams in.
    r = await client.post("/api/v1/echo", content=chunks())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert r.json()["success"] is False
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    r = await client.post("/echo", json={"small": "body"})
    assert r.status_code == 200


async def test_unhandled_exception_is_500_logged_with_stack_not_leaked(
    client: httpx.AsyncClient,
) -> None:
    """An unhandled exception answers 500 INTERNAL without details and is logged with its stack."""
    with structlog.testing.capture_logs() as logs:
        r = await client.get("/boom", headers={"X-Request-ID": "trace-500"})
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "INTERNAL", "message": "Internal server error", "traceId": "trace-500"}
    }
    assert "secret internal detail" not in r.text
    assert "Traceback" not in r.text
    entries = [e for e in logs if e["event"] == "gatewayd.http.unhandled"]
    assert len(entries) == 1
    assert entries[0]["exc_info"] is True
    assert entries[0]["log_level"] == "error"
    r = await client.get("/api/v1/boom")
    assert r.status_code == 500
    assert r.json()["success"] is False and r.json()["error"]["code"] == "INTERNAL"


async def test_trace_id_is_honoured_or_generated(client: httpx.AsyncClient) -> None:
    """X-Request-ID is echoed when sane, replaced when not, generated when absent."""
    r = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    assert len(r.headers["x-request-id"]) == 32
    a = (await client.get("/health")).headers["x-request-id"]
    b = (await client.get("/health")).headers["x-request-id"]
    assert a != b


async def test_security_headers_on_every_answer(client: httpx.AsyncClient) -> None:
    """Success and error answers carry the security headers and no Server header."""
    for path in ("/health", "/nope"):
        r = await client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "server" not in r.headers


async def test_cors_follows_the_live_config(client: httpx.AsyncClient, running: Running) -> None:
    """CORS allows exactly the configured origins, and a config change applies at once."""
    origin = "https://dash.example.com"
    r = await client.options(
        "/health", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    gateway = running.gateway
    import attrs

    gateway.config = attrs.evolve(
        gateway.config, server=attrs.evolve(gateway.config.server, cors_origins=[origin])
    )
    r = await client.options(
        "/health", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == origin
    r = await client.get("/nope", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin
    r = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_health_reports_database_and_whatsapp(running: Running) -> None:
    """GET /health is 200 with status, uptime, timestamp and both components."""
    r = await running.client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["uptime"] >= 0
    assert body["timestamp"].endswith("Z")
    assert body["components"]["database"]["status"] == "up"
    assert "whatsapp" in body["components"]


async def test_metrics_are_prometheus_text_labelled_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    """/metrics parses with prometheus_client and labels requests by template, never raw path."""
    await client.get("/items/123?s=0")
    await client.get("/items/456?s=0")
    await client.get("/definitely/unknown/path")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = families["gatewayd_http_requests"]
    routes = {s.labels["route"] for s in requests.samples}
    assert "/items/{item_id}" in routes
    assert "<unmatched>" in routes
    assert not any("123" in route or "unknown" in route for route in routes)
    counted = [
        s
        for s in requests.samples
        if s.labels["route"] == "/items/{item_id}" and s.name.endswith("_total")
    ]
    assert sum(s.value for s in counted) == 2
    histogram = families["gatewayd_http_request_duration_seconds"]
    assert histogram.type == "histogram"
    assert any(s.labels.get("route") == "/items/{item_id}" for s in histogram.samples)
