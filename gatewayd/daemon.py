"""The composition root: builds the daemon and owns the one nursery everything runs in.

``run_gateway`` opens the database (starting the embedded PostgreSQL when no URL is
configured), applies migrations, opens the WhatsApp backend, wires the parts together (the
agents supervisor, the forwarder, the use cases' ``Services``, the HTTP application), then
starts — each with ``nursery.start`` so a failure surfaces where it was asked for — the signal
task, the watchdog, the agents nursery, the background tasks and the HTTP server. systemd
hears READY only after all of them started. Nothing else builds these parts: ``nursery/``
never sees HTTP, and HTTP handlers see only ``Services`` and ``Ops``.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import structlog
import trio

from gatewayd import log as logsetup
from gatewayd.config import Config
from gatewayd.config_changes import Change, diff, mask, merge_live
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.http.app import create_app, hypercorn_config, serve_http
from gatewayd.media.fetch import InboundMedia
from gatewayd.metrics import Metrics
from gatewayd.notify import Notifier
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.aicall import AiCaller
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.cleanup import run_cleanup
from gatewayd.nursery.forwarder import Forwarder
from gatewayd.nursery.retention import run_retention
from gatewayd.outbound import new_client
from gatewayd.store.db import Database, open_database
from gatewayd.store.embedded import open_embedded_postgres
from gatewayd.store.migrations import migrate_up
from gatewayd.usecases import identity
from gatewayd.usecases.core import KeySync, Limits, Services
from gatewayd.usecases.tokens import AuthSecrets, load_secret
from gatewayd.whatsapp.port import WhatsAppBackend
from gatewayd.whatsapp.sim import SimulatedWhatsApp

log = structlog.get_logger()


@attrs.define(eq=False)
class Gateway:
    """The running daemon: its parts, its live config and its reload; what ``run_gateway``
    hands to its caller (tests, the CLI). Handlers and use cases never see it."""

    config: Config
    db: Database
    metrics: Metrics
    notifier: Notifier
    backend: WhatsAppBackend
    bus: EventBus
    agents: AgentSupervisor
    services: Services
    config_path: Path | None = None
    environ: Mapping[str, str] = attrs.field(factory=dict)
    started_at: float = attrs.field(factory=time.monotonic)
    #: Set to ask for a graceful stop (SIGTERM/SIGINT or a caller).
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    #: The addresses HTTP listens on, once it does.
    http_binds: list[str] = attrs.field(factory=list)
    #: The one outbound HTTP client (AI backend, media URLs): no proxies from the
    #: environment, no cookies carried from one tenant's request to another's.
    _hypercorn: Any = None

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def whatsapp_health(self) -> dict[str, Any]:
        return {"mode": self.config.whatsapp.mode, **self.agents.health()}

    def refresh_gauges(self) -> None:
        """Bring gauges that are computed on demand up to date (before /metrics)."""
        self.agents.refresh_gauges()

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def reload(self) -> list[Change] | None:
        """Re-read the config; apply what can change live. None when rejected."""
        await self.notifier.reloading()
        try:
            if self.config_path is not None:
                new = Config.from_toml(self.config_path, self.environ)
            else:
                new = Config.from_mapping({}, self.environ)
        except ConfigError as exc:
            log.error("gatewayd.config.rejected", path=str(self.config_path), errors=exc.errors)
            self.metrics.config_reloads.labels("rejected").inc()
            await self.notifier.ready("running (reload rejected, old config kept)")
            return None
        changes = diff(self.config, new)
        for change in changes:
            shown = {
                "key": change.key,
                "old": mask(change.key, change.old, secret=change.secret),
                "new": mask(change.key, change.new, secret=change.secret),
            }
            if change.live:
                log.info("gatewayd.config.changed", **shown)
            else:
                log.warning("gatewayd.config.restart_required", **shown)
        self.config = merge_live(self.config, new)
        self._apply_live()
        self.metrics.config_reloads.labels("applied").inc()
        log.info("gatewayd.config.reloaded", changed=len(changes))
        await self.notifier.ready()
        return changes

    def _apply_live(self) -> None:
        logsetup.set_level(self.config.log.level)
        self.agents.reconfigure(self.config)
        self.services.limits.reconfigure(self.config.auth)
        if self._hypercorn is not None:
            self._hypercorn.graceful_timeout = self.config.server.shutdown_grace


async def _serve_signals(
    gateway: Gateway, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("gatewayd.signal.reload")
                await gateway.reload()
            elif not gateway.stop_requested.is_set():
                log.info("gatewayd.signal.stop", signal=signal.Signals(signum).name)
                gateway.request_stop()
            else:
                # A second stop signal means "now": skip the grace period.
                log.warning("gatewayd.signal.stop_now", signal=signal.Signals(signum).name)
                raise KeyboardInterrupt


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Database]:
    """The database: the configured server, or the embedded one in ``data_dir``."""
    d = config.database
    async with AsyncExitStack() as stack:
        dsn = d.url
        if not dsn:
            data_dir = Path(d.data_dir)
            server = await stack.enter_async_context(
                open_embedded_postgres(data_dir, port=d.embedded_port)
            )
            log.info("gatewayd.db.embedded", data_dir=str(data_dir))
            dsn = server.dsn
        yield await stack.enter_async_context(
            open_database(
                dsn, min_size=d.pool_min, max_size=d.pool_max, connect_timeout=d.connect_timeout
            )
        )


@asynccontextmanager
async def open_backend(config: Config, db: Database) -> AsyncIterator[WhatsAppBackend]:
    """The WhatsApp side: the simulated network (a ``gatewayd simnet`` at ``sim_url``, or in
    this process), or neonize (real WhatsApp)."""
    if config.whatsapp.mode == "sim" and config.whatsapp.sim_url:
        from gatewayd.whatsapp.simnet.client import open_simnet_backend

        async with open_simnet_backend(config.whatsapp.sim_url) as remote:
            yield remote
        return
    if config.whatsapp.mode == "sim":
        from gatewayd.whatsapp.sim import SimulatedWhatsApp

        # Message ids must not repeat across restarts on the same database: a repeated id
        # is a duplicate to the inbound path, and the message would be dropped as one.
        yield SimulatedWhatsApp(seed=secrets.randbits(64))
        return
    from gatewayd.whatsapp.neonize.backend import open_neonize_backend

    async with open_neonize_backend(
        db.dsn, embedded=not config.database.url, device_name="gatewayd"
    ) as backend:
        yield backend


async def run_gateway(
    config: Config,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until a stop is requested; return after a graceful shutdown."""
    environ = os.environ if environ is None else environ
    notifier = Notifier(environ)
    metrics = Metrics()
    try:
        await notifier.status("starting: database")
        async with open_store(config) as db:
            if config.database.migrate_on_start:
                applied = await migrate_up(db)
                if applied:
                    log.info("gatewayd.db.migrated", applied=[str(m) for m in applied])
            await notifier.status("starting: whatsapp")
            secrets = await trio.to_thread.run_sync(
                load_secret, config.auth, config.database.data_dir
            )
            async with open_backend(config, db) as backend, new_client() as http:
                gateway = _assemble(config, db, backend, http, metrics, notifier, secrets)
                gateway.config_path = config_path
                gateway.environ = environ
                try:
                    await _run_tasks(
                        gateway, handle_signals=handle_signals, task_status=task_status
                    )
                finally:
                    with trio.CancelScope(shield=True):  # the AI client's idle connections
                        await gateway.services.ai.aclose()
    finally:
        notifier.close()
    log.info("gatewayd.stopped")


