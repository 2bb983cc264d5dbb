"""The Langchain use case (docs/contract/api-v1.md §8.8) on a running daemon in sim mode: real
HTTP endpoints on loopback, the real database, the simulated WhatsApp network."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gatewayd.config import Config
from gatewayd.errors import AddressRefused, InvalidPayload, LangchainFailed
from gatewayd.store.agents import AgentRecord, create_agent, get_agent
from gatewayd.usecases.core import Services
from gatewayd.usecases.langchain import LangchainRequest, execute
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.gateway_fixtures import Running, make_config
from tests.loopback import serve_app

KEY = "lc-secret-key-8f2a61"
QUERY_SECRET = "q-token-55d0e7"
CHAT = "628123456789"
INPUT = {"message": "User message here", "parameters": {"max_steps": 5}}
ANSWER = {"output": "AI response here", "steps": 3, "metadata": {}}
BACKOFF = (0.2, 0.4)  # seconds; short, so the retry tests wait little


@attrs.frozen
class Call:
    at: float  # trio's clock
    headers: dict[str, str]
    body: bytes


@attrs.define
class Endpoint:
    """A Langchain endpoint on loopback: answers from ``script`` in turn (the last one for
    every later call), and records each call."""

    url: str = ""
    script: list[str] = attrs.field(factory=lambda: ["ok"])
    calls: list[Call] = attrs.field(factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(Call(trio.current_time(), dict(request.headers), body))
        step = self.script[min(len(self.calls), len(self.script)) - 1]
        if step == "ok":
            return JSONResponse(ANSWER)
        if step == "hang":
            await trio.sleep(3600)
        if step == "text":
            return PlainTextResponse("<html>proxy error page</html>")
        if step == "array":
            return JSONResponse(["not", "an", "object"])
        return JSONResponse({"error": "as scripted"}, status_code=int(step))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])


@pytest.fixture
async def gateway_config(pg_dsn: str, tmp_path: Path) -> Config:
    return make_config(
        pg_dsn,
        media={"allow_private_urls": True, "temp_dir": str(tmp_path / "previews")},
        sessions={"qr_wait": 5.0, "create_qr_wait": 2.0},
    )


@pytest.fixture
async def endpoint(nursery: trio.Nursery) -> Endpoint:
    ep = Endpoint()
    ep.url = await serve_app(nursery, ep.app()) + f"/v1/api?token={QUERY_SECRET}"
    return ep


@pytest.fixture
async def agent(running: Running) -> AgentRecord:
    """A session in the database that is not running."""
    return await create_agent(
        running.gateway.db, agent_id="agent_456", name="Bot", user_id="user_123", api_key="AK"
    )


def services_of(running: Running) -> Services:
    return running.gateway.services


def request(url: str, chat: str | None = None) -> LangchainRequest:
    return LangchainRequest(url=url, api_key=KEY, input=INPUT, chat=chat)


async def executions(running: Running, agent_uuid: uuid.UUID) -> list[dict[str, Any]]:
    def work(conn: Any) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT id, status, request, response, error, trace_id, duration_ms"
            " FROM ai_executions WHERE agent_id = %s ORDER BY id",
            (agent_uuid,),
        ).fetchall()
        names = ("id", "status", "request", "response", "error", "trace_id", "duration_ms")
        return [dict(zip(names, row, strict=True)) for row in rows]

    result: list[dict[str, Any]] = await running.gateway.db.run(work)
    return result


async def failure(running: Running, agent: AgentRecord, url: str, **kw: Any) -> LangchainFailed:
    with pytest.raises(LangchainFailed) as info:
        await execute(services_of(running), agent, request(url), "trace-f", backoff=BACKOFF, **kw)
    return info.value


async def refused_port() -> int:
    """A loopback port nothing listens on."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# ------------------------------------------------------------------------------- success


