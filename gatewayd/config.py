"""The whole configuration: frozen attrs classes, strict TOML loading, environment
overrides, and the diff used on reload.

One TOML file (``gatewayd.toml`` is the documented example with every key and its
default) is structured by a strict cattrs converter: an unknown key or a value of
the wrong type is an error that names the key. Every key can be overridden from the
environment as ``GATEWAYD_<SECTION>_<KEY>``; the deployed service's variable names
(``PORT``, ``DB_URL``, …) are honoured too, below the ``GATEWAYD_`` ones.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs

from gatewayd.errors import ConfigError
from gatewayd.log import canonical_level

#: The levels a config holds; the deployed service's names (``warn``, ``trace``, ``fatal``, any
#: case) are accepted on input and stored as these (gatewayd.log.LEVEL_ALIASES).
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


def _secret() -> Any:
    return {"secret": True}


def _live() -> Any:
    return {"live": True}


def _restart() -> Any:
    return {"restart": True}


@attrs.frozen
class ServerConfig:
    #: Address to listen on. Loopback by default: expose it on purpose.
    host: str = attrs.field(default="127.0.0.1", metadata=_restart())
    port: int = attrs.field(default=3000, metadata=_restart())
    #: Public base URL (APP_BASE_URL), e.g. https://wa.example.com: the base of the signed
    #: media links and the ``servers`` entry of /openapi.json and /docs. Empty: the listen
    #: address (media links) and the shipped http://localhost:3000 (the documents).
    base_url: str = attrs.field(default="", metadata=_live())
    #: Origins allowed by CORS; empty means no cross-origin access.
    cors_origins: list[str] = attrs.field(factory=list, metadata=_live())
    #: Addresses or networks of reverse proxies (e.g. ["127.0.0.1"]) whose X-Forwarded-For
    #: names the client. Empty: every request's client is its peer address.
    trusted_proxies: list[str] = attrs.field(factory=list, metadata=_live())
    #: Largest request body accepted, in bytes (base64 media needs ~1.37x the media size).
    body_limit: int = attrs.field(default=16 * 1024 * 1024, metadata=_live())
    #: Seconds in-flight requests get to finish on SIGTERM/SIGINT.
    shutdown_grace: float = attrs.field(default=10.0, metadata=_live())
    #: When set, the open /sessions* routes require `Authorization: Bearer <admin_token>`.
    admin_token: str = attrs.field(default="", metadata={**_secret(), "live": True})


@attrs.frozen
class DatabaseConfig:
    #: PostgreSQL URL. Empty: start the embedded PostgreSQL in ``data_dir``.
    url: str = attrs.field(default="", metadata={**_secret(), "restart": True})
    #: Where the embedded PostgreSQL (and other daemon state) lives.
    data_dir: str = attrs.field(default="./data", metadata=_restart())
    #: Port of the embedded PostgreSQL on 127.0.0.1; 0 picks a free one.
    embedded_port: int = attrs.field(default=0, metadata=_restart())
    pool_min: int = attrs.field(default=1, metadata=_restart())
    pool_max: int = attrs.field(default=10, metadata=_restart())
    connect_timeout: float = attrs.field(default=10.0, metadata=_restart())
    #: Apply pending migrations at start.
    migrate_on_start: bool = attrs.field(default=True, metadata=_restart())
    #: Table holding users' API keys; in the deployed setup another system owns it.
    api_keys_table: str = attrs.field(default="api_keys", metadata=_restart())
    #: Seconds the /health database check may take.
    health_timeout: float = attrs.field(default=2.0, metadata=_live())


@attrs.frozen
class LogConfig:
    #: Also trace (= debug), warn, fatal (= critical), in any case.
    level: LogLevel = attrs.field(default="info", metadata=_live())
    #: json, console, or auto (console when stdout is a TTY).
    format: Literal["auto", "json", "console"] = attrs.field(default="auto", metadata=_live())


@attrs.frozen
class WhatsAppConfig:
    #: neonize (real WhatsApp) or sim (the simulated network, with the /_sim/ control API).
    mode: Literal["neonize", "sim"] = attrs.field(default="neonize", metadata=_restart())
    #: Where device data lives (the deployed service's WWEBJS_AUTH_DIR).
    device_dir: str = attrs.field(default="./data/devices", metadata=_restart())
    #: Country code put in front of a number written with a leading 0.
    default_country_code: str = attrs.field(default="62", metadata=_live())
    #: sim mode only: the URL of a ``gatewayd simnet`` (``http://127.0.0.1:4000``) whose
    #: network outlives the daemon; empty: the network lives in the daemon's memory.
    sim_url: str = attrs.field(default="", metadata=_restart())


@attrs.frozen
class AIConfig:
    #: Base URL of the AI backend (the deployed service's AI_BACKEND_URL).
    backend_url: str = attrs.field(default="", metadata=_live())
    #: Seconds an AI call may take.
    timeout: float = attrs.field(default=60.0, metadata=_live())


@attrs.frozen
class MediaConfig:
    #: Where media previews are kept (the deployed service's TEMP_DIR).
    temp_dir: str = attrs.field(default="/tmp/wwebjs", metadata=_live())
    #: Largest media accepted, in bytes.
    max_bytes: int = attrs.field(default=10 * 1024 * 1024, metadata=_live())
    #: Previews older than this many seconds are deleted by the cleanup timer.
    preview_ttl: float = attrs.field(default=24 * 3600.0, metadata=_live())
    #: Seconds between two runs of the cleanup timer.
    cleanup_interval: float = attrs.field(default=30 * 60.0, metadata=_live())
    #: Allow media URLs that resolve to loopback/private/link-local addresses.
    allow_private_urls: bool = attrs.field(default=False, metadata=_live())
    #: Where received media (image, document, audio, video, sticker) is kept. Empty:
    #: ``media`` in ``database.data_dir``.
    inbound_dir: str = attrs.field(default="", metadata=_live())
    #: Received media older than this many seconds is deleted by the cleanup timer.
    inbound_retention: float = attrs.field(default=7 * 24 * 3600.0, metadata=_live())
    #: Largest received media downloaded, in bytes; a larger one is marked, not fetched.
    inbound_max_bytes: int = attrs.field(default=32 * 1024 * 1024, metadata=_live())
    #: Received media downloaded at once (each held in memory while it arrives).
    inbound_concurrency: int = attrs.field(default=4, metadata=_restart())
    #: Seconds a signed media link (``media_url``) works without credentials.
    link_ttl: float = attrs.field(default=24 * 3600.0, metadata=_live())


@attrs.frozen
class ForwardingConfig:
    #: Forward inbound text messages to the agent's AI endpoint.
    enabled: bool = attrs.field(default=True, metadata=_live())
    #: Number that gets a report when an AI call for an inbound message fails
    #: (e.g. "62895619356936"); empty: no report.
    developer_number: str = attrs.field(default="", metadata=_live())


@attrs.frozen
class SessionsConfig:
    #: Seconds POST /sessions/{id}/qr and /reconnect wait for a QR.
    qr_wait: float = attrs.field(default=60.0, metadata=_live())
    #: Seconds POST /sessions waits for the first QR before answering without one.
    create_qr_wait: float = attrs.field(default=5.0, metadata=_live())


@attrs.frozen
class AgentsConfig:
    #: Sends waiting per agent (the FIFO queue); one more is refused with 429.
    queue_size: int = attrs.field(default=500, metadata=_restart())
    #: Token bucket pacing each agent's sends.
    send_rate_per_minute: float = attrs.field(default=100.0, metadata=_live())
    send_burst: int = attrs.field(default=100, metadata=_live())
    #: Seconds a caller waits for its queued send to go out.
    command_timeout: float = attrs.field(default=300.0, metadata=_live())
    #: Reconnect backoff after a lost connection (exponential with jitter).
    reconnect_initial: float = attrs.field(default=1.0, metadata=_live())
    reconnect_max: float = attrs.field(default=60.0, metadata=_live())
    #: Restart backoff after an agent's task tree raised.
    restart_initial: float = attrs.field(default=1.0, metadata=_live())
    restart_max: float = attrs.field(default=60.0, metadata=_live())
    #: Unhandled inbound messages younger than this are handed to the forwarder again at start.
    redeliver_max_age: float = attrs.field(default=3600.0, metadata=_live())
    #: A reply the AI produced waits this long for the agent to be connected, then expires.
    reply_max_age: float = attrs.field(default=3600.0, metadata=_live())
    #: Times a message is handed to the forwarder (restarts included) before it is quarantined.
    forward_max_attempts: int = attrs.field(default=3, metadata=_live())
    #: Events buffered per bus subscriber before a slow one is dropped.
    bus_buffer: int = attrs.field(default=256, metadata=_restart())
    #: Agents restored at start that may be connecting at once (the rest wait their turn).
    restore_concurrency: int = attrs.field(default=8, metadata=_restart())


@attrs.frozen
class WebhooksConfig:
    """The webhook outbox (docs/contract/api-v1.md §12; gatewayd/nursery/webhooks.py)."""

    #: Seconds one try may take, resolving the name to the last byte of the answer.
    timeout: float = attrs.field(default=30.0, metadata=_live())
    #: Quick retries after the first try, ``retry_backoff`` s, then twice as long each time.
    max_retries: int = attrs.field(default=3, metadata=_live())
    retry_backoff: float = attrs.field(default=1.0, metadata=_live())
    #: Seconds between the tries after the quick ones; the last value repeats.
    schedule: list[float] = attrs.field(
        factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0], metadata=_live()
    )
    #: Seconds a delivery is retried from its first try; then it is dead (replayable).
    max_age: float = attrs.field(default=24 * 3600.0, metadata=_live())
    #: Tries in flight at once, in all and per session (one dead receiver holds at most
    #: ``per_session`` of the slots).
    concurrency: int = attrs.field(default=32, metadata=_restart())
    per_session: int = attrs.field(default=4, metadata=_live())
    #: Seconds between two looks for due deliveries when nothing wakes the worker.
    poll_interval: float = attrs.field(default=1.0, metadata=_live())
    #: Allow webhook URLs that resolve to loopback/private/link-local addresses.
    allow_private_urls: bool = attrs.field(default=False, metadata=_live())


@attrs.frozen
class WebSocketConfig:
    """/ws/sessions: live events for the dashboard."""

    #: Seconds without a frame after which a ping frame is sent.
    ping_interval: float = attrs.field(default=20.0, metadata=_live())
    #: Events that may wait per connection; one more closes it with 1013 (too slow).
    queue: int = attrs.field(default=64, metadata=_live())


@attrs.frozen
class AnalyticsConfig:
    """/api/v1/analytics (docs/contract/api-v1.md §10) and message retention
    (gatewayd/nursery/retention.py)."""

    #: IANA time zone days and peak hours are computed in when a request names none. The
    #: rollups are hourly in UTC: a zone whose offset is not whole hours gets its day
    #: boundaries at the nearest hour.
    timezone: str = attrs.field(default="UTC", metadata=_live())
    #: Longest date range one analytics request may ask for, in days.
    max_range_days: int = attrs.field(default=366, metadata=_live())
    #: Messages older than this many days are deleted (the rollups keep counting them);
    #: 0 keeps them for ever.
    retention_days: int = attrs.field(default=0, metadata=_live())
    #: Messages deleted per transaction by retention (a pause follows each batch).
    retention_batch: int = attrs.field(default=10000, metadata=_live())


@attrs.frozen
class AuthConfig:
    """/api/v1 identity: login tokens, the PIN hash key, and the request limits."""

    #: HS256 key of login tokens (JWT_SECRET), at least 32 characters; the PIN hash key is
    #: derived from it, so changing it ends every login and invalidates every PIN. Empty: a
    #: random secret is generated once and kept (mode 0600) in ``secret_file``.
    jwt_secret: str = attrs.field(default="", metadata={**_secret(), "restart": True})
    #: Where the generated secret is kept. Empty: ``auth.secret`` in ``database.data_dir``.
    secret_file: str = attrs.field(default="", metadata=_restart())
    #: Seconds a login token is valid.
    token_ttl: float = attrs.field(default=24 * 3600.0, metadata=_live())
    #: Failed PIN logins allowed per client address and minute (then 429).
    login_attempts_per_minute: int = attrs.field(default=10, metadata=_live())
    #: Failed PIN logins allowed per minute from all addresses together (then 429 for all).
    login_attempts_global_per_minute: int = attrs.field(default=60, metadata=_live())
    #: /api/v1 requests per authenticated user and minute.
    requests_per_minute: int = attrs.field(default=100, metadata=_live())
    #: Requests to unauthenticated /api/v1 routes per client address and minute.
    anonymous_requests_per_minute: int = attrs.field(default=30, metadata=_live())


@attrs.frozen
class Config:
    server: ServerConfig = attrs.field(factory=ServerConfig)
    database: DatabaseConfig = attrs.field(factory=DatabaseConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    whatsapp: WhatsAppConfig = attrs.field(factory=WhatsAppConfig)
    ai: AIConfig = attrs.field(factory=AIConfig)
    media: MediaConfig = attrs.field(factory=MediaConfig)
    agents: AgentsConfig = attrs.field(factory=AgentsConfig)
    forwarding: ForwardingConfig = attrs.field(factory=ForwardingConfig)
    sessions: SessionsConfig = attrs.field(factory=SessionsConfig)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    webhooks: WebhooksConfig = attrs.field(factory=WebhooksConfig)
    websocket: WebSocketConfig = attrs.field(factory=WebSocketConfig)
    analytics: AnalyticsConfig = attrs.field(factory=AnalyticsConfig)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> Config:
        """Load ``path`` strictly; then apply overrides from ``environ`` when given.

        Raises ConfigError listing every problem, each naming its key.
        """
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
        return cls.from_mapping(raw, environ)

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Config:
        errors: list[str] = []
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
        if environ is not None:
            errors.extend(_apply_environ(data, environ))
        errors.extend(_canonical_log_level(data))
        config = _structure(data, errors)
        if config is not None:
            errors.extend(_check_values(config))
        if errors:
            raise ConfigError(errors)
        assert config is not None
        return config


# ---------------------------------------------------------------------------
# Strict structuring


def _strict_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def want(tp: type, names: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            # bool is an int subclass; never accept it where a number is meant.
            if isinstance(value, bool) and tp is not bool:
                raise TypeError(f"expected {names}, got bool")
            if tp is float and isinstance(value, int):
                return float(value)
            if not isinstance(value, tp):
                raise TypeError(f"expected {names}, got {type(value).__name__}")
            return value

        return hook

    conv.register_structure_hook(int, want(int, "int"))
    conv.register_structure_hook(float, want(float, "float"))
    conv.register_structure_hook(str, want(str, "str"))
    conv.register_structure_hook(bool, want(bool, "bool"))
    return conv


_CONVERTER = _strict_converter()


def _structure(data: Mapping[str, Any], errors: list[str]) -> Config | None:
    try:
        return _CONVERTER.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        errors.extend(_flatten_errors(exc, ""))
        return None


def _flatten_errors(exc: BaseException, path: str) -> Iterator[str]:
    """Turn cattrs' exception groups into 'section.key: message' lines."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield f"{_join(path, key)}: unknown key"
        return
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            note = _note_key(sub)
            yield from _flatten_errors(sub, _join(path, note) if note else path)
        return
    yield f"{path or '(root)'}: {_leaf_message(exc)}"


