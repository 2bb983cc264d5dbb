"""The inbound forwarder (docs/contract/agents-api.md §7–§8): filter → typing → AI → reply.

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

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs
import structlog

from gatewayd import textsafe
from gatewayd.config import Config
from gatewayd.errors import AITimeout, GatewayError
from gatewayd.jid import is_lid, lid_jid, normalize_recipient, phone_jid, to_contract_jid
from gatewayd.nursery.aicall import AiCaller
from gatewayd.nursery.commands import Outgoing
from gatewayd.nursery.handle import Answer
from gatewayd.nursery.mentions import mentions_agent
from gatewayd.outbound.ai import build_run_payload
from gatewayd.store import agents as agents_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.db import Database
from gatewayd.store.executions import Execution
from gatewayd.store.messages import StoredInbound
from gatewayd.store.retry import wait_for_database
from gatewayd.whatsapp.port import InboundMessage

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()


def ignore_reason(
    message: InboundMessage,
    *,
    own_jids: set[str],
    own_phone: str | None,
    default_country_code: str,
) -> str | None:
    """Why this message is not forwarded, or None when it is (docs/contract/agents-api.md §7.1)."""
    if message.is_status_broadcast:
        return "status_broadcast"
    if message.is_newsletter:
        return "newsletter"
    if message.is_from_me:
        return "from_me"
    if message.is_edit:
        return "edit"  # the original was answered already; a second answer would confuse
    if message.is_group and not mentions_agent(
        message,
        own_jids=own_jids,
        own_phone=own_phone,
        default_country_code=default_country_code,
    ):
        return "group_without_mention"
    if not (message.text or "").strip():
        return "media" if message.media_type else "empty"
    return None


async def _own_identity(handle: AgentHandle, db: Database) -> tuple[set[str], str | None]:
    """The agent's own JIDs (phone and LID) and phone. A LID pairing did not capture is
    looked up once (the client's local store) and cached on the agent record, so a mention
    by LID is recognised too."""
    record = handle.record
    if not record.lid and record.phone_number and handle.connected:
        try:
            lid = await handle.client.lid_for_pn(phone_jid(record.phone_number))
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
        jids.add(phone_jid(phone))
    if record.lid:
        jids.add(lid_jid(record.lid))
    return jids, phone


async def conversation_key(handle: AgentHandle, message: InboundMessage) -> str:
    """The AI conversation a message belongs to: the chat, by phone number whenever it can be
    known, so one person's conversation does not split in two when one message arrives
    addressed by LID before the adapter could resolve it (asked again here, in the client's
    local store)."""
    chat = message.chat
    if message.is_group or not is_lid(chat) or not handle.connected:
        return chat
    try:
        pn = await handle.client.pn_for_lid(chat)
    except GatewayError:
        return chat
    return pn or chat


@attrs.frozen
class Forwarder:
    """What becomes of each persisted inbound message: its outcome, or the reply to queue."""

    ai: AiCaller

    @property
    def _config(self) -> Config:
        return self.ai.settings()

    async def __call__(self, handle: AgentHandle, stored: StoredInbound) -> str | Answer:
        message = stored.message
        trace_id = stored.trace_id or uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(traceId=trace_id):
            own_jids, own_phone = await _own_identity(handle, self.ai.db)
            reason = ignore_reason(
                message,
                own_jids=own_jids,
                own_phone=own_phone,
                default_country_code=self._config.whatsapp.default_country_code,
            )
            if reason is not None:
                log.debug("gatewayd.forward.ignored", reason=reason, messageId=message.id)
                return f"ignored:{reason}"
            if not self._config.forwarding.enabled:
                return "recorded"
            return await self._forward(handle, stored, trace_id)

    async def _forward(
        self, handle: AgentHandle, stored: StoredInbound, trace_id: str
    ) -> str | Answer:
        message = stored.message
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
            answer = await self.ai(
                handle.record,
                payload,
                trace_id=trace_id,
                message_row=stored.row_id,
                count_errors=True,
                idempotency_key=message.id,
                wait_for_store=True,
                record_success=False,  # with the reply, or below
            )
        except GatewayError as exc:
            reason = "TIMEOUT" if isinstance(exc, AITimeout) else "ERROR"
            log.warning("gatewayd.forward.ai_failed", reason=reason, error=exc.message)
            await self._typing(handle, message.chat, False)
            await self._report(handle, message, reason, trace_id)
            return f"failed:{reason}"
        await self._typing(handle, message.chat, False)
        # Recorded with the reply it brought, in one transaction (gatewayd/nursery/agent.py);
        # a crash before that commit forwards the message again, and the repeated call is
        # the one recorded.
        execution = Execution(
            agent_uuid=handle.id, request=payload, response=answer.body,
            duration=answer.duration, status="success", trace_id=trace_id,
            message_id=stored.row_id,
        )  # fmt: skip
        if not answer.reply:
            await self.ai.record(execution)
            return "no_reply"
        # In a group the reply quotes the message, naming its sender as the group addresses it.
        quote = message.reply_quote() if message.is_group else None
        reply = Outgoing(to=message.chat, text=textsafe.clean(answer.reply), quote=quote)
        return Answer(reply, execution)

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
        number = self._config.forwarding.developer_number
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
                number, default_country_code=self._config.whatsapp.default_country_code
            )
        except GatewayError as exc:
            log.warning("gatewayd.forward.report_failed", error=exc.message)
            return
        db = self.ai.db
        report = Outgoing(to=to, text=text)
        await wait_for_database(
            db, lambda: outbound_store.queue(db, handle.id, report, trace_id=trace_id)
        )
        handle.outbox_fresh = None  # not handed over: the outbox reads the table
        handle.outbox_wake.set()
