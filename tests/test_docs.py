"""The OpenAPI document (openapi.yaml → openapi.json), /openapi.json and /docs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.routing import Route

from gatewayd.config import Config
from gatewayd.http import errors as http_errors
from gatewayd.http.app import create_app
from gatewayd.http.routes_docs import STYLE
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
)
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


def app_routes() -> list[Route]:
    config = Config.from_mapping({"whatsapp": {"mode": "sim"}})
    services = SimpleNamespace(settings=lambda: config, metrics=None)
    app = create_app(services, SimpleNamespace(), sim=SimulatedWhatsApp())  # type: ignore[arg-type]
    routes = []
    for route in app.routes:
        assert isinstance(route, Route)
        routes.append(route)
    return routes


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
