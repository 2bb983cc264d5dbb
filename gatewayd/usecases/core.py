"""What the use cases are given: narrow interfaces onto the running daemon.

The composition root (``gatewayd/app.py``) builds one ``Services`` and hands it to both HTTP
dialects. Use cases see the store, the agents (through the ``Agents`` protocol, not the
supervisor), the live settings, the outbound HTTP client and the AI caller — never the daemon's
reload, signals or nurseries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import httpx
import structlog
import trio

from gatewayd.config import AuthConfig, Config
from gatewayd.errors import GatewayError
from gatewayd.limits import KeyedLimiter, LoginThrottle
from gatewayd.media.fetch import InboundMedia
from gatewayd.metrics import Metrics
from gatewayd.nursery.aicall import AiCaller
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.commands import Outgoing, Sent
from gatewayd.nursery.webhooks import WebhookDispatcher
from gatewayd.store import keys as keys_store
from gatewayd.store.db import Database
from gatewayd.usecases.identity import IdentityConfig
from gatewayd.usecases.tokens import AuthSecrets

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()


class Agents(Protocol):
    """The running agents, as the use cases drive them."""

    def get(self, agent_id: str) -> AgentHandle | None: ...

    async def start(self, agent_id: str) -> AgentHandle: ...

    async def new_pairing(self, agent_id: str) -> AgentHandle: ...

    async def restart(self, agent_id: str) -> AgentHandle: ...

    async def logout(self, agent_id: str) -> bool: ...

    async def delete(self, agent_id: str) -> bool: ...

    async def send(
        self,
        agent_id: str,
        message: Outgoing,
        trace_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Sent: ...

    def health(self) -> dict[str, Any]: ...


class KeySync:
    """Re-syncs agents' keys to their users' latest active keys, in the background.

    A Bearer mismatch asks for a re-sync (``request``) and answers 401 at once; the work runs in
    ``run``, started in the daemon's nursery. Requests are coalesced per agent and bounded: a
    flood of wrong keys cannot queue unbounded work.
    """

    def __init__(self, db: Database, settings: Callable[[], Config], *, pending: int = 256) -> None:
        self._db = db
        self._settings = settings
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](pending)
        self._queued: set[str] = set()

    def request(self, agent_id: str, user_id: str) -> None:
        if agent_id in self._queued:
            return
        try:
            self._send.send_nowait((agent_id, user_id))
        except trio.WouldBlock:
            log.warning("gatewayd.auth.key_resync_dropped", agentId=agent_id)
            return
        self._queued.add(agent_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for agent_id, user_id in self._receive:
            self._queued.discard(agent_id)
            await self.resync(agent_id, user_id)

    async def resync(self, agent_id: str, user_id: str) -> bool:
        """Set the agent's key to its user's latest active key; True when it changed."""
        try:
            table = self._settings().database.api_keys_table
            key = await keys_store.latest_active_key(self._db, table, user_id)
            if key and await keys_store.set_agent_key(self._db, agent_id, key):
                log.info("gatewayd.auth.key_resynced", agentId=agent_id)
                return True
        except GatewayError as exc:
            log.warning("gatewayd.auth.key_resync_failed", agentId=agent_id, error=exc.message)
        return False


@attrs.frozen
class Limits:
    """The /api/v1 request budgets (docs/contract/api-v1.md §4.6, §9)."""

    #: Per authenticated user.
    users: KeyedLimiter
    #: Per client address, for routes without a user and for refused credentials.
    anonymous: KeyedLimiter
    #: Failed PIN logins, per client address and in total.
    logins: LoginThrottle

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Limits:
        return cls(
            users=KeyedLimiter(auth.requests_per_minute),
            anonymous=KeyedLimiter(auth.anonymous_requests_per_minute),
            logins=LoginThrottle(
                auth.login_attempts_per_minute, auth.login_attempts_global_per_minute
            ),
        )

    def reconfigure(self, auth: AuthConfig) -> None:
        self.users.reconfigure(auth.requests_per_minute)
        self.anonymous.reconfigure(auth.anonymous_requests_per_minute)
        self.logins.reconfigure(
            auth.login_attempts_per_minute, auth.login_attempts_global_per_minute
        )


@attrs.frozen
class Services:
    """The daemon as the use cases see it."""

    db: Database
    agents: Agents
    settings: Callable[[], Config]
    http: httpx.AsyncClient
    metrics: Metrics
    ai: AiCaller
    keysync: KeySync
    secrets: AuthSecrets = attrs.field(repr=False)
    limits: Limits
    #: The events bus (live status, QR and messages).
    bus: EventBus
    #: Received media: downloads, files and signed links.
    media: InboundMedia
    #: The webhook outbox's dispatcher (woken when a delivery is queued or replayed).
    webhooks: WebhookDispatcher

    @property
    def identity(self) -> IdentityConfig:
        """The identity use cases' settings, with the live token lifetime."""
        return IdentityConfig.from_config(self.settings().auth, self.secrets)

    @property
    def config(self) -> Config:
        """The live configuration (re-read on every access: a reload changes it)."""
        return self.settings()