async def test_success_posts_input_with_bearer_and_records_it(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """A success posts the input plus sessionId as @c.us with Bearer and X-Request-ID, and
    records one execution whose id is returned."""
    result = await execute(services_of(running), agent, request(endpoint.url, CHAT), "trace-1")
    assert result.response == ANSWER and result.attempts == 1
    [call] = endpoint.calls
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["x-request-id"] == "trace-1"
    assert call.headers["content-type"] == "application/json"
    assert json.loads(call.body) == {**INPUT, "sessionId": f"{CHAT}@c.us"}
    [row] = await executions(running, agent.id)
    assert row["id"] == result.execution_id and row["status"] == "success"
    assert row["response"] == ANSWER and row["trace_id"] == "trace-1"
    assert row["request"]["sessionId"] == f"{CHAT}@c.us" and row["error"] is None
    # The session is not running: the reply could not go out, and that is reported, not raised.
    assert result.reply_sent is False and result.reply_error


async def test_without_a_chat_the_input_is_posted_as_given(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """Without a chat the body is the input exactly, and no reply is attempted."""
    result = await execute(services_of(running), agent, request(endpoint.url), "trace-2")
    assert json.loads(endpoint.calls[0].body) == INPUT
    assert result.reply_sent is False and result.reply_error is None


async def test_the_reply_goes_to_the_chat_of_a_connected_session(
    running: Running, endpoint: Endpoint
) -> None:
    """With a chat and a connected session, the answer's output is sent to that chat."""
    r = await running.client.post(
        "/sessions",
        json={"userId": "user_123", "agentId": "live-bot", "agentName": "Live", "apikey": "AK"},
    )
    assert r.status_code in (200, 201), r.text
    sim = running.gateway.backend
    assert isinstance(sim, SimulatedWhatsApp)
    with trio.fail_after(10):
        while sim.current_qr("live-bot") is None:
            await trio.sleep(0.01)
        sim.scan("live-bot", "628123450001")
        while not ((h := running.gateway.agents.get("live-bot")) and h.status == "connected"):
            await trio.sleep(0.01)
    record = await get_agent(running.gateway.db, "live-bot")
    assert record is not None
    result = await execute(services_of(running), record, request(endpoint.url, CHAT), "trace-3")
    assert result.reply_sent is True and result.reply_message_id
    sent = [s for s in sim.sent("live-bot") if s.kind == "text"]
    assert sent[-1].text == "AI response here" and sent[-1].message_id == result.reply_message_id


# ------------------------------------------------------------------------------- retries


async def test_two_5xx_then_success_is_one_successful_execution_of_3_tries(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """A 5xx is tried again after the backoff; the third try's answer is the result."""
    endpoint.script = ["503", "502", "ok"]
    result = await execute(services_of(running), agent, request(endpoint.url), "t", backoff=BACKOFF)
    assert result.attempts == 3 and result.response == ANSWER
    assert len(endpoint.calls) == 3
    first, second, third = (call.at for call in endpoint.calls)
    assert second - first >= 0.2 and third - second >= 0.4
    assert result.duration_ms >= 600
    [row] = await executions(running, agent.id)
    assert row["status"] == "success" and row["id"] == result.execution_id


async def test_5xx_every_time_fails_with_status_after_3_tries(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """Three 5xx answers fail with reason status, the last status and 3 attempts."""
    endpoint.script = ["500"]
    exc = await failure(running, agent, endpoint.url)
    [row] = await executions(running, agent.id)
    assert exc.details == {
        "executionId": row["id"],
        "reason": "status",
        "status": 500,
        "attempts": 3,
    }
    assert not exc.timed_out and len(endpoint.calls) == 3
    assert row["status"] == "error" and "HTTP 500" in row["error"]


async def test_a_4xx_is_final(running: Running, endpoint: Endpoint, agent: AgentRecord) -> None:
    """A 4xx answer is not tried again: one attempt, reason status."""
    endpoint.script = ["404", "ok"]
    exc = await failure(running, agent, endpoint.url)
    assert len(endpoint.calls) == 1
    assert exc.details["reason"] == "status" and exc.details["status"] == 404  # type: ignore[index]
    assert exc.details["attempts"] == 1  # type: ignore[index]


async def test_connection_refused_three_times_fails_with_connect(
    running: Running, agent: AgentRecord
) -> None:
    """An endpoint that refuses connections is tried 3 times, then fails with reason connect."""
    port = await refused_port()
    exc = await failure(running, agent, f"http://127.0.0.1:{port}/run")
    [row] = await executions(running, agent.id)
    assert exc.details == {"executionId": row["id"], "reason": "connect", "attempts": 3}
    assert not exc.timed_out and row["status"] == "error" and row["response"] is None


async def test_a_timeout_is_final_and_recorded_as_timeout(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """An endpoint that does not answer within the timeout fails once with reason timeout."""
    endpoint.script = ["hang", "ok"]
    exc = await failure(running, agent, endpoint.url, timeout=0.3)
    assert exc.timed_out and len(endpoint.calls) == 1
    [row] = await executions(running, agent.id)
    assert exc.details == {"executionId": row["id"], "reason": "timeout", "attempts": 1}
    assert row["status"] == "timeout"


@pytest.mark.parametrize("answer", ["text", "array"])
async def test_an_answer_that_is_not_a_json_object_is_final(
    running: Running, endpoint: Endpoint, agent: AgentRecord, answer: str
) -> None:
    """A 2xx answer that is not a JSON object fails at once with reason invalid_answer."""
    endpoint.script = [answer, "ok"]
    exc = await failure(running, agent, endpoint.url)
    assert len(endpoint.calls) == 1
    assert exc.details["reason"] == "invalid_answer" and exc.details["attempts"] == 1  # type: ignore[index]
    [row] = await executions(running, agent.id)
    assert row["status"] == "error"


# ------------------------------------------------------------------------------- guards


async def test_a_private_address_is_refused_when_not_allowed(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """With media.allow_private_urls off, a loopback URL is refused before anything is sent."""
    base = services_of(running)
    strict = attrs.evolve(
        base.config, media=attrs.evolve(base.config.media, allow_private_urls=False)
    )
    services = attrs.evolve(base, settings=lambda: strict)
    with pytest.raises(AddressRefused):
        await execute(services, agent, request(endpoint.url), "t")
    assert endpoint.calls == [] and await executions(running, agent.id) == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com/run", "/v1/api", "langchain.example.com/v1", "http://"]
)
async def test_a_url_that_is_not_absolute_http_is_invalid(
    running: Running, agent: AgentRecord, url: str
) -> None:
    """A URL that is not absolute http(s) is InvalidPayload naming the field, not the URL."""
    with pytest.raises(InvalidPayload) as info:
        await execute(services_of(running), agent, request(url), "t")
    assert info.value.details == {"field": "langchainUrl"} and url not in info.value.message
    assert await executions(running, agent.id) == []


async def test_the_key_and_the_url_query_are_never_stored_logged_or_told(
    running: Running, endpoint: Endpoint, agent: AgentRecord
) -> None:
    """Neither the API key nor the URL's query reaches the database, the log or the error."""
    endpoint.script = ["ok", "503"]
    with structlog.testing.capture_logs() as logs:
        await execute(services_of(running), agent, request(endpoint.url, CHAT), "t")
        exc = await failure(running, agent, endpoint.url)
    executed = [entry for entry in logs if entry["event"] == "gatewayd.langchain.executed"]
    assert [entry["status"] for entry in executed] == ["success", "error"]
    assert executed[0]["executionId"] and executed[0]["attempts"] == 1
    rows = await executions(running, agent.id)
    for text in (repr(logs), repr(rows), exc.message, repr(exc.details)):
        assert KEY not in text and QUERY_SECRET not in text
    assert "127.0.0.1" not in exc.message
