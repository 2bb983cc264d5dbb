"""What the use cases are given: narrow interfaces onto the running daemon.

The composition root (``gatewayd/app.py``) builds one ``Services`` and hands it to both HTTP
dialects. Use cases see the store, the agents (through the ``Agents`` protocol, not the
supervisor), the live settings, the outbound HTTP client and the AI caller — never the daemon's
reload, signals or nurseries.

Also here: :class:`AgentRows`, the agents' rows as last read, which the read use cases answer
from while the runtime shows the agent unchanged.
"""

from __future__ import annotations

import uuid
import weakref
from collections import OrderedDict
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
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Database
from gatewayd.usecases.identity import IdentityConfig, OneRead
from gatewayd.usecases.tokens import AuthSecrets

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()


class Agents(Protocol):
    """The running agents, as the use cases drive them."""

    def get(self, agent_id: str) -> AgentHandle | None: ...

    def handles(self) -> list[AgentHandle]: ...

    def by_id(self, agent_uuid: uuid.UUID) -> AgentHandle | None: ...

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


#: What a read saw of a running agent: its handle, the handle's record, status and reason.
Seen = tuple["AgentHandle", AgentRecord, str, "str | None"]


def seen(handle: AgentHandle) -> Seen:
    return (handle, handle.record, handle.status, handle.status_reason)


def _unchanged(handle: AgentHandle | None, was: Seen) -> bool:
    return (
        handle is was[0]
        and handle.record is was[1]
        and handle.status == was[2]
        and handle.status_reason == was[3]
    )


@attrs.define
class _Row:
    record: AgentRecord
    seen: Seen
    #: trio clock: when the row must be read again whatever the runtime shows.
    recheck_at: float


@attrs.define
class _Listing:
    agent_ids: list[str]
    recheck_at: float


