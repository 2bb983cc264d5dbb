"""The OpenAPI document (openapi.yaml → openapi.json), /openapi.json and /docs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.routing import Route, WebSocketRoute

from gatewayd.config import Config
from gatewayd.http import errors as http_errors
from gatewayd.http.app import create_app
from gatewayd.http.routes_docs import STYLE
from gatewayd.http.v1 import ws
from gatewayd.jid import phone_jid
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases import webhooks as webhook_events
from gatewayd.whatsapp.port import InboundMessage
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.daemon import ROOT
from tests.gateway_fixtures import Running
from tools import openapi_json

DOCUMENTED_PREFIXES = (
    "/sessions",
    "/agents/",
    "/api/v1/",
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/media/",
)
#: The Standard Webhooks headers every webhook request carries.
WEBHOOK_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature"}
#: The /api/v1 security requirements: a user's credential, none, or the PIN (login only).
V1_USER_SECURITY = [{"bearer": []}, {"apiKey": []}]
V1_PUBLIC_SECURITY = ([], [{"pinBasic": []}])
RATE_LIMIT_HEADERS = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}


def document() -> dict[str, Any]:
    value: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
    return value


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def all_routes() -> tuple[list[Route], list[WebSocketRoute]]:
    config = Config.from_mapping({"whatsapp": {"mode": "sim"}})
    services = SimpleNamespace(settings=lambda: config, metrics=None, media=None)
    app = create_app(services, SimpleNamespace(), sim=SimulatedWhatsApp())  # type: ignore[arg-type]
    routes, sockets = [], []
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            sockets.append(route)
        else:
            assert isinstance(route, Route)
            routes.append(route)
    return routes, sockets


def app_routes() -> list[Route]:
    return all_routes()[0]


def properties(doc: dict[str, Any], schema: Any) -> dict[str, Any]:
    """The properties a schema documents, through $ref and allOf."""
    schema = resolve(doc, schema)
    found: dict[str, Any] = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        found |= properties(doc, part)
    return found


def v1_operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document()["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method != "parameters"
    ]


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


def test_json_files_are_generated_from_the_yaml() -> None:
    """openapi.json and the package's copy equal what tools/openapi_json.py makes of openapi.yaml."""
    expected = openapi_json.render_json(openapi_json.load_document())
    assert (ROOT / "openapi.json").read_text(encoding="utf-8") == expected, (
        "run python3 tools/openapi_json.py"
    )
    shipped = resources.files("gatewayd").joinpath("openapi.json").read_text(encoding="utf-8")
    assert shipped == expected, "run python3 tools/openapi_json.py"
    assert openapi_json.main(["--check"]) == 0


def test_yaml_subset_parser_reads_what_yaml_would_and_refuses_the_rest() -> None:
    """The tools script parses mappings, sequences and scalars as YAML does and rejects other syntax."""
    text = (
        "a: 1\nb: 1.5\nc: true\nd: null\ne: '{x}'\nf: \"q\\n\"\n'200':\n  - {}\n  - k: v\n    l: [1, \"two\"]\n"
        "  - plain text: no\n"
    )
    with pytest.raises(openapi_json.YamlSubsetError):
        openapi_json.parse_yaml(text)  # "no" would be a YAML 1.1 boolean
    parsed = openapi_json.parse_yaml(text.replace("plain text: no", "- x"))
    assert parsed == {
        "a": 1,
        "b": 1.5,
        "c": True,
        "d": None,
        "e": "{x}",
        "f": "q\n",
        "200": [{}, {"k": "v", "l": [1, "two"]}, ["x"]],
    }
    for bad in ("a: |\n  text\n", "a: 2025-01-01\n", "a: b # comment\n", "a:\n  b: 1\n c: 2\n"):
        with pytest.raises(openapi_json.YamlSubsetError):
            openapi_json.parse_yaml(bad)


def test_every_route_is_documented_and_every_documented_path_exists() -> None:
    """The app's routes under the documented prefixes and the document's operations are the same set."""
    routes: set[tuple[str, str]] = set()
    for route in app_routes():
        path = route.path.replace("{agent_id}", "{agentId}")
        if path.startswith(DOCUMENTED_PREFIXES):
            routes |= {(method, path) for method in route.methods or () if method != "HEAD"}
    assert routes == documented_operations()
    for path in document()["paths"]:
        assert path.startswith(DOCUMENTED_PREFIXES), path