def _leaf_message(exc: BaseException) -> str:
    message = str(exc)
    if isinstance(exc, KeyError):
        return "required key missing"
    literal = re.search(r"(\S+) not in literal typing\.Literal\[(.*)\]", message)
    if literal:
        allowed = ", ".join(part.strip(" '") for part in literal.group(2).split(","))
        return f"expected one of {allowed}, got {literal.group(1)!r}"
    if message.startswith("expected"):
        return message
    if "not iterable" in message or "has no attribute" in message:
        return "expected a table"
    return f"invalid value ({message})"


def _note_key(exc: BaseException) -> str | None:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, cattrs.AttributeValidationNote):
            return note.name
        if isinstance(note, cattrs.IterableValidationNote):
            return f"[{note.index}]"
    return None


def _join(path: str, key: str) -> str:
    if key.startswith("["):
        return f"{path}{key}"
    return f"{path}.{key}" if path else key


def _canonical_log_level(data: dict[str, Any]) -> Iterator[str]:
    """``log.level`` in our spelling, so the config (and every reload's diff) holds one name
    per level whichever spelling the file or ``LOG_LEVEL`` used."""
    section = data.get("log")
    if not isinstance(section, dict) or not isinstance(section.get("level"), str):
        return  # absent, or a wrong type that structuring reports
    try:
        section["level"] = canonical_level(section["level"])
    except ValueError as exc:
        del section["level"]  # reported here; structuring would report it a second time
        yield f"log.level: {exc}"