def _assemble(
    config: Config,
    db: Database,
    backend: WhatsAppBackend,
    http: httpx.AsyncClient,
    metrics: Metrics,
    notifier: Notifier,
    secrets: AuthSecrets,
) -> Gateway:
    """Wire the parts: the supervisor, the forwarder, the use cases' services."""
    holder: list[Gateway] = []

    def settings() -> Config:
        return holder[0].config

    ai = AiCaller(db=db, metrics=metrics, settings=settings)
    bus = EventBus(config.agents.bus_buffer)
    agents = AgentSupervisor(
        db=db, backend=backend, metrics=metrics, bus=bus, config=settings, forward=Forwarder(ai)
    )
    media = InboundMedia(
        db=db,
        agents=agents,
        bus=bus,
        settings=settings,
        secrets=secrets,
        binds=lambda: holder[0].http_binds,
    )
    # A webhook for a received photo carries a link to it, signed afresh at each try.
    agents.webhooks.media_link = lambda row, kind: media.url(row, kind)
    services = Services(
        db=db,
        agents=agents,
        settings=settings,
        http=http,
        metrics=metrics,
        ai=ai,
        keysync=KeySync(db, settings),
        secrets=secrets,
        limits=Limits.from_config(config.auth),
        bus=bus,
        media=media,
        webhooks=agents.webhooks,
    )
    gateway = Gateway(
        config=config,
        db=db,
        metrics=metrics,
        notifier=notifier,
        backend=backend,
        bus=bus,
        agents=agents,
        services=services,
    )
    holder.append(gateway)
    return gateway


async def _purge_revoked_tokens(db: Database, every: float = 3600.0) -> None:
    """Forget logged-out tokens once they have expired anyway."""
    while True:
        await db.wait_available()
        try:
            purged = await identity.purge_revoked(db)
        except GatewayError as exc:
            log.warning("gatewayd.auth.purge_failed", error=exc.message)
        else:
            if purged:
                log.info("gatewayd.auth.revoked_tokens_purged", count=purged)
        await trio.sleep(every)


async def _run_tasks(
    gateway: Gateway, *, handle_signals: bool, task_status: trio.TaskStatus[Gateway]
) -> None:
    config = gateway.config
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_serve_signals, gateway)
        await nursery.start(gateway.notifier.run_watchdog)
        await gateway.notifier.status("starting: agents")
        await nursery.start(gateway.agents.run)
        await nursery.start(
            lambda task_status: run_cleanup(lambda: gateway.config, task_status=task_status)
        )
        await nursery.start(gateway.services.keysync.run)
        await nursery.start(gateway.services.media.run)
        await nursery.start(
            lambda task_status: run_retention(
                gateway.db, lambda: gateway.config, task_status=task_status
            )
        )
        nursery.start_soon(_purge_revoked_tokens, gateway.db)
        sim = gateway.backend if isinstance(gateway.backend, SimulatedWhatsApp) else None
        app = create_app(gateway.services, gateway, sim=sim)
        hc = hypercorn_config(config.server.host, config.server.port, config.server.shutdown_grace)
        gateway._hypercorn = hc
        http_done = trio.Event()

        async def http_task(
            *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                await serve_http(app, hc, gateway.stop_requested.wait, task_status=task_status)
            finally:
                http_done.set()

        gateway.http_binds = await nursery.start(http_task)
        log.info("gatewayd.http.listening", binds=gateway.http_binds)
        await gateway.notifier.ready()
        log.info("gatewayd.started", pid=os.getpid())
        task_status.started(gateway)

        await gateway.stop_requested.wait()
        await gateway.notifier.stopping()
        log.info("gatewayd.stopping", grace=gateway.config.server.shutdown_grace)
        # hypercorn stops accepting and gives in-flight requests the grace period.
        await http_done.wait()
        nursery.cancel_scope.cancel()