def test_document_is_consistent() -> None:
    """Every $ref resolves, every operation has responses, and the code enum covers the error table."""
    doc = document()
    assert doc["openapi"].startswith("3.")
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            assert part in node, ref
            node = node[part]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (method, path)
            assert operation["summary"], (method, path)
            if path.startswith("/agents/"):
                assert operation["security"] == [{"bearerAuth": []}], path
            if path.startswith("/sessions"):
                assert operation["security"] == [{}, {"adminToken": []}], path
            if path.startswith("/media/"):
                assert operation["security"] == [], path  # the signed link is the credential
    codes = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    table = {code for _, _, code in http_errors.ERROR_TABLE} | set(http_errors.HTTP_CODES.values())
    assert table | {http_errors.INTERNAL[1]} <= codes
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message", "traceId"]


def test_v1_security_matches_the_credential_each_route_demands() -> None:
    """Each /api/v1 operation documents a user's credential exactly when its handler needs one."""
    documented = {(m.upper(), p): op["security"] for m, p, op in v1_operations()}
    seen = 0
    for route in app_routes():
        if not route.path.startswith("/api/v1/"):
            continue
        # common.authed and common.public wrap every /api/v1 handler in a closure of theirs.
        wrapper = route.endpoint.__qualname__.split(".")[0]
        assert wrapper in ("authed", "public"), route.path
        for method in route.methods or ():
            if method == "HEAD":
                continue
            seen += 1
            security = documented[(method, route.path)]
            if wrapper == "authed":
                assert security == V1_USER_SECURITY, (method, route.path)
            else:
                assert security in V1_PUBLIC_SECURITY, (method, route.path)
    assert seen == len(documented)
    schemes = document()["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    assert schemes["pinBasic"]["scheme"] == "basic"


def test_v1_errors_are_documented_in_the_v1_shape_with_the_v1_codes() -> None:
    """/api/v1 errors use V1Error and V1ErrorCode, which is exactly the codes /api/v1 answers."""
    doc = document()
    schemas = doc["components"]["schemas"]
    table = {code for _, _, code in http_errors.V1_ERROR_TABLE}
    produced = table | set(http_errors.V1_HTTP_CODES.values()) | {http_errors.INTERNAL[1]}
    assert set(schemas["V1ErrorCode"]["enum"]) == produced
    v1_error = schemas["V1Error"]["properties"]
    assert v1_error["success"]["enum"] == [False]
    assert v1_error["error"]["required"] == ["code", "message", "traceId"]
    assert "details" in v1_error["error"]["properties"]
    for method, path, operation in v1_operations():
        responses = operation["responses"]
        if operation["security"] == V1_USER_SECURITY:
            assert {"401", "429"} <= set(responses), (method, path)
        for status, response in responses.items():
            response = resolve(doc, response)
            content = response["content"]["application/json"]
            examples = [content["example"]] if "example" in content else []
            examples += [e["value"] for e in content.get("examples", {}).values()]
            assert examples, (method, path, status)
            if int(status) < 400:
                assert RATE_LIMIT_HEADERS <= set(response["headers"]), (method, path, status)
                assert all(e["success"] is True for e in examples), (method, path, status)
                continue
            assert content["schema"] == {"$ref": "#/components/schemas/V1Error"}, (method, path)
            for example in examples:
                assert example["success"] is False
                assert example["error"]["code"] in produced, (method, path, status)
            if status == "429":
                headers = set(response["headers"])
                assert RATE_LIMIT_HEADERS | {"Retry-After"} <= headers, (method, path)


async def test_openapi_json_is_served_as_the_file(running: Running) -> None:
    """GET /openapi.json answers the document byte for byte."""
    response = await running.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == (ROOT / "openapi.json").read_bytes()


async def test_docs_page_is_self_contained_html_naming_every_path(running: Running) -> None:
    """GET /docs is an HTML page with every path and operation, no script and a CSP for its own style."""
    response = await running.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for path in document()["paths"]:
        assert path in page, path
    for method, path in documented_operations():
        assert f"{method}</span> {path}</h3>" in page, (method, path)
    schemas = document()["components"]["schemas"]
    for code in [*schemas["ErrorCode"]["enum"], *schemas["V1ErrorCode"]["enum"]]:
        assert code in page, code
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    csp = response.headers["content-security-policy"]
    assert csp == f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'"
    assert f"<style>{STYLE}</style>" in page
    assert response.headers["x-content-type-options"] == "nosniff"


def test_websocket_routes_are_documented_with_their_close_codes() -> None:
    """x-websockets names exactly the app's WebSocket routes, with the close codes ws.py uses."""
    documented = document()["x-websockets"]
    assert set(documented) == {route.path for route in all_routes()[1]}
    codes = {ws.UNAUTHORIZED, ws.NOT_FOUND, ws.TOO_MANY, ws.INTERNAL, ws.TOO_SLOW, ws.GOING_AWAY}
    for path, item in documented.items():
        expected = codes if "{session_id}" in path else codes - {ws.NOT_FOUND}
        assert {int(code) for code in item["closeCodes"]} == expected, path
        assert item["summary"] and item["description"], path
        assert item["security"] == V1_USER_SECURITY, path
        assert "token" in {resolve(document(), p)["name"] for p in item["parameters"]}, path
    frames = documented["/ws/sessions/{session_id}"]["frames"]
    assert set(frames) == {"qr_update", "status_update", "message_received", "ping"}
    for kind, frame in frames.items():
        assert frame["type"] == kind


def _record() -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        id=uuid.uuid4(),
        agent_id="agent-1",
        name="Agent 1",
        user_id="user-1",
        api_key="key",
        endpoint_url_run=None,
        webhook_url="https://receiver.example.com/hook",
        status="connected",
        status_reason=None,
        last_connected_at=None,
        last_disconnected_at=None,
        phone_number="6289876543210",
        lid=None,
        device_jid=None,
        device_info=None,
        created_at=now,
        updated_at=now,
        webhook_events=list(webhook_events.EVENTS),
    )


