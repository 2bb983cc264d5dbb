"""A real AI backend on 127.0.0.1 for tests: answers, fails or hangs as told, and
records every request it got."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.loopback import serve_app


@attrs.define
class Call:
    path: str
    headers: dict[str, str]
    body: Any


@attrs.define
class AIBackend:
    """``reply`` is what it answers; ``status`` != 200 answers that status; ``delay``
    seconds before answering (longer than the gateway's timeout = a timeout)."""

    url: str = ""
    reply: str | None = "Hello from the AI"
    status: int = 200
    delay: float = 0.0
    calls: list[Call] = attrs.field(factory=list)
    called: trio.Event = attrs.field(factory=trio.Event)

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"null")
        self.calls.append(Call(request.url.path, dict(request.headers), body))
        self.called.set()
        self.called = trio.Event()
        if self.delay:
            await trio.sleep(self.delay)
        if self.status != 200:
            return JSONResponse({"error": "backend exploded"}, status_code=self.status)
        answer: dict[str, Any] = {"output": "ok"}
        if self.reply is not None:
            answer["reply"] = self.reply
        return JSONResponse(answer)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])


async def start_ai_backend(nursery: trio.Nursery) -> AIBackend:
    backend = AIBackend()
    backend.url = await serve_app(nursery, backend.app())
    return backend