def check_sim_url(whatsapp: WhatsAppConfig) -> list[str]:
    """What is wrong with ``whatsapp.sim_url`` (also checked for ``run --whatsapp sim=URL``)."""
    url = whatsapp.sim_url
    if not url:
        return []
    if not re.fullmatch(r"https?://[^/\s?#@]+/?", url):
        return [f"whatsapp.sim_url: {url!r} is not a base URL like http://127.0.0.1:4000"]
    return []  # used in sim mode only; ignored otherwise, so one key never needs another


def _check_values(config: Config) -> Iterator[str]:
    """Range and format rules the types cannot express."""
    s, d = config.server, config.database
    if not 0 <= s.port <= 65535:
        yield f"server.port: expected 0..65535, got {s.port}"
    if s.body_limit < 1024:
        yield f"server.body_limit: expected at least 1024 bytes, got {s.body_limit}"
    if s.base_url and not re.fullmatch(r"https?://[^/\s?#@]+(/[^\s?#]*)?", s.base_url):
        yield f"server.base_url: {s.base_url!r} is not a base URL like https://wa.example.com"
    if s.shutdown_grace < 0:
        yield f"server.shutdown_grace: expected >= 0, got {s.shutdown_grace}"
    for origin in s.cors_origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            yield f"server.cors_origins: {origin!r} is not an origin like https://app.example.com"
    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            yield f"server.trusted_proxies: {proxy!r} is not an address or network like 127.0.0.1 or 10.0.0.0/8"
    if not 0 <= d.embedded_port <= 65535:
        yield f"database.embedded_port: expected 0..65535, got {d.embedded_port}"
    if d.pool_min < 1 or d.pool_max < d.pool_min:
        yield f"database.pool_min/pool_max: expected 1 <= pool_min <= pool_max, got {d.pool_min}/{d.pool_max}"
    if d.url and not d.url.startswith(("postgresql://", "postgres://")):
        yield "database.url: expected a postgresql:// URL"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", d.api_keys_table):
        yield f"database.api_keys_table: {d.api_keys_table!r} is not a table name (schema.table allowed)"
    dev = config.forwarding.developer_number
    if dev and not re.fullmatch(r"\+?[0-9]{8,15}", dev):
        yield f"forwarding.developer_number: {dev!r} is not a phone number (8-15 digits)"
    a = config.agents
    if a.queue_size < 1 or a.send_burst < 1 or a.send_rate_per_minute <= 0 or a.bus_buffer < 1:
        yield "agents: queue_size, send_burst, bus_buffer must be >= 1 and send_rate_per_minute > 0"
    if a.reconnect_initial <= 0 or a.reconnect_max < a.reconnect_initial:
        yield "agents.reconnect_initial/reconnect_max: expected 0 < initial <= max"
    if a.restart_initial <= 0 or a.restart_max < a.restart_initial:
        yield "agents.restart_initial/restart_max: expected 0 < initial <= max"
    if a.reply_max_age <= 0:
        yield f"agents.reply_max_age: expected > 0, got {a.reply_max_age}"
    if a.forward_max_attempts < 1:
        yield f"agents.forward_max_attempts: expected >= 1, got {a.forward_max_attempts}"
    if not 1 <= a.restore_concurrency <= 10_000:
        yield f"agents.restore_concurrency: expected 1..10000, got {a.restore_concurrency}"
    if not re.fullmatch(r"[1-9][0-9]{0,3}", config.whatsapp.default_country_code):
        yield "whatsapp.default_country_code: expected 1-4 digits, not starting with 0"
    yield from check_sim_url(config.whatsapp)
    yield from _check_auth(config.auth)
    if config.websocket.ping_interval <= 0 or config.websocket.queue < 1:
        yield "websocket: ping_interval must be > 0 and queue >= 1"
    yield from _check_media(config.media)
    yield from _check_webhooks(config.webhooks)
    yield from _check_analytics(config.analytics)


