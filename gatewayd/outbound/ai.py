"""The AI backend client (docs/contract/agents-api.md §8, §14.2) and the /run request it serves.

One POST per call: JSON body, ``Authorization: Bearer <agent key>``, ``X-Request-ID:
<traceId>``, a deadline for the whole exchange. The answer is read up to a cap; the
minimal answer the contract processes is ``{"reply": "..."}``. The call goes through the AI
client's own connections (``gatewayd/outbound/aihttp.py``, which says why).

Which answers carry a reply. The contract names only ``reply``. We also read
``{"data": {"reply": …}}`` (the envelope this project and many backends wrap answers in)
and ``{"output": …}`` (what agent runners answer to the ``input``/``parameters`` form of
docs/contract/agents-api.md §14.2), in that order. A reply must be a non-blank string; anything else means
"no reply" rather than an error, as the deployed service behaves. An empty 2xx body is
``{}`` (no reply) for the same reason; a body that is not a JSON object is BadGateway.

The API key is sent, never logged or put into an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import structlog
import trio

from gatewayd.errors import AIDownstreamError, AITimeout, BadGateway
from gatewayd.jid import to_contract_jid
from gatewayd.outbound.aihttp import AiConnections, host_of

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The largest answer read from the AI backend.
MAX_ANSWER_BYTES = 1024 * 1024
#: How much of an error answer goes into AIDownstreamError.details.
EXCERPT_CHARS = 500


@attrs.frozen
class AIAnswer:
    """A 2xx answer of the AI backend."""

    status_code: int
    body: dict[str, Any]
    reply: str | None
    duration: float  # seconds, on trio's clock


async def call_ai(
    connections: AiConnections,
    url: str,
    *,
    api_key: str,
    payload: Mapping[str, Any],
    timeout: float,  # noqa: ASYNC109 - the deadline of the whole exchange, and in messages
    trace_id: str,
    idempotency_key: str | None = None,
) -> AIAnswer:
    """POST ``payload`` to the AI backend at ``url`` and return its answer.

    Raises AITimeout (no complete answer within ``timeout`` seconds), AIDownstreamError
    (non-2xx; ``details`` has the status and a short excerpt of the body), BadGateway
    (unreachable, invalid URL, not a JSON object, larger than MAX_ANSWER_BYTES).
    """
    headers = {
        "Authorization": f"Bearer {api_key}",
        "X-Request-ID": trace_id,
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    if idempotency_key is not None:
        # The WhatsApp message id: the same for every forward of one message, so a backend
        # can recognise the one repeat a crash can cause (docs/durability.md).
        headers["Idempotency-Key"] = idempotency_key
    # As httpx encodes a JSON body (what the backends have always been sent).
    content = json.dumps(
        dict(payload), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")
    host = host_of(url)
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            status, raw, truncated = await connections.post(
                url, headers, content, cap=MAX_ANSWER_BYTES, retry=idempotency_key is not None
            )
    except trio.TooSlowError:
        log.warning("gatewayd.ai.failed", host=host, reason="timeout", timeout=timeout)
        raise AITimeout(f"the AI backend at {host} did not answer within {timeout:g} s") from None
    duration = trio.current_time() - start
    log.info("gatewayd.ai.answered", host=host, status=status, duration=round(duration, 3))
    if not 200 <= status < 300:
        excerpt = raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
        raise AIDownstreamError(
            f"the AI backend answered HTTP {status}", details={"status": status, "body": excerpt}
        )
    if truncated:
        raise BadGateway(f"the AI backend's answer is larger than {MAX_ANSWER_BYTES} bytes")
    body = _json_object(raw)
    return AIAnswer(status, body, extract_reply(body), duration)


def extract_reply(body: Mapping[str, Any]) -> str | None:
    """The reply to send from an AI answer: ``reply``, else ``data.reply``, else ``output``."""
    data = body.get("data")
    candidates = (
        body.get("reply"),
        data.get("reply") if isinstance(data, Mapping) else None,
        body.get("output"),
    )
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return None


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise BadGateway("the AI backend's answer is not JSON") from None
    if not isinstance(body, dict):
        raise BadGateway(
            f"the AI backend's answer is JSON but not an object ({type(body).__name__})"
        )
    return body


# --- the /run request ------------------------------------------------------------------


@attrs.frozen
class RunRequest:
    """A ``POST /agents/{agentId}/run`` body, in either dialect (001 or 004), validated."""

    message: str
    session_jid: str | None  # WhatsApp's spelling; None when the client gave no session
    openai_api_key: str | None = None
    memory_enable: bool | None = None
    context_memory: str | int | None = None
    rag_enable: bool | None = None
    metadata: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None  # 004

    def payload(self) -> dict[str, Any]:
        """The body to POST to the AI backend for this request."""
        return build_run_payload(
            message=self.message,
            session_id=self.session_jid,
            openai_api_key=self.openai_api_key,
            memory_enable=self.memory_enable,
            context_memory=self.context_memory,
            rag_enable=self.rag_enable,
            metadata=self.metadata,
            parameters=self.parameters,
        )


def build_run_payload(
    *,
    message: str,
    session_id: str | None,
    openai_api_key: str | None = None,
    memory_enable: bool | None = None,
    context_memory: str | int | None = None,
    rag_enable: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
    whatsapp_name: str | None = None,
    chat_name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of docs/contract/agents-api.md §14.2. Options left None are omitted; ``sessionId`` is a JID in the
    contract's ``@c.us`` spelling; ``whatsapp_name``/``chat_name`` go into ``metadata``
    (which is always present, as the contract's example shows)."""
    body: dict[str, Any] = {"message": message}
    if session_id is not None:
        body["sessionId"] = to_contract_jid(session_id)
    options = {
        "openai_api_key": openai_api_key,
        "memory_enable": memory_enable,
        "context_memory": context_memory,
        "rag_enable": rag_enable,
    }
    body.update({key: value for key, value in options.items() if value is not None})
    meta = dict(metadata or {})
    if whatsapp_name is not None:
        meta["whatsapp_name"] = whatsapp_name
    if chat_name is not None:
        meta["chat_name"] = chat_name
    body["metadata"] = meta
    if parameters is not None:
        body["parameters"] = dict(parameters)
    return body
