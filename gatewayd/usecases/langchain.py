"""Running a client's Langchain endpoint for one of its sessions (docs/contract/api-v1.md §8.8).

The client names the URL and its key; gatewayd POSTs the client's ``input`` there (plus the
chat as ``sessionId``), retries what is safe to retry, records the execution in
``ai_executions`` and, when a chat was named, sends the answer's text to it.

What is retried. A connection error (nothing reached the endpoint) and a 5xx answer (the
endpoint says it failed) are tried again, at most ``TRIES`` times in all, after ``BACKOFF``.
A timeout is final: the endpoint may still be executing, so a repeat could run the chain
twice, and three 30 s tries would outlast any client waiting for this answer. A 4xx, a
redirect, and an answer that is not a JSON object are final as well.

The URL passes the address guard media URLs pass (gatewayd/outbound/guard.py), on every try,
and the request goes to the address that was checked. The key is sent, never stored or
logged; messages and logs name the host at most, never the URL (its path or query may carry
credentials).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import httpx
import structlog
import trio

from gatewayd.errors import AITimeout, BadGateway, GatewayError, InvalidPayload, LangchainFailed
from gatewayd.jid import normalize_recipient, to_contract_jid
from gatewayd.nursery.commands import Outgoing
from gatewayd.outbound import map_exceptions, read_capped
from gatewayd.outbound.guard import check_url, open_checked, parse_http_url
from gatewayd.store.agents import AgentRecord
from gatewayd.store.executions import record_execution
from gatewayd.usecases.core import Services

log = structlog.get_logger(__name__)

#: Seconds one try may take, from connecting to the last byte of the answer.
TIMEOUT = 30.0
#: Tries in all, the first included.
TRIES = 3
#: Seconds to wait before the second try, the third, …
BACKOFF = (1.0, 2.0)
#: The largest answer read; a larger one is an invalid answer.
MAX_ANSWER_BYTES = 1024 * 1024

Reason = Literal["timeout", "connect", "status", "invalid_answer"]
_WHAT = "the Langchain endpoint"


@attrs.frozen
class LangchainRequest:
    """A ``POST /api/v1/langchain/execute`` body, parsed."""

    url: str
    api_key: str = attrs.field(repr=False)
    input: dict[str, Any]
    chat: str | None = None  # the body's ``sessionId``: a number or JID as the client wrote it


@attrs.frozen
class LangchainResult:
    """A successful execution, and what became of the reply to the chat."""

    execution_id: int
    response: dict[str, Any]  # the endpoint's JSON answer, as received
    duration_ms: int  # all tries, the waits between them included
    attempts: int
    reply_sent: bool = False
    reply_message_id: str | None = None
    reply_error: str | None = None  # why the reply was not sent, when it was due


@attrs.frozen
class _Try:
    """How one try ended: ``body`` on success, else ``reason`` (and ``status`` if it answered)."""

    body: dict[str, Any] | None = None
    reason: Reason | None = None
    status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.reason == "connect" or (self.status is not None and self.status >= 500)


async def execute(
    services: Services,
    record: AgentRecord,
    request: LangchainRequest,
    trace_id: str,
    *,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 - per try, also httpx's and in messages
    tries: int = TRIES,
    backoff: Sequence[float] = BACKOFF,
) -> LangchainResult:
    """Execute the endpoint for ``record``'s session; record it; send the reply if due.

    Raises InvalidPayload (not an absolute http(s) URL), InvalidRecipient (a chat that is not
    one), AddressRefused (the guard refused the host: nothing is sent or recorded), and
    LangchainFailed once the tries are spent (recorded; ``details`` as in §8.8).
    """
    host = _check_absolute(request.url)
    cfg = services.config
    jid = None
    if request.chat is not None:
        jid = normalize_recipient(
            request.chat, default_country_code=cfg.whatsapp.default_country_code
        )
    payload = dict(request.input)
    if jid is not None:
        payload["sessionId"] = to_contract_jid(jid)
    content = json.dumps(payload, ensure_ascii=False).encode()
    headers = {
        "Authorization": f"Bearer {request.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-Request-ID": trace_id,
    }
    begin = trio.current_time()
    attempts = 0
    outcome = _Try()
    for attempts in range(1, max(1, tries) + 1):
        if attempts > 1:
            await trio.sleep(backoff[min(attempts - 2, len(backoff) - 1)] if backoff else 0)
        outcome = await _try_once(
            services.http,
            request.url,
            host,
            content,
            headers,
            allow_private=cfg.media.allow_private_urls,
            timeout=timeout,
        )
        if not outcome.retryable:
            break
    duration = trio.current_time() - begin
    duration_ms = max(0, round(duration * 1000))

    if outcome.body is None:
        message = _failure_message(outcome, attempts, timeout)
        status = "timeout" if outcome.reason == "timeout" else "error"
        execution_id = await record_execution(
            services.db,
            record.id,
            request=payload,
            response=None,
            duration=duration,
            status=status,
            error=message,
            trace_id=trace_id,
        )
        log.warning(
            "gatewayd.langchain.executed",
            executionId=execution_id,
            agentId=record.agent_id,
            host=host,
            attempts=attempts,
            status=status,
            reason=outcome.reason,
            httpStatus=outcome.status,
            duration=duration_ms,
        )
        details: dict[str, Any] = {"executionId": execution_id, "reason": outcome.reason}
        if outcome.status is not None:
            details["status"] = outcome.status
        details["attempts"] = attempts
        raise LangchainFailed(message, timed_out=outcome.reason == "timeout", details=details)

    answer = outcome.body
    execution_id = await record_execution(
        services.db,
        record.id,
        request=payload,
        response=answer,
        duration=duration,
        status="success",
        trace_id=trace_id,
    )
    log.info(
        "gatewayd.langchain.executed",
        executionId=execution_id,
        agentId=record.agent_id,
        host=host,
        attempts=attempts,
        status="success",
        httpStatus=outcome.status,
        duration=duration_ms,
    )
    result = LangchainResult(execution_id, answer, duration_ms, attempts)
    text = reply_text(answer)
    if jid is None or text is None:
        return result
    try:
        sent = await services.agents.send(record.agent_id, Outgoing(to=jid, text=text), trace_id)
    except GatewayError as exc:
        # The endpoint answered and the answer is the client's; only WhatsApp failed.
        log.warning(
            "gatewayd.langchain.reply_failed",
            executionId=execution_id,
            agentId=record.agent_id,
            error=exc.message,
        )
        return attrs.evolve(result, reply_error=exc.message)
    return attrs.evolve(result, reply_sent=True, reply_message_id=sent.message_id)


def reply_text(answer: dict[str, Any]) -> str | None:
    """The text to send to the chat: ``output``, else ``reply``; a non-blank string or None."""
    for candidate in (answer.get("output"), answer.get("reply")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return None


def _check_absolute(url: str) -> str:
    """The host of ``url``, which must be an absolute http(s) URL (InvalidPayload if not)."""
    invalid = InvalidPayload(
        "'langchainUrl' must be an absolute http or https URL", details={"field": "langchainUrl"}
    )
    try:
        _, host = parse_http_url(url)
    except InvalidPayload:
        raise invalid from None
    return host


async def _try_once(
    client: httpx.AsyncClient,
    url: str,
    host: str,
    content: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,  # noqa: ASYNC109 - also httpx's per-operation timeout
) -> _Try:
    """One POST. Guard refusals propagate; every other failure is a ``_Try`` with a reason."""
    try:
        with (
            trio.fail_after(timeout),
            map_exceptions(_WHAT, host, timeout, on_timeout=AITimeout),
        ):
            # Inside the deadline: resolving the name is part of the try.
            checked = await check_url(url, allow_private=allow_private)
            async with open_checked(
                client, checked, method="POST", headers=headers, content=content, timeout=timeout
            ) as response:
                status = response.status_code
                raw, over = await read_capped(response, MAX_ANSWER_BYTES)
    except (trio.TooSlowError, AITimeout):
        return _Try(reason="timeout")
    except BadGateway:
        # map_exceptions' connection-level failures, and a name that does not resolve.
        return _Try(reason="connect")
    if not 200 <= status < 300:
        return _Try(reason="status", status=status)
    if over:
        return _Try(reason="invalid_answer", status=status)
    try:
        body = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return _Try(reason="invalid_answer", status=status)
    if not isinstance(body, dict):
        return _Try(reason="invalid_answer", status=status)
    return _Try(body=body, status=status)


def _failure_message(outcome: _Try, attempts: int, timeout: float) -> str:
    tries = f"{attempts} {'try' if attempts == 1 else 'tries'}"
    if outcome.reason == "timeout":
        return f"The Langchain endpoint did not answer within {timeout:g} s ({tries})"
    if outcome.reason == "connect":
        return f"Cannot connect to the Langchain endpoint ({tries})"
    if outcome.reason == "status":
        return f"The Langchain endpoint answered HTTP {outcome.status} ({tries})"
    return "The Langchain endpoint's answer is not a JSON object"
