"""The inbound forwarder (seed 001 §7–§8): filter → typing → AI → reply.

Each persisted inbound message comes here once (again after a restart if it was never
answered). What is ignored, what is sent to the AI, and what became of it ends up as the
message's ``outcome``; every AI call is recorded in ``ai_executions`` and carries the
WhatsApp message id as its ``Idempotency-Key``, so a message forwarded again after a crash
(between the AI call and recording its answer) is recognisable. A reply is not sent from
here: it is returned, and the agent queues it durably (the message is handled once the
reply went out). When the AI times out or fails, the user gets no reply and the developer
number gets a report, queued the same way.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from gatewayd import textsafe
from gatewayd.errors import AIDownstreamError, AITimeout, BadGateway, GatewayError
from gatewayd.jid import normalize_recipient, to_contract_jid
from gatewayd.nursery.commands import Outgoing
from gatewayd.outbound.ai import AIAnswer, build_run_payload, call_ai
from gatewayd.store import agents as agents_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Database
from gatewayd.store.executions import record_execution
from gatewayd.store.messages import StoredInbound
from gatewayd.store.retry import wait_for_database
from gatewayd.whatsapp.port import InboundMessage

if TYPE_CHECKING:
    from gatewayd.nursery.agent import AgentHandle
    from gatewayd.nursery.supervisor import Gateway

log = structlog.get_logger()


def ignore_reason(
    message: InboundMessage, *, own_jids: set[str], own_phone: str | None
) -> str | None:
    """Why this message is not forwarded, or None when it is (001 §7)."""
    if message.is_status_broadcast:
        return "status_broadcast"
    if message.is_newsletter:
        return "newsletter"
    if message.is_from_me:
        return "from_me"
    if message.is_edit:
        return "edit"  # the original was answered already; a second answer would confuse
    if message.is_group and not mentions_agent(message, own_jids=own_jids, own_phone=own_phone):
        return "group_without_mention"
    if not (message.text or "").strip():
        return "media" if message.media_type else "empty"
    return None


def mentions_agent(message: InboundMessage, *, own_jids: set[str], own_phone: str | None) -> bool:
    """Mentioned by phone JID or LID in the mention list, or as ``@628…`` in the text."""
    if own_jids.intersection(message.mentioned_jids):
        return True
    if own_phone and message.text:
        return re.search(rf"@{re.escape(own_phone)}(?!\d)", message.text) is not None
    return False


async def _own_identity(handle: AgentHandle, db: Database) -> tuple[set[str], str | None]:
    """The agent's own JIDs (phone and LID) and phone. A LID pairing did not capture is
    looked up once (the client's local store) and cached on the agent record, so a mention
    by LID is recognised too."""
    record = handle.record
    if not record.lid and record.phone_number and handle.connected:
        try:
            lid = await handle.client.lid_for_pn(f"{record.phone_number}@s.whatsapp.net")
        except GatewayError as exc:
            log.debug("gatewayd.forward.lid_lookup_failed", error=exc.message)
            lid = None
        if lid:
            await wait_for_database(db, lambda: agents_store.set_lid(db, record.id, lid))
            record = handle.record = attrs.evolve(handle.record, lid=lid)
            log.info("gatewayd.agent.lid_learned", lid=lid)
    jids: set[str] = set()
    phone = record.phone_number
    if phone:
        jids.add(f"{phone}@s.whatsapp.net")
    if record.lid:
        jids.add(record.lid if "@" in record.lid else f"{record.lid}@lid")
    return jids, phone


async def conversation_key(handle: AgentHandle, message: InboundMessage) -> str:
    """The AI conversation a message belongs to: the chat, by phone number whenever it can be
    known, so one person's conversation does not split in two when one message arrives
    addressed by LID before the adapter could resolve it (asked again here, in the client's
    local store)."""
    chat = message.chat
    if message.is_group or not chat.endswith("@lid") or not handle.connected:
        return chat
    try:
        pn = await handle.client.pn_for_lid(chat)
    except GatewayError:
        return chat
    return pn or chat


class Forwarder:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, handle: AgentHandle, stored: StoredInbound) -> str | Outgoing:
        gateway, message = self.gateway, stored.message
        trace_id = stored.trace_id or uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(traceId=trace_id):
            own_jids, own_phone = await _own_identity(handle, gateway.db)
            reason = ignore_reason(message, own_jids=own_jids, own_phone=own_phone)
            if reason is not None:
                log.debug("gatewayd.forward.ignored", reason=reason, messageId=message.id)
                return f"ignored:{reason}"
            if not gateway.config.forwarding.enabled:
                return "recorded"
            return await self._forward(handle, stored, trace_id)

    async def _forward(
        self, handle: AgentHandle, stored: StoredInbound, trace_id: str
    ) -> str | Outgoing:
        gateway, message = self.gateway, stored.message
        payload = build_run_payload(
            message=message.text or "",
            session_id=await conversation_key(handle, message),
            whatsapp_name=message.push_name,
            chat_name=message.chat if message.is_group else message.push_name,
            metadata={
                "from": to_contract_jid(message.sender),
                "messageId": message.id,
                "isGroup": message.is_group,
                "timestamp": message.timestamp_ms,
            },
        )
        await self._typing(handle, message.chat, True)
        try:
            answer = await ai_call(
                gateway,
                handle.record,
                payload,
                trace_id=trace_id,
                message_row=stored.row_id,
                count_errors=True,
                idempotency_key=message.id,
                wait_for_store=True,
            )
        except GatewayError as exc:
            reason = "TIMEOUT" if isinstance(exc, AITimeout) else "ERROR"
            log.warning("gatewayd.forward.ai_failed", reason=reason, error=exc.message)
            await self._typing(handle, message.chat, False)
            await self._report(handle, message, reason, trace_id)
            return f"failed:{reason}"
        await self._typing(handle, message.chat, False)
        if not answer.reply:
            return "no_reply"
        # In a group the reply quotes the message, naming its sender as the group addresses it.
        quote = message.reply_quote() if message.is_group else None
        return Outgoing(to=message.chat, text=textsafe.clean(answer.reply), quote=quote)

    async def _typing(self, handle: AgentHandle, chat: str, on: bool) -> None:
        if not handle.connected:
            return
        try:
            await handle.client.set_typing(chat, on)
        except GatewayError as exc:
            # Typing is a courtesy: failing to show it never stops the forwarding.
            log.debug("gatewayd.forward.typing_failed", error=exc.message)

    async def _report(
        self, handle: AgentHandle, message: InboundMessage, reason: str, trace_id: str
    ) -> None:
        number = self.gateway.config.forwarding.developer_number
        if not number:
            return
        text = (
            "[gatewayd] AI forwarding failed\n"
            f"agentId: {handle.agent_id}\n"
            f"from: {to_contract_jid(message.sender)}\n"
            f"text: {(message.text or '')[:500]}\n"
            f"reason: {reason}\n"
            f"traceId: {trace_id}\n"
            f"timestamp: {datetime.now(UTC).isoformat()}"
        )
        try:
            to = normalize_recipient(
                number, default_country_code=self.gateway.config.whatsapp.default_country_code
            )
        except GatewayError as exc:
            log.warning("gatewayd.forward.report_failed", error=exc.message)
            return
        db = self.gateway.db
        report = Outgoing(to=to, text=text)
        await wait_for_database(
            db, lambda: outbound_store.queue(db, handle.id, report, trace_id=trace_id)
        )
        handle.outbox_wake.set()


def ai_endpoint(gateway: Gateway, record: AgentRecord) -> str | None:
    """The agent's ``endpoint_url_run``, else ``${AI_BACKEND_URL}/agents/{agentId}/run``."""
    if record.endpoint_url_run:
        return str(record.endpoint_url_run)
    base = gateway.config.ai.backend_url.rstrip("/")
    return f"{base}/agents/{record.agent_id}/run" if base else None


async def ai_call(
    gateway: Gateway,
    record: AgentRecord,
    payload: dict[str, Any],
    *,
    trace_id: str,
    message_row: int | None = None,
    count_errors: bool = False,
    idempotency_key: str | None = None,
    wait_for_store: bool = False,
) -> AIAnswer:
    """Call the agent's AI endpoint; record the execution and the latency either way.

    ``wait_for_store``: recording waits out a database outage instead of failing.

    ``count_errors``: count a failure in whatsapp_errors_total here (the forwarder);
    HTTP callers leave it to the HTTP edge, which counts every error answer once."""
    url = ai_endpoint(gateway, record)
    if url is None:
        raise BadGateway(
            "No AI endpoint: the agent has no endpoint_url_run and ai.backend_url is not set"
        )
    begin = trio.current_time()
    try:
        answer = await call_ai(
            gateway.http,
            url,
            api_key=record.api_key,
            payload=payload,
            timeout=gateway.config.ai.timeout,
            trace_id=trace_id,
            idempotency_key=idempotency_key,
        )
    except GatewayError as exc:
        duration = trio.current_time() - begin
        gateway.metrics.wa_ai_latency.observe(duration)
        code = (
            "AI_TIMEOUT"
            if isinstance(exc, AITimeout)
            else ("AI_DOWNSTREAM_ERROR" if isinstance(exc, AIDownstreamError) else "BAD_GATEWAY")
        )
        if count_errors:
            gateway.metrics.wa_errors.labels(code).inc()
        await _record(
            gateway,
            wait_for_store,
            record.id,
            request=payload,
            response=None,
            duration=duration,
            status="timeout" if isinstance(exc, AITimeout) else "error",
            error=exc.message,
            trace_id=trace_id,
            message_id=message_row,
        )
        raise
    gateway.metrics.wa_ai_latency.observe(answer.duration)
    await _record(
        gateway,
        wait_for_store,
        record.id,
        request=payload,
        response=answer.body,
        duration=answer.duration,
        status="success",
        trace_id=trace_id,
        message_id=message_row,
    )
    return answer


async def _record(gateway: Gateway, wait: bool, agent_uuid: uuid.UUID, **fields: Any) -> None:
    """Record an AI call. ``wait``: through a database outage (the forwarder: failing here
    would make it call the AI again for an answer it already has)."""
    db = gateway.db
    if wait:
        await wait_for_database(db, lambda: record_execution(db, agent_uuid, **fields))
    else:
        await record_execution(db, agent_uuid, **fields)
