"""The downloader of received media, in the background and on demand.

Every inbound image, document, audio, video and sticker message is downloaded through the
WhatsApp port after it is committed: the bus's ``message`` event (published once the row is
in the database) queues its row id, and ``media.inbound_concurrency`` workers download. Nothing
here is on the path of the WhatsApp callback, the forwarder or the webhook: the queue is
bounded and never waited on, and what does not fit (or arrives while the bus dropped us, or
before a restart) is found again by the sweep of rows neither stored nor failed, at start and
every ``SWEEP_INTERVAL``. An agent that is not connected leaves its rows pending for a later
sweep; any other failure, and an attachment over ``media.inbound_max_bytes``, is recorded on the
row (``media.download_error``). ``ensure`` — what a media link's GET calls — downloads on demand
when the file is missing and the agent is connected; concurrent calls for one row share one
download.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog
import trio

from gatewayd.config import Config
from gatewayd.errors import GatewayError, MediaTooLarge, NotConnected, NotFound, WhatsAppError
from gatewayd.media import links
from gatewayd.media.files import inbound_dir, media_file, write_media
from gatewayd.nursery.bus import EventBus
from gatewayd.store import inbound_media as store
from gatewayd.store.db import Database
from gatewayd.store.inbound_media import DOWNLOADABLE, MediaRow
from gatewayd.usecases.tokens import AuthSecrets
from gatewayd.whatsapp.port import WhatsAppClient

log = structlog.get_logger()

QUEUE_SIZE = 1024
"""Row ids waiting for a worker; more are left to the sweep."""

SWEEP_INTERVAL = 300.0
"""Seconds between two sweeps for rows left pending (agent offline, queue full, bus drop)."""

SWEEP_LIMIT = 500
"""Rows one sweep takes per agent."""

DOWNLOAD_DEADLINE = 300.0
"""Longest one download may take, whatever the adapter's own deadline."""


