"""One call to an agent's AI endpoint, recorded: the forwarder and ``/agents/{id}/run`` share it.

The call's latency is observed and the execution written to ``ai_executions`` whatever the
outcome, so analytics and debugging see failures as well as answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from gatewayd.config import Config
from gatewayd.errors import AIDownstreamError, AITimeout, BadGateway, GatewayError
from gatewayd.metrics import Metrics
from gatewayd.outbound.ai import AIAnswer, call_ai
from gatewayd.outbound.aihttp import AiConnections
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Database
from gatewayd.store.executions import Execution, insert_execution
from gatewayd.store.retry import wait_for_database


@attrs.frozen(kw_only=True)
class AiCaller:
    """Calls an agent's AI endpoint with the agent's key; records every execution.

    The calls go through ``connections``, the AI client's own (``gatewayd/outbound/aihttp.py``
    says why not the shared httpx client); ``aclose`` closes its idle connections."""

    db: Database
    metrics: Metrics
    settings: Callable[[], Config]
    connections: AiConnections = attrs.field(factory=AiConnections, repr=False)

    async def aclose(self) -> None:
        await self.connections.aclose()

    def endpoint(self, record: AgentRecord) -> str | None:
        """The agent's ``endpoint_url_run``, else ``${AI_BACKEND_URL}/agents/{agentId}/run``."""
        if record.endpoint_url_run:
            return str(record.endpoint_url_run)
        base = self.settings().ai.backend_url.rstrip("/")
        return f"{base}/agents/{record.agent_id}/run" if base else None

    async def __call__(
        self,
        record: AgentRecord,
        payload: dict[str, Any],
        *,
        trace_id: str,
        message_row: int | None = None,
        count_errors: bool = False,
        idempotency_key: str | None = None,
        wait_for_store: bool = False,
        record_success: bool = True,
    ) -> AIAnswer:
        """Call the agent's AI endpoint; record the execution and the latency either way.

        ``wait_for_store``: recording waits out a database outage instead of failing.

        ``record_success=False``: a successful call is left for the caller to record
        (``execution``), with what it writes next in the same transaction.

        ``count_errors``: count a failure in whatsapp_errors_total here (the forwarder);
        HTTP callers leave it to the HTTP edge, which counts every error answer once."""
        url = self.endpoint(record)
        if url is None:
            raise BadGateway(
                "No AI endpoint: the agent has no endpoint_url_run and ai.backend_url is not set"
            )
        begin = trio.current_time()
        try:
            answer = await call_ai(
                self.connections,
                url,
                api_key=record.api_key,
                payload=payload,
                timeout=self.settings().ai.timeout,
                trace_id=trace_id,
                idempotency_key=idempotency_key,
            )
        except GatewayError as exc:
            duration = trio.current_time() - begin
            self.metrics.wa_ai_latency.observe(duration)
            if count_errors:
                self.metrics.wa_errors.labels(_error_code(exc)).inc()
            failed = Execution(
                agent_uuid=record.id, request=payload, response=None, duration=duration,
                status="timeout" if isinstance(exc, AITimeout) else "error", error=exc.message,
                trace_id=trace_id, message_id=message_row,
            )  # fmt: skip
            await self._record(failed, wait=wait_for_store)
            raise
        self.metrics.wa_ai_latency.observe(answer.duration)
        if record_success:
            answered = Execution(
                agent_uuid=record.id, request=payload, response=answer.body,
                duration=answer.duration, status="success", trace_id=trace_id,
                message_id=message_row,
            )  # fmt: skip
            await self._record(answered, wait=wait_for_store)
        return answer

    async def record(self, execution: Execution) -> None:
        """Record a successful call left unrecorded, through a database outage."""
        await self._record(execution, wait=True)

    async def _record(self, execution: Execution, *, wait: bool) -> None:
        """Record an AI call. ``wait``: through a database outage (the forwarder: failing here
        would make it call the AI again for an answer it already has)."""
        db = self.db
        if wait:
            await wait_for_database(db, lambda: db.run(insert_execution, execution))
        else:
            await db.run(insert_execution, execution)


def _error_code(exc: GatewayError) -> str:
    if isinstance(exc, AITimeout):
        return "AI_TIMEOUT"
    return "AI_DOWNSTREAM_ERROR" if isinstance(exc, AIDownstreamError) else "BAD_GATEWAY"
