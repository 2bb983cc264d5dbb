"""The API's own documentation: /openapi.json and a browsable page at /docs.

The document ships inside the package as ``gatewayd/openapi.json``, generated from the
repository's ``openapi.yaml`` by ``tools/openapi_json.py`` (a test keeps the three in
sync), so an installed wheel serves it without the source tree.

``/docs`` is rendered here, server-side, from the same document: plain HTML, no script,
nothing fetched from anywhere. Its one inline stylesheet is allowed by its hash in the
page's own Content-Security-Policy, which is otherwise the app's ``default-src 'none'``.

The daemon composes no other absolute URL: answers carry ids and paths, so
``server.base_url`` (the deployed service's ``APP_BASE_URL``) is used here only. When set,
it is the one entry of both documents' ``servers`` (live: a reload changes it), so a client
generated from /openapi.json calls the public address rather than the shipped
``http://localhost:3000``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.config import Config

METHODS = ("get", "post", "put", "patch", "delete")


@functools.cache
def openapi_bytes() -> bytes:
    """The OpenAPI document as shipped in the package (gatewayd/openapi.json)."""
    return resources.files("gatewayd").joinpath("openapi.json").read_bytes()


@functools.cache
def openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(openapi_bytes())
    return document


def _servers(base_url: str) -> list[dict[str, str]]:
    return [{"url": base_url.rstrip("/"), "description": "this deployment (server.base_url)"}]


@functools.lru_cache(maxsize=4)
def openapi_bytes_for(base_url: str) -> bytes:
    """The document as served: the shipped bytes, or with ``servers`` set to ``base_url``."""
    if not base_url:
        return openapi_bytes()
    document = {**openapi_document(), "servers": _servers(base_url)}
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def docs_routes(*, settings: Callable[[], Config]) -> list[BaseRoute]:
    """/openapi.json and /docs, their ``servers`` from the live ``server.base_url``."""

    async def openapi_json(request: Request) -> Response:
        body = openapi_bytes_for(settings().server.base_url)
        return Response(body, media_type="application/json")

    async def docs_page(request: Request) -> Response:
        page, csp = docs_html(settings().server.base_url)
        return HTMLResponse(
            page, headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
        )

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
    ]


# ------------------------------------------------------------------------------ rendering

STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#1b1b1b}
h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}
h3{margin-top:2rem;font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:4.5rem;padding:.1rem .4rem;border-radius:.25rem;color:#fff;background:#555}
.get{background:#2f6fb0}.post{background:#2f8a4b}.delete{background:#b0302f}
pre{background:#f5f5f5;padding:.6rem;overflow-x:auto;font-size:.85rem}
code{background:#f0f0f0;padding:0 .2rem}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
nav li{font-family:ui-monospace,monospace}
"""


def _text(value: object) -> str:
    """Escape, then render the document's `code` spans."""
    escaped = html.escape(str(value), quote=False)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _pre(value: object) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    return None


def _examples(content: dict[str, Any]) -> list[tuple[str, Any]]:
    if "example" in content:
        return [("", content["example"])]
    return [(name, ex.get("value")) for name, ex in content.get("examples", {}).items()]


def _schema_link(schema: Any) -> str:
    name = _ref_name(schema)
    if name:
        return f'<a href="#schema-{html.escape(name.lower())}">{html.escape(name)}</a>'
    if isinstance(schema, dict) and "type" in schema:
        return f"<code>{html.escape(str(schema['type']))}</code>"
    return ""


def _security(document: dict[str, Any], operation: dict[str, Any]) -> str:
    requirements = operation.get("security", document.get("security", []))
    names = [name for requirement in requirements for name in requirement]
    if not names:
        return "none"
    text = ", ".join(f"<code>{html.escape(n)}</code>" for n in names)
    return text + (" (optional)" if {} in requirements else "")


