"""The neonize ``WhatsAppBackend``: the device store and the clients that share it.

``open_neonize_backend`` prepares whatsmeow's store before any client exists: the schema (and,
with the embedded PostgreSQL, a dedicated role with ``idle_session_timeout``), then one
sequential whatsmeow schema upgrade, because parallel first connects race and fail
(docs/neonize.md, "The device store"). On exit every client's session is stopped with a
bounded wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import structlog
import trio

from gatewayd.errors import StoreUnavailable, WhatsAppError
from gatewayd.nursery.backoff import Backoff
from gatewayd.whatsapp.neonize import store as store
from gatewayd.whatsapp.neonize.client import STOP_WAIT, NeonizeClient
from gatewayd.whatsapp.neonize.env import (
    bot_tag_off,
    configure_neonize_logging,
    device_props,
    import_neonize,
)
from gatewayd.whatsapp.neonize.gate import FFI_LIMITER, GATE
from gatewayd.whatsapp.neonize.pairing import PairingConfig
from gatewayd.whatsapp.neonize.session import CALL_TIMEOUT, DRAIN_WAIT, Session
from gatewayd.whatsapp.neonize.translate import str_to_jid
from gatewayd.whatsapp.port import Disconnected

log = structlog.get_logger()

_STORE_LIMITER = trio.CapacityLimiter(4)  # psycopg calls on whatsmeow's tables


class NeonizeBackend:
    """Makes ``NeonizeClient``s and manages whatsmeow's device store."""

    def __init__(
        self, whatsmeow: store.WhatsmeowStore, *, device_name: str, log_level: str
    ) -> None:
        self.store = whatsmeow
        self.device_name = device_name
        self.log_level = log_level
        self._clients: dict[str, NeonizeClient] = {}
        self._running: dict[str, Session] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._closing = False
        self._props: Any = device_props(device_name)

    def __repr__(self) -> str:
        return f"NeonizeBackend({self.store!r}, clients={len(self._clients)})"

    def client(self, agent_id: str) -> NeonizeClient:
        """The client of one agent (the same object for repeated calls with one id)."""
        client = self._clients.get(agent_id)
        if client is None:
            client = self._clients[agent_id] = NeonizeClient(self, agent_id)
        return client

    async def known_devices(self) -> frozenset[str]:
        """Device JIDs with stored credentials (``user:device@s.whatsapp.net``)."""
        return await trio.to_thread.run_sync(
            store.device_jids, self.store.admin_dsn, self.store.schema, limiter=_STORE_LIMITER
        )

    async def forget_device(self, device_jid: str) -> None:
        """Remove a device's stored data (idempotent); a live connection is not touched.

        Taken under the exclusive gate so it cannot slip between a connect's store check and
        its start (resuming a deleted JID aborts the process).
        """
        async with GATE.exclusive():
            await trio.to_thread.run_sync(
                store.delete_device, self.store.admin_dsn, self.store.schema, device_jid,
                limiter=_STORE_LIMITER,
            )  # fmt: skip

    @staticmethod
    def retry_backoff() -> Backoff:
        """The backoff between connect attempts.

        Every attempt leaks a DB connection (docs/neonize.md, "The device store").
        """
        return Backoff(initial=5.0, maximum=300.0)

    def pairing_config(self) -> PairingConfig:
        """What the pairing child needs: the store URL and how the device calls itself."""
        return PairingConfig(
            url=self.store.url, device_name=self.device_name, log_level=self.log_level
        )

    # ------------------------------------------------------------------ for NeonizeClient

    async def device_known(self, device_jid: str) -> bool:
        """True when ``device_jid`` is in the store right now (a resume would not abort)."""
        return device_jid in await self.known_devices()

    async def new_neonize_client(self, device_jid: str) -> Any:
        """A fresh ``NewClient`` resuming ``device_jid``, its GC finalizer detached."""
        await trio.lowlevel.checkpoint()
        from neonize.client import NewClient

        nc = NewClient(
            self.store.url, jid=str_to_jid(device_jid, device_in_user=True), props=self._props
        )
        # Collecting an old NewClient would Stop(uuid), i.e. the *new* session of this device.
        nc._stop_finalizer.detach()
        return nc

    @contextmanager
    def claim_device(self, session: Session) -> Iterator[None]:
        """One session per device in this process: two would share neonize's key."""
        device_jid = session.device_jid
        if self._closing:
            raise WhatsAppError("the neonize backend is closed")
        if device_jid in self._running:
            raise WhatsAppError(
                f"device {device_jid!r} is already running", details={"device": device_jid}
            )
        self._running[device_jid] = session
        self._idle = trio.Event()
        try:
            yield
        finally:
            del self._running[device_jid]
            if not self._running:
                self._idle.set()

    async def aclose(
        self,
        *,
        timeout: float = CALL_TIMEOUT + DRAIN_WAIT + STOP_WAIT + 5.0,  # noqa: ASYNC109 - a shielded wait
    ) -> None:
        """End every session still running (normally their callers did), boundedly."""
        self._closing = True
        for session in list(self._running.values()):
            session.request_end(Disconnected("gatewayd stopping"))
        with trio.move_on_after(timeout):
            await self._idle.wait()
        if self._running:
            log.warning("gatewayd.whatsapp.neonize.sessions_left", devices=sorted(self._running))


