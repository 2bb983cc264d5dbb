"""The AI backend client against real HTTP servers on loopback, and the /run request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import structlog
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gatewayd.errors import (
    AIDownstreamError,
    AITimeout,
    BadGateway,
    InvalidPayload,
    InvalidRecipient,
)
from gatewayd.http.bodies import parse_run_request
from gatewayd.outbound.ai import (
    EXCERPT_CHARS,
    MAX_ANSWER_BYTES,
    RunRequest,
    build_run_payload,
    call_ai,
    extract_reply,
)
from gatewayd.outbound.aihttp import AiConnections
from tests.loopback import serve_app

KEY = "sk-agent-secret-1234"
TRACE = "trace-0001"


async def echo(request: Request) -> Response:
    """Answers with a reply and everything it was sent."""
    return JSONResponse(
        {
            "reply": "Hello human!",
            "seen": {
                "authorization": request.headers.get("authorization"),
                "x-request-id": request.headers.get("x-request-id"),
                "content-type": request.headers.get("content-type"),
                "body": json.loads(await request.body()),
            },
        }
    )


ANSWERS: dict[str, Response] = {
    "no-reply": JSONResponse({"status": "queued"}),
    "blank-reply": JSONResponse({"reply": "   "}),
    "data-reply": JSONResponse({"data": {"reply": "from data"}}),
    "output": JSONResponse({"output": "from output"}),
    "empty": Response(b"", status_code=200),
    "no-content": Response(status_code=204),
    "text": PlainTextResponse("<html>gateway</html>"),
    "array": JSONResponse(["reply"]),
    "huge": Response(
        b'{"reply": "' + b"x" * MAX_ANSWER_BYTES + b'"}', media_type="application/json"
    ),
    "fail": PlainTextResponse("boom " * 1000, status_code=500),
    "missing": JSONResponse({"error": "no such agent"}, status_code=404),
    "moved": Response(status_code=307, headers={"location": "/echo"}),
}


async def canned(request: Request) -> Response:
    return ANSWERS[request.path_params["name"]]


APP = Starlette(
    routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/canned/{name}", canned, methods=["POST"]),
    ]
)


@pytest.fixture
async def ai_base(nursery: trio.Nursery) -> str:
    """Serves APP on an ephemeral loopback port; returns its base URL."""
    return await serve_app(nursery, APP)


@pytest.fixture
async def client() -> AsyncIterator[AiConnections]:
    """The AI client's connections, as the forwarder has them; closed after the test."""
    connections = AiConnections()
    try:
        yield connections
    finally:
        await connections.aclose()


async def call(
    client: AiConnections,
    url: str,
    *,
    timeout: float = 5,  # noqa: ASYNC109 - passed on to call_ai
    **payload: Any,
) -> Any:
    return await call_ai(
        client,
        url,
        api_key=KEY,
        payload=payload or {"message": "hi"},
        timeout=timeout,
        trace_id=TRACE,
    )


async def test_success_sends_bearer_trace_id_and_json(client: AiConnections, ai_base: str) -> None:
    """A call posts the payload as JSON with Bearer key and X-Request-ID, and reads the reply."""
    payload = build_run_payload(
        message="Hello assistant!", session_id="6281234567890@s.whatsapp.net"
    )
    answer = await call_ai(
        client, f"{ai_base}/echo", api_key=KEY, payload=payload, timeout=5, trace_id=TRACE
    )
    assert answer.status_code == 200
    assert answer.reply == "Hello human!"
    assert answer.duration >= 0
    assert answer.body["seen"] == {
        "authorization": f"Bearer {KEY}",
        "x-request-id": TRACE,
        "content-type": "application/json",
        "body": {"message": "Hello assistant!", "sessionId": "6281234567890@c.us", "metadata": {}},
    }


@pytest.mark.parametrize(
    ("name", "reply", "body"),
    [
        ("no-reply", None, {"status": "queued"}),
        ("blank-reply", None, {"reply": "   "}),
        ("data-reply", "from data", {"data": {"reply": "from data"}}),
        ("output", "from output", {"output": "from output"}),
        ("empty", None, {}),
        ("no-content", None, {}),
    ],
)
async def test_answers_without_or_with_other_reply_shapes(
    client: AiConnections, ai_base: str, name: str, reply: str | None, body: dict[str, Any]
) -> None:
    """A 2xx answer without a usable reply is no reply; data.reply and output count as replies."""
    answer = await call(client, f"{ai_base}/canned/{name}")
    assert (answer.reply, answer.body) == (reply, body)