def _operation(
    document: dict[str, Any],
    path: str,
    method: str,
    operation: dict[str, Any],
    path_parameters: list[Any],
) -> list[str]:
    out = [
        f'<section id="{_anchor(method, path)}">',
        f'<h3><span class="m {method}">{method.upper()}</span> {html.escape(path)}</h3>',
    ]
    if operation.get("summary"):
        out.append(f"<p><strong>{_text(operation['summary'])}</strong></p>")
    if operation.get("description"):
        out.append(f"<p>{_text(operation['description'])}</p>")
    out.append(f"<p>Auth: {_security(document, operation)}</p>")
    parameters = [
        _resolve(document, p) for p in [*path_parameters, *operation.get("parameters", [])]
    ]
    if parameters:
        out.append("<table><tr><th>parameter</th><th>in</th><th>description</th></tr>")
        for p in parameters:
            out.append(
                f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{html.escape(p['in'])}</td>"
                f"<td>{_text(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = _resolve(document, operation.get("requestBody"))
    if body:
        for media_type, content in body.get("content", {}).items():
            out.append(
                f"<h4>Request body ({html.escape(media_type)}): {_schema_link(content.get('schema'))}</h4>"
            )
            for name, example in _examples(content):
                if name:
                    out.append(f"<p>Example <em>{html.escape(name)}</em></p>")
                out.append(_pre(example))
    out.append(
        "<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>example</th></tr>"
    )
    for status, response in operation.get("responses", {}).items():
        response = _resolve(document, response)
        examples: list[str] = []
        for media_type, content in response.get("content", {}).items():
            link = _schema_link(content.get("schema"))
            examples.append(f"<p>{html.escape(media_type)} {link}</p>")
            for name, example in _examples(content):
                label = f"<p><em>{html.escape(name)}</em></p>" if name else ""
                examples.append(
                    label
                    + (
                        _pre(example)
                        if not isinstance(example, str)
                        else f"<pre>{html.escape(example)}</pre>"
                    )
                )
        out.append(
            f"<tr><td>{html.escape(str(status))}</td><td>{_text(response.get('description', ''))}</td>"
            f"<td>{''.join(examples)}</td></tr>"
        )
    out.append("</table></section>")
    return out


@functools.lru_cache(maxsize=4)
def docs_html(base_url: str = "") -> tuple[str, str]:
    """The page and the Content-Security-Policy that allows exactly its stylesheet."""
    document = openapi_document()
    info = document.get("info", {})
    title = html.escape(str(info.get("title", "API")))
    out = [
        f"<h1>{title} <small>{html.escape(str(info.get('version', '')))}</small></h1>",
        f"<p>{_text(info.get('description', ''))}</p>",
        '<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> '
        f"(OpenAPI {html.escape(str(document.get('openapi', '')))}).</p>",
    ]
    servers = _servers(base_url) if base_url else document.get("servers", [])
    if servers:
        out.append(
            "<p>Servers: "
            + ", ".join(
                f"<code>{html.escape(s['url'])}</code> ({_text(s.get('description', ''))})"
                for s in servers
            )
            + "</p>"
        )
    out.append("<nav><ul>")
    operations: list[tuple[str, str, dict[str, Any], list[Any]]] = []
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                operations.append((path, method, item[method], item.get("parameters", [])))
                out.append(
                    f'<li><a href="#{_anchor(method, path)}">{method.upper()} {html.escape(path)}</a> '
                    f"— {_text(item[method].get('summary', ''))}</li>"
                )
    out.append("</ul></nav>")
    tags = {t["name"]: t for t in document.get("tags", [])}
    for tag in [*tags, None]:
        selected = [op for op in operations if (op[2].get("tags") or [None])[0] == tag]
        if not selected:
            continue
        if tag is not None:
            out.append(
                f"<h2>{html.escape(tag)}</h2><p>{_text(tags[tag].get('description', ''))}</p>"
            )
        for path, method, operation, path_parameters in selected:
            out.extend(_operation(document, path, method, operation, path_parameters))
    components = document.get("components", {})
    out.append("<h2>Authentication</h2><dl>")
    for name, scheme in components.get("securitySchemes", {}).items():
        out.append(
            f"<dt><code>{html.escape(name)}</code>: {html.escape(scheme.get('scheme', scheme['type']))}</dt>"
            f"<dd>{_text(scheme.get('description', ''))}</dd>"
        )
    out.append("</dl><h2>Schemas</h2>")
    for name, schema in components.get("schemas", {}).items():
        out.append(
            f'<h3 id="schema-{html.escape(name.lower())}">{html.escape(name)}</h3>{_pre(schema)}'
        )
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'"
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )
    return page, csp