@asynccontextmanager
async def open_neonize_backend(
    dsn: str,
    *,
    schema: str = "whatsmeow",
    device_name: str = "gatewayd",
    embedded: bool,
    log_level: str = "warning",
    idle_session_timeout: str = store.IDLE_SESSION_TIMEOUT,
) -> AsyncIterator[NeonizeBackend]:
    """Prepare whatsmeow's store in ``dsn`` and yield the backend; stop every session on exit.

    ``embedded`` says the database is gatewayd's embedded PostgreSQL (``dsn`` a superuser's):
    then neonize gets its own role with ``idle_session_timeout``. Otherwise the configured role
    is used and a missing ``idle_session_timeout`` is logged as a warning. ``log_level`` is the
    level of whatsmeow's Go-side logs; ``idle_session_timeout`` (embedded only) how long a
    leaked whatsmeow connection lives.
    """
    if not bot_tag_off():
        log.warning(
            "gatewayd.whatsapp.neonize.bot_tag_on",
            hint="NEONIZE_BOT_TAG=off was not in the environment at exec time: one-to-one "
            "messages will carry the bot badge (gatewayd run re-executes itself to avoid this)",
        )
    await trio.to_thread.run_sync(import_neonize)
    configure_neonize_logging(log_level)
    whatsmeow = await trio.to_thread.run_sync(
        partial(
            store.prepare_store,
            dsn,
            schema=schema,
            embedded=embedded,
            idle_session_timeout=idle_session_timeout,
        ),
        limiter=_STORE_LIMITER,
    )
    await _upgrade_schema(whatsmeow)
    backend = NeonizeBackend(whatsmeow, device_name=device_name, log_level=log_level)
    log.info(
        "gatewayd.whatsapp.neonize.ready", schema=schema, role=whatsmeow.role, embedded=embedded
    )
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()


async def _upgrade_schema(whatsmeow: store.WhatsmeowStore) -> None:
    """Let whatsmeow create or upgrade its tables once, before any client connects."""
    async with GATE.exclusive():
        await trio.to_thread.run_sync(
            upgrade_whatsmeow_schema, whatsmeow.url, whatsmeow.schema, limiter=FFI_LIMITER
        )


def upgrade_whatsmeow_schema(url: str, schema: str) -> None:
    """Open whatsmeow's store once through Go, which creates or upgrades its tables. Blocking.

    This is the Go export behind ``ClientFactory.get_all_devices_from_db``, called directly:
    that method splits Go's answer on "," while Go writes push and business names raw, so one
    linked account named "Smith, John" made it raise and the daemon could not start
    (docs/neonize.md, "Reading the device list"). Only Go's ``error:`` prefix is a failure
    here; the device list is read from the table itself (``neonize_store.device_jids``).
    """
    from neonize._binder import func_callback_bytes2, gocode
    from neonize.utils.log import log_whatsmeow

    log_callback = func_callback_bytes2(log_whatsmeow)  # alive for the whole call
    answer = gocode.GetAllDevices(url.encode(), log_callback)
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
    if text.startswith("error:"):
        reason = store.redact_url_secrets(text.removeprefix("error:").strip(), url)
        raise StoreUnavailable(
            f"whatsmeow could not open its store: {reason[:500]}", details={"schema": schema}
        )