class _Handle(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def client(self) -> WhatsAppClient: ...


class AgentLookup(Protocol):
    """The running agents, as far as downloading needs them (``AgentSupervisor`` is one)."""

    def get(self, agent_id: str) -> _Handle | None: ...


class InboundMedia:
    """Downloads, keeps and hands out received media; ``url`` makes its signed links."""

    def __init__(
        self,
        *,
        db: Database,
        agents: AgentLookup,
        bus: EventBus,
        settings: Callable[[], Config],
        secrets: AuthSecrets,
        binds: Callable[[], Sequence[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._agents = agents
        self._bus = bus
        self._settings = settings
        self._secrets = secrets
        self._binds = binds
        self._clock = clock
        self._send, self._receive = trio.open_memory_channel[int](QUEUE_SIZE)
        self._queued: set[int] = set()
        self._inflight: dict[int, trio.Event] = {}

    # ------------------------------------------------------------------ links

    def url(self, row_id: int, message_type: str | None, *, now: float | None = None) -> str | None:
        """The signed link to a message's attachment (None for types without one), valid
        ``media.link_ttl`` s from ``now`` (default: the wall clock)."""
        config = self._settings()
        return links.media_url(
            links.public_base(config, self._binds()),
            self._secrets,
            row_id,
            message_type,
            now=self._clock() if now is None else now,
            ttl=config.media.link_ttl,
        )

    def check(self, row_id: int, expires: int, sig: str) -> None:
        """Forbidden unless the link is signed by us and not expired."""
        links.check_link(self._secrets, row_id, expires, sig, now=self._clock())

    # ------------------------------------------------------------------ the background

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Workers, the bus listener and the sweep; until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._settings().media.inbound_concurrency):
                nursery.start_soon(self._worker)
            await nursery.start(self._listen)
            nursery.start_soon(self._sweep_every, SWEEP_INTERVAL)
            task_status.started()

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            with self._bus.subscribe(None, buffer=QUEUE_SIZE) as sub:
                if not started:
                    task_status.started()
                    started = True
                # Subscribed first, then swept: a row committed in between is in one or both.
                await self.sweep()
                async for event in sub:
                    if event.kind == "message" and event.data.get("mediaType") in DOWNLOADABLE:
                        row_id = event.data.get("rowId")
                        if isinstance(row_id, int):
                            self.enqueue(row_id)
            # The bus dropped us (a burst): subscribe again and sweep what was missed.
            log.warning("gatewayd.media.listener_dropped")

    async def _sweep_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            await self.sweep()

    async def sweep(self) -> int:
        """Queue the rows still pending; how many were found."""
        config = self._settings()
        try:
            await self._db.wait_available()
            rows = await store.pending_media(self._db, config.media.inbound_retention, SWEEP_LIMIT)
        except GatewayError as exc:
            log.warning("gatewayd.media.sweep_failed", error=exc.message)
            return 0
        for row_id in rows:
            self.enqueue(row_id)
        return len(rows)

    def enqueue(self, row_id: int) -> None:
        """Ask for a background download of ``row_id``; never waits (a full queue leaves it to
        the next sweep)."""
        if row_id in self._queued or row_id in self._inflight:
            return
        try:
            self._send.send_nowait(row_id)
        except trio.WouldBlock:
            return
        self._queued.add(row_id)

    async def _worker(self) -> None:
        async for row_id in self._receive:
            self._queued.discard(row_id)
            try:
                await self.ensure(row_id)
            except NotConnected:
                pass  # pending: the next sweep tries again
            except GatewayError as exc:
                log.info("gatewayd.media.not_downloaded", rowId=row_id, error=exc.message)

    # ------------------------------------------------------------------ on demand

    async def ensure(self, row_id: int) -> tuple[MediaRow, Path]:
        """The row and its kept file, downloading it first when missing.

        NotFound for a row that is not an inbound media message; NotConnected when the file is
        missing and the agent is not connected; MediaTooLarge / WhatsAppError when the download
        fails (recorded on the row).
        """
        while True:
            busy = self._inflight.get(row_id)
            if busy is not None:
                await busy.wait()
                continue
            row = await store.media_row(self._db, row_id)
            if row is None:
                raise NotFound("No such media")
            path = media_file(inbound_dir(self._settings()), row_id)
            if row.stored and await trio.to_thread.run_sync(path.is_file):
                return row, path
            if row_id not in self._inflight:  # else another caller began meanwhile: wait
                break
        done = self._inflight[row_id] = trio.Event()
        try:
            await self._download(row, path)
        finally:
            del self._inflight[row_id]
            done.set()
        return row, path

    async def _download(self, row: MediaRow, path: Path) -> None:
        limit = self._settings().media.inbound_max_bytes
        if row.media.size > limit:
            await self._failed(row, f"too large: {row.media.size} bytes (limit {limit})")
            raise MediaTooLarge(f"The media is larger than {limit} bytes")
        handle = self._agents.get(row.agent_id)
        if handle is None or not handle.connected:
            raise NotConnected(f"Session {row.agent_id!r} is not connected")
        try:
            with trio.fail_after(DOWNLOAD_DEADLINE):
                data = await handle.client.download_media(row.media)
        except NotConnected:
            raise
        except trio.TooSlowError:
            await self._failed(row, f"timed out after {DOWNLOAD_DEADLINE:g} s")
            raise WhatsAppError("The media download timed out") from None
        except WhatsAppError as exc:
            await self._failed(row, exc.message)
            raise
        if len(data) > limit:
            await self._failed(row, f"too large: {len(data)} bytes (limit {limit})")
            raise MediaTooLarge(f"The media is larger than {limit} bytes")
        write = functools.partial(write_media, path.parent, row.row_id, data)
        try:
            digest = await trio.to_thread.run_sync(write)
        except OSError as exc:
            log.error("gatewayd.media.write_failed", rowId=row.row_id, error=str(exc))
            raise WhatsAppError("The media could not be kept") from None
        await store.record_stored(self._db, row.row_id, size=len(data), sha256=digest)
        log.info("gatewayd.media.stored", rowId=row.row_id, agentId=row.agent_id, bytes=len(data))

    async def _failed(self, row: MediaRow, error: str) -> None:
        log.info("gatewayd.media.download_failed", rowId=row.row_id, error=error)
        await store.record_failed(self._db, row.row_id, error)