@pytest.mark.parametrize(("name", "status"), [("fail", 500), ("missing", 404), ("moved", 307)])
async def test_non_2xx_is_downstream_error_with_capped_excerpt(
    client: AiConnections, ai_base: str, name: str, status: int
) -> None:
    """A non-2xx answer (redirects unfollowed) is AIDownstreamError with status and excerpt."""
    with pytest.raises(AIDownstreamError) as caught:
        await call(client, f"{ai_base}/canned/{name}")
    details = caught.value.details
    assert isinstance(details, dict)
    assert details["status"] == status
    assert str(status) in caught.value.message
    assert len(details["body"]) <= EXCERPT_CHARS
    if name == "fail":
        assert details["body"].startswith("boom boom")


@pytest.mark.parametrize(
    ("name", "why"),
    [("text", "not JSON"), ("array", "not an object"), ("huge", "larger than")],
)
async def test_unusable_answer_is_bad_gateway(
    client: AiConnections, ai_base: str, name: str, why: str
) -> None:
    """A 2xx answer that is not a JSON object, or is over the size cap, raises BadGateway."""
    with pytest.raises(BadGateway, match=why):
        await call(client, f"{ai_base}/canned/{name}")


async def test_unreachable_backend_is_bad_gateway(client: AiConnections) -> None:
    """A connection refused raises BadGateway naming the host, not the key."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nobody listens there
    with pytest.raises(BadGateway, match="127.0.0.1") as caught:
        await call(client, f"http://127.0.0.1:{port}/run")
    assert KEY not in caught.value.message


async def test_invalid_url_is_bad_gateway(client: AiConnections) -> None:
    """A malformed or non-HTTP endpoint URL raises BadGateway."""
    for url in ("ftp://127.0.0.1/run", "http://", "not a url"):
        with pytest.raises(BadGateway):
            await call(client, url)


async def test_silent_backend_times_out_at_the_deadline(
    client: AiConnections, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A backend that reads the request and never answers is AITimeout exactly at the deadline."""
    got_request = trio.Event()

    async def never_answer(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
        got_request.set()
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(AITimeout, match="60 s"):
            await call(client, f"http://127.0.0.1:{port}/run", timeout=60)
    assert trio.current_time() == start + 60
    assert got_request.is_set()
    assert [entry["event"] for entry in logs] == ["gatewayd.ai.failed"]


async def test_api_key_is_never_logged(client: AiConnections, ai_base: str) -> None:
    """Log lines of successful and failed calls carry neither the agent key nor the OpenAI key."""
    with structlog.testing.capture_logs() as logs:
        await call(client, f"{ai_base}/echo", message="hi", openai_api_key="sk-openai-999")
        with pytest.raises(AIDownstreamError):
            await call(client, f"{ai_base}/canned/fail")
    assert [entry["event"] for entry in logs] == ["gatewayd.ai.answered"] * 2
    assert logs[0]["status"] == 200 and logs[0]["host"] == "127.0.0.1"
    assert KEY not in repr(logs) and "sk-openai-999" not in repr(logs)


# --- the /run request ------------------------------------------------------------------


def test_parse_001_body() -> None:
    """The 001 body is read with every option, the session as a JID."""
    request = parse_run_request(
        {
            "message": "Hello assistant!",
            "sessionId": "6281234567890@c.us",
            "openai_api_key": "sk-x",
            "memory_enable": True,
            "context_memory": "100",
            "rag_enable": False,
            "metadata": {"whatsapp_name": "Customer", "chat_name": "VIP Support"},
            "unknown": "ignored",
        }
    )
    assert request == RunRequest(
        message="Hello assistant!",
        session_jid="6281234567890@s.whatsapp.net",
        openai_api_key="sk-x",
        memory_enable=True,
        context_memory="100",
        rag_enable=False,
        metadata={"whatsapp_name": "Customer", "chat_name": "VIP Support"},
    )
    assert request.payload() == {
        "message": "Hello assistant!",
        "sessionId": "6281234567890@c.us",
        "openai_api_key": "sk-x",
        "memory_enable": True,
        "context_memory": "100",
        "rag_enable": False,
        "metadata": {"whatsapp_name": "Customer", "chat_name": "VIP Support"},
    }


def test_parse_004_body() -> None:
    """The 004 body (input, parameters, session_id as a bare number) is read the same way."""
    request = parse_run_request(
        {"input": "Hello assistant!", "parameters": {"max_steps": 5}, "session_id": "6281234567890"}
    )
    assert request == RunRequest(
        message="Hello assistant!",
        session_jid="6281234567890@s.whatsapp.net",
        parameters={"max_steps": 5},
    )
    assert request.payload() == {
        "message": "Hello assistant!",
        "sessionId": "6281234567890@c.us",
        "metadata": {},
        "parameters": {"max_steps": 5},
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"message": "m"}, RunRequest(message="m", session_jid=None)),
        ({"message": "m", "input": "i"}, RunRequest(message="m", session_jid=None)),
        (
            {"message": "m", "sessionId": 6281234567890},
            RunRequest("m", "6281234567890@s.whatsapp.net"),
        ),
        (
            {"message": "m", "sessionId": "081234567890"},
            RunRequest("m", "6281234567890@s.whatsapp.net"),
        ),
        (
            {"message": "m", "sessionId": None, "metadata": None},
            RunRequest(message="m", session_jid=None),
        ),
        ({"message": "m", "context_memory": 100}, RunRequest("m", None, context_memory=100)),
        (
            {"message": "m", "sessionId": "120363025246125486@g.us", "session_id": "x"},
            RunRequest("m", "120363025246125486@g.us"),
        ),
    ],
)
def test_parse_tolerates(body: dict[str, Any], expected: RunRequest) -> None:
    """Optional fields may be absent or null, numbers may be JSON numbers, 001 spellings win."""
    assert parse_run_request(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body must be a JSON object"),
        ("message", "body must be a JSON object"),
        ({}, "message is required (or input"),
        ({"sessionId": "6281234567890"}, "message is required"),
        ({"message": None}, "message must be a string, not null"),
        ({"message": 5}, "message must be a string, not a number"),
        ({"input": {"text": "hi"}}, "input must be a string, not an object"),
        ({"message": "  "}, "message must not be empty"),
        ({"message": "m", "sessionId": ["628"]}, "sessionId must be a string, not an array"),
        ({"message": "m", "session_id": True}, "session_id must be a string, not a boolean"),
        (
            {"message": "m", "memory_enable": "true"},
            "memory_enable must be true or false, not a string",
        ),
        ({"message": "m", "rag_enable": 1}, "rag_enable must be true or false, not a number"),
        ({"message": "m", "openai_api_key": 1}, "openai_api_key must be a string, not a number"),
        ({"message": "m", "metadata": "vip"}, "metadata must be an object, not a string"),
        ({"input": "m", "parameters": [1]}, "parameters must be an object, not an array"),
        ({"message": "m", "context_memory": True}, "context_memory must be a string or a number"),
    ],
)
def test_parse_refuses_with_precise_message(body: Any, message: str) -> None:
    """A bad /run body raises InvalidPayload naming the field and what is wrong with it."""
    with pytest.raises(InvalidPayload) as caught:
        parse_run_request(body)
    assert message in caught.value.message


