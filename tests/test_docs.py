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

DOCUMENTED_PREFIXES = ("/sessions", "/agents/", "/health", "/metrics", "/openapi.json", "/docs")


def document() -> dict[str, Any]:
    value: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
    return value


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
    config = Config.from_mapping({"whatsapp": {"mode": "sim"}})
    services = SimpleNamespace(settings=lambda: config, metrics=None)
    app = create_app(services, SimpleNamespace(), sim=SimulatedWhatsApp())  # type: ignore[arg-type]
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route)
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
    for code in document()["components"]["schemas"]["ErrorCode"]["enum"]:
        assert code in page, code
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    csp = response.headers["content-security-policy"]
    assert csp == f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'"
    assert f"<style>{STYLE}</style>" in page
    assert response.headers["x-content-type-options"] == "nosniff"