class AgentRows:
    """Agents' rows as last read, so that reading a running agent needs no query.

    The runtime holds every running agent (its handle: status, QR, connection); the row holds
    what only the database has (name, webhook settings, phone, timestamps, uptime figures). A
    row read while its agent ran is answered again as long as the handle shows no change: the
    same handle (not restarted, stopped or deleted), the same ``handle.record`` (replaced on
    pairing, unlinking, a LID learnt, a rename or webhook change) and the same status and
    reason. The agent's tree writes the row before it changes any of these
    (gatewayd/nursery/agent.py ``set_status``, ``_store_device``), and the supervisor drops a
    handle before it writes a stopped, logged-out or deleted agent's row; so a row whose agent
    still shows what it showed when the row was read is the row as it is now. What the use
    cases change without the handle (an agent's key, a rename, a new session) calls
    :meth:`forget`. What another process changes is seen within ``ttl``.

    Rows of agents that are not running are never answered from here: such an agent can be
    changed or deleted without a trace in memory. A user's list of sessions is answered from
    here only while every one of them runs (and no session was created since, which forgets
    the list); a deleted one was running, so its handle is gone and the list is read again.

    Fills are tagged with what they saw *before* reading (``seen`` and ``epoch``): a change
    that lands while the query runs makes the handle differ from what the row is kept with.
    A row or list that lapsed (``ttl``) is read again by one request at a time, the others
    answered the lapsed one meanwhile (``row_reads``, ``list_reads``: see
    gatewayd/usecases/identity.py ``OneRead``).
    """

    def __init__(self, *, size: int = 10_000, ttl: float = 10.0) -> None:
        self.size = size
        self.ttl = ttl
        self._rows: OrderedDict[str, _Row] = OrderedDict()  # by agent_id, least recent first
        self._listings: OrderedDict[str, _Listing] = OrderedDict()  # by user_id
        #: Bumped by every ``forget``: a fill that began before one is dropped.
        self.epoch = 0
        self.row_reads = OneRead[str, "AgentRecord | None"]()
        self.list_reads = OneRead[str, list[AgentRecord]]()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, agent_id: str, handle: AgentHandle | None) -> AgentRecord | None:
        """The agent's row, if it was read within the TTL while ``handle`` (the running
        agent) showed what it shows now."""
        found = self.look(agent_id, handle)
        return found[0] if found is not None and found[1] else None

    def look(self, agent_id: str, handle: AgentHandle | None) -> tuple[AgentRecord, bool] | None:
        """The agent's row, if it was read while ``handle`` showed what it shows now, and
        whether that was within the TTL (else it lapsed)."""
        row = self._rows.get(agent_id)
        if row is None:
            return None
        now = trio.current_time()
        if not _unchanged(handle, row.seen) or now >= row.recheck_at + self.ttl:
            del self._rows[agent_id]
            return None
        self._rows.move_to_end(agent_id)
        return row.record, now < row.recheck_at

    def put(self, record: AgentRecord, was: Seen | None, epoch: int) -> None:
        """Keep ``record``, read after seeing ``was`` (None: the agent was not running, and
        nothing is kept) at ``epoch``."""
        if was is None or epoch != self.epoch or was[0].agent_id != record.agent_id:
            return
        self._rows[record.agent_id] = _Row(record, was, trio.current_time() + self.ttl)
        self._rows.move_to_end(record.agent_id)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def listing(self, user_id: str, agents: Agents) -> list[AgentRecord] | None:
        """The user's rows as last listed (same order), if listed within the TTL and every
        one is still good."""
        found = self.look_listing(user_id, agents)
        return found[0] if found is not None and found[1] else None

    def look_listing(self, user_id: str, agents: Agents) -> tuple[list[AgentRecord], bool] | None:
        """The user's rows as last listed, if every one is still good, and whether they were
        listed within the TTL (else the list lapsed)."""
        listed = self._listings.get(user_id)
        if listed is None:
            return None
        now = trio.current_time()
        records = []
        if now < listed.recheck_at + self.ttl:
            for agent_id in listed.agent_ids:
                row = self._rows.get(agent_id)
                if row is None or not _unchanged(agents.get(agent_id), row.seen):
                    break
                records.append(row.record)
            else:
                self._listings.move_to_end(user_id)
                return records, now < listed.recheck_at
        del self._listings[user_id]
        return None

    def put_listing(
        self, user_id: str, records: list[AgentRecord], was: dict[str, Seen], epoch: int
    ) -> None:
        """Keep the user's list, read after seeing the running agents ``was`` at ``epoch``;
        only when each of them was running."""
        if epoch != self.epoch or any(r.agent_id not in was for r in records):
            return
        for record in records:
            self.put(record, was[record.agent_id], epoch)
        self._listings[user_id] = _Listing(
            [r.agent_id for r in records], trio.current_time() + self.ttl
        )
        self._listings.move_to_end(user_id)
        while len(self._listings) > self.size:
            self._listings.popitem(last=False)

    def forget(self, *, agent_id: str | None = None, user_id: str | None = None) -> None:
        """Read the agent's row, the user's list, again next time (they changed, or may)."""
        self.epoch += 1
        if agent_id is not None:
            self._rows.pop(agent_id, None)
        if user_id is not None:
            self._listings.pop(user_id, None)


_rows: weakref.WeakKeyDictionary[Database, AgentRows] = weakref.WeakKeyDictionary()


def agent_rows(db: Database) -> AgentRows:
    """The agents' rows of ``db``, as last read (one cache per open database)."""
    rows = _rows.get(db)
    if rows is None:
        rows = _rows[db] = AgentRows()
    return rows


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
                agent_rows(self._db).forget(agent_id=agent_id)
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
    def records(self) -> AgentRows:
        """The agents' rows as last read (:class:`AgentRows`)."""
        return agent_rows(self.db)

    @property
    def identity(self) -> IdentityConfig:
        """The identity use cases' settings, with the live token lifetime."""
        return IdentityConfig.from_config(self.settings().auth, self.secrets)

    @property
    def config(self) -> Config:
        """The live configuration (re-read on every access: a reload changes it)."""
        return self.settings()