def test_parse_refuses_bad_session_as_invalid_recipient() -> None:
    """A session that cannot be a JID raises InvalidRecipient saying why."""
    with pytest.raises(InvalidRecipient, match="letters"):
        parse_run_request({"message": "m", "sessionId": "customer-42"})


def test_build_payload_for_the_forwarder() -> None:
    """The forwarder's payload carries the sender's names in metadata and a group JID as is."""
    payload = build_run_payload(
        message="@bot hi",
        session_id="120363025246125486@g.us",
        metadata={"from": "6281234567890@c.us"},
        whatsapp_name="Customer",
        chat_name="VIP Support",
    )
    assert payload == {
        "message": "@bot hi",
        "sessionId": "120363025246125486@g.us",
        "metadata": {
            "from": "6281234567890@c.us",
            "whatsapp_name": "Customer",
            "chat_name": "VIP Support",
        },
    }


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        ({"reply": "a", "data": {"reply": "b"}, "output": "c"}, "a"),
        ({"reply": None, "data": {"reply": "b"}, "output": "c"}, "b"),
        ({"reply": 5, "data": "b", "output": "c"}, "c"),
        ({"reply": {"text": "a"}}, None),
        ({}, None),
    ],
)
def test_extract_reply_order(body: dict[str, Any], reply: str | None) -> None:
    """reply wins over data.reply, which wins over output; non-strings are no reply."""
    assert extract_reply(body) == reply