def _payloads() -> dict[str, dict[str, Any]]:
    """One body of each event, as gatewayd/usecases/webhooks.py makes it."""
    record = _record()
    sender = phone_jid("6281234567890")
    message = InboundMessage(
        id="M1", chat=sender, sender=sender, timestamp_ms=1_733_048_100_000, text="Hello!"
    )
    edit = InboundMessage(
        id="M2", chat=sender, sender=sender, timestamp_ms=1_733_048_160_000, text="Hi!",
        is_edit=True, edited_id="M1",
    )  # fmt: skip
    made = [
        webhook_events.inbound_delivery(record, message, default_country_code="62"),
        webhook_events.inbound_delivery(record, edit, default_country_code="62"),
        webhook_events.sent_delivery(
            record, message_id="S1", to=sender, kind="text", text="Hi", timestamp_ms=1
        ),
        webhook_events.ack_delivery(
            record, chat=sender, message_ids=["S1"], type="read", timestamp_ms=1
        ),
        webhook_events.status_delivery(record, status="connected", reason=None),
        webhook_events.test_delivery(record),
    ]
    payloads = {}
    for delivery in made:
        assert delivery is not None
        payloads[delivery.event] = dict(delivery.payload)
    return payloads


def test_webhooks_section_documents_each_event_as_the_code_makes_it() -> None:
    """The webhooks section has every event the code sends, signed, with the code's fields."""
    doc = document()
    assert doc["openapi"].startswith("3.1"), "a top-level webhooks section needs OpenAPI 3.1"
    payloads = _payloads()
    assert set(doc["webhooks"]) == set(payloads) == {*webhook_events.EVENTS, webhook_events.TEST}
    assert "message.revoked" not in doc["components"]["schemas"]["WebhookEventName"]["enum"]
    assert set(doc["components"]["schemas"]["WebhookEventName"]["enum"]) == set(
        webhook_events.EVENTS
    )
    for event, item in doc["webhooks"].items():
        operation = item["post"]
        headers = {resolve(doc, p)["name"] for p in operation["parameters"]}
        assert headers == WEBHOOK_HEADERS, event
        content = operation["requestBody"]["content"]["application/json"]
        documented = properties(doc, content["schema"])
        payload = payloads[event]
        assert set(documented) == set(payload), event
        examples = [content["example"]] if "example" in content else []
        examples += [e["value"] for e in content.get("examples", {}).values()]
        assert examples, event
        for example in examples:
            assert example["event"] == event
            assert set(example) == set(payload), event
        # The event's own part (message, ack, session, test), one level down.
        (part,) = set(payload) - {"event", "session_id", "session_name", "timestamp"}
        assert set(properties(doc, documented[part])) == set(payload[part]), event
        for example in examples:
            assert set(example[part]) == set(payload[part]), event