def _check_analytics(a: AnalyticsConfig) -> Iterator[str]:
    if not valid_timezone(a.timezone):
        yield f"analytics.timezone: {a.timezone!r} is not a known IANA time zone"
    if not 1 <= a.max_range_days <= 3660:
        yield f"analytics.max_range_days: expected 1..3660, got {a.max_range_days}"
    if a.retention_days < 0:
        yield f"analytics.retention_days: expected >= 0 (0 keeps for ever), got {a.retention_days}"
    if not 1 <= a.retention_batch <= 1_000_000:
        yield f"analytics.retention_batch: expected 1..1000000, got {a.retention_batch}"


def valid_timezone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this system knows (zoneinfo)."""
    if not name or name != name.strip():
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _check_media(m: MediaConfig) -> Iterator[str]:
    if m.inbound_retention <= 0:
        yield f"media.inbound_retention: expected > 0, got {m.inbound_retention}"
    if m.inbound_max_bytes < 1:
        yield f"media.inbound_max_bytes: expected >= 1, got {m.inbound_max_bytes}"
    if not 1 <= m.inbound_concurrency <= 64:
        yield f"media.inbound_concurrency: expected 1..64, got {m.inbound_concurrency}"
    if not 60 <= m.link_ttl <= 30 * 24 * 3600:
        yield f"media.link_ttl: expected 60..2592000 seconds, got {m.link_ttl}"


def _check_webhooks(w: WebhooksConfig) -> Iterator[str]:
    if w.timeout <= 0 or w.retry_backoff < 0 or w.max_age <= 0 or w.poll_interval <= 0:
        yield "webhooks: timeout, max_age, poll_interval must be > 0 and retry_backoff >= 0"
    if w.max_retries < 0:
        yield f"webhooks.max_retries: expected >= 0, got {w.max_retries}"
    if not w.schedule or any(delay <= 0 for delay in w.schedule):
        yield "webhooks.schedule: expected at least one delay, each > 0"
    if w.concurrency < 1 or w.per_session < 1:
        yield "webhooks.concurrency/per_session: expected >= 1 (per_session is capped by concurrency)"


def _check_auth(auth: AuthConfig) -> Iterator[str]:
    # RFC 7518 §3.2: an HS256 key must be at least as long as the hash (32 bytes).
    if auth.jwt_secret and len(auth.jwt_secret.encode()) < 32:
        yield "auth.jwt_secret: expected at least 32 characters (or empty to generate one)"
    if not 60 <= auth.token_ttl <= 30 * 24 * 3600:
        yield f"auth.token_ttl: expected 60..2592000 seconds, got {auth.token_ttl}"
    for name in (
        "login_attempts_per_minute",
        "login_attempts_global_per_minute",
        "requests_per_minute",
        "anonymous_requests_per_minute",
    ):
        if getattr(auth, name) < 1:
            yield f"auth.{name}: expected >= 1, got {getattr(auth, name)}"


# ---------------------------------------------------------------------------
# Environment overrides

#: The deployed service's variable names → our keys. ``GATEWAYD_*`` wins over these.
LEGACY_ENV: dict[str, str] = {
    "PORT": "server.port",
    "APP_BASE_URL": "server.base_url",
    "CORS_ORIGINS": "server.cors_origins",
    "AI_BACKEND_URL": "ai.backend_url",
    "TEMP_DIR": "media.temp_dir",
    "WWEBJS_AUTH_DIR": "whatsapp.device_dir",
    "DB_URL": "database.url",
    "LOG_LEVEL": "log.level",
    "JWT_SECRET": "auth.jwt_secret",
    "WEBHOOK_TIMEOUT_SECONDS": "webhooks.timeout",
    "WEBHOOK_MAX_RETRIES": "webhooks.max_retries",
    "WEBHOOK_RETRY_BACKOFF_SECONDS": "webhooks.retry_backoff",
}


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in attrs.fields(Config)}  # type: ignore[misc]


def _field_types(section_cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in attrs.fields(section_cls)}


def _apply_environ(data: dict[str, Any], environ: Mapping[str, str]) -> Iterator[str]:
    attrs.resolve_types(Config)
    overrides: dict[str, tuple[str, str]] = {}
    for name, key in LEGACY_ENV.items():
        if name in environ:
            overrides[key] = (name, environ[name])
    for section, section_cls in _sections().items():
        attrs.resolve_types(section_cls)
        for key in _field_types(section_cls):
            name = f"GATEWAYD_{section}_{key}".upper()
            if name in environ:
                overrides[f"{section}.{key}"] = (name, environ[name])
    for dotted, (name, text) in overrides.items():
        section, key = dotted.split(".", 1)
        found = _sections().get(section)
        if found is None:
            continue  # a legacy name for a section this build does not have
        section_cls = found
        tp = _field_types(section_cls)[key]
        try:
            value = _parse_env(text, tp)
        except ValueError as exc:
            yield f"{dotted}: {exc} (from ${name})"
            continue
        target = data.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value


def _parse_env(text: str, tp: Any) -> Any:
    origin = get_origin(tp)
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected bool (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"expected int, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"expected float, got {text!r}") from None
    if origin is list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if get_args(tp) == (float,):
            try:
                return [float(part) for part in parts]
            except ValueError:
                raise ValueError(f"expected numbers separated by commas, got {text!r}") from None
        return parts
    if tp == LogLevel:
        return canonical_level(text)  # its ValueError names the accepted levels
    return text
