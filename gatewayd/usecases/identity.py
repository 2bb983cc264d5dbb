"""/api/v1 identity: PINs, logins, issued API keys, and who a credential belongs to.

A user is created with a PIN (``^[A-Z0-9]{6}$``, from ``secrets``), shown once and stored
only as a keyed hash (gatewayd/usecases/tokens.py: changing the server secret invalidates
every PIN). Logging in with the PIN gives a login token (a JWT); a logout denies that token
until it expires. A user may also hold API keys (``gwd_`` and 43 url-safe characters: 256
random bits), shown once and stored as SHA-256 hashes; a revoked key is refused at once.

:func:`authenticate` takes what a client sent (``Authorization: Bearer …`` or ``X-API-Key``)
and answers whose it is. Failed logins are throttled (:class:`gatewayd.limits.LoginThrottle`,
per client address and for everyone), counted in ``gatewayd_login_failures_total{reason}``
and logged, never with the PIN.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import attrs
import structlog

from gatewayd.config import AuthConfig
from gatewayd.errors import InvalidApiKey, InvalidPayload, NotFound, StoreError, Unauthorized
from gatewayd.limits import LoginThrottle
from gatewayd.metrics import Metrics
from gatewayd.store import users as store
from gatewayd.store.db import Database
from gatewayd.usecases.tokens import AuthSecrets, TokenClaims, decode_token, issue_token

__all__ = [
    "IdentityConfig",
    "IssuedKey",
    "KEY_PREFIX",
    "KeyInfo",
    "LoginResult",
    "PinIssued",
    "Principal",
    "authenticate",
    "create_key",
    "generate_pin",
    "list_keys",
    "login",
    "logout",
    "purge_revoked",
    "random_pin",
    "revoke_key",
]

log = structlog.get_logger()

PIN_ALPHABET = string.ascii_uppercase + string.digits
_PIN_RE = re.compile(r"[A-Z0-9]{6}")
KEY_PREFIX = "gwd_"
_SHOWN = len(KEY_PREFIX) + 8  # the part of a key a listing shows
_MAX_CREDENTIAL = 4096  # longer is not ours; refused before any hashing or parsing
_PIN_TRIES = 8  # 36^6 PINs: a collision twice running already means a nearly full space
_MAX_KEY_NAME = 100


@attrs.frozen
class IdentityConfig:
    """What the identity use cases need besides the database."""

    secrets: AuthSecrets
    #: Seconds a login token is valid.
    token_ttl: float = 24 * 3600.0

    @classmethod
    def from_config(cls, auth: AuthConfig, keys: AuthSecrets) -> IdentityConfig:
        return cls(secrets=keys, token_ttl=auth.token_ttl)


@attrs.frozen
class PinIssued:
    user_id: str
    pin: str = attrs.field(repr=False)


@attrs.frozen
class LoginResult:
    user_id: str
    token: str = attrs.field(repr=False)
    expires_at: datetime


@attrs.frozen
class IssuedKey:
    """A new key: ``key`` is shown this once and never again."""

    id: str
    key: str = attrs.field(repr=False)
    prefix: str
    name: str | None
    created_at: datetime


@attrs.frozen
class KeyInfo:
    """A key as listed: never the secret."""

    id: str
    prefix: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@attrs.frozen
class Principal:
    """Who a request is from: the user, and by which credential (a token's jti, a key's id)."""

    user_id: str
    kind: Literal["jwt", "key"]
    token_id: str


def random_pin() -> str:
    return "".join(secrets.choice(PIN_ALPHABET) for _ in range(6))


async def generate_pin(
    db: Database, cfg: IdentityConfig, *, new_pin: Callable[[], str] = random_pin
) -> PinIssued:
    """A new user with a new unique PIN (drawn again when it is taken)."""
    for _ in range(_PIN_TRIES):
        pin, user_id = new_pin(), str(uuid.uuid4())
        if await store.create_user(db, user_id, cfg.secrets.pin_hash(pin)):
            log.info("gatewayd.auth.user_created", user_id=user_id)
            return PinIssued(user_id=user_id, pin=pin)
    raise StoreError("could not find a free PIN; try again")


async def login(
    db: Database,
    cfg: IdentityConfig,
    pin: str,
    *,
    client: str,
    throttle: LoginThrottle,
    metrics: Metrics,
) -> LoginResult:
    """A login token for the user with ``pin``.

    Raises RateLimitExceeded (before looking at the PIN) while ``client`` or everyone has
    used up the failed attempts, and Unauthorized for a PIN that is no user's.
    """
    decision = throttle.reserve(client)
    if not decision.allowed:
        metrics.login_failures.labels(reason="throttled").inc()
        log.warning("gatewayd.auth.login_failed", reason="throttled", client=client)
        decision.raise_if_refused("too many failed logins; try again later")
    normalised = pin.strip().upper()
    well_formed = _PIN_RE.fullmatch(normalised) is not None
    try:
        user_id = (
            await store.find_user_by_pin_hash(db, cfg.secrets.pin_hash(normalised))
            if well_formed
            else None
        )
    except BaseException:
        throttle.release(client)  # the store failed, or we were cancelled: nothing was judged
        raise
    if user_id is None:
        reason = "wrong_pin" if well_formed else "malformed"
        metrics.login_failures.labels(reason=reason).inc()
        log.warning("gatewayd.auth.login_failed", reason=reason, client=client)
        raise Unauthorized("invalid PIN")
    throttle.release(client)  # only failures count
    token, claims = issue_token(cfg.secrets, user_id, ttl=cfg.token_ttl)
    log.info("gatewayd.auth.login", user_id=user_id, client=client)
    return LoginResult(user_id=user_id, token=token, expires_at=claims.expires_at)


async def logout(db: Database, cfg: IdentityConfig, token: str) -> None:
    """End the login ``token``: it is refused from now until it expires."""
    claims = await _valid_claims(db, cfg, token)
    await store.revoke_token(db, claims.jti, claims.user_id, claims.expires_at)
    log.info("gatewayd.auth.logout", user_id=claims.user_id)


async def create_key(db: Database, user_id: str, name: str | None) -> IssuedKey:
    """A new API key for ``user_id``; the returned ``key`` is its only plaintext copy."""
    if name is not None:
        name = name.strip()
        if not name or len(name) > _MAX_KEY_NAME or not name.isprintable():
            raise InvalidPayload(f"name: expected 1..{_MAX_KEY_NAME} printable characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = await store.insert_key(
        db, user_id=user_id, key_hash=_key_hash(key), prefix=key[:_SHOWN], name=name
    )
    log.info("gatewayd.auth.key_created", user_id=user_id, key_id=record.id)
    return IssuedKey(
        id=str(record.id), key=key, prefix=key[:_SHOWN], name=name, created_at=record.created_at
    )


async def list_keys(db: Database, user_id: str, *, include_revoked: bool = False) -> list[KeyInfo]:
    """The user's issued keys, newest first, without their secrets."""
    return [
        KeyInfo(
            id=str(r.id),
            prefix=r.prefix or "",
            name=r.name,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
        )
        for r in await store.list_keys(db, user_id, include_revoked=include_revoked)
    ]


async def revoke_key(db: Database, user_id: str, key_id: str) -> None:
    """Revoke one of the user's keys at once. Someone else's key is NotFound, like none."""
    if not (key_id.isascii() and key_id.isdigit() and len(key_id) <= 18):
        raise NotFound("API key not found")
    if not await store.revoke_key(db, user_id, int(key_id)):
        raise NotFound("API key not found")
    log.info("gatewayd.auth.key_revoked", user_id=user_id, key_id=key_id)


async def authenticate(db: Database, cfg: IdentityConfig, credential: str) -> Principal:
    """Whose ``credential`` (a login token or an issued API key) is.

    Raises InvalidApiKey for a key that is unknown or revoked, Unauthorized for anything
    else (no credential, a token that is forged, expired or logged out).
    """
    credential = credential.strip()
    if not credential:
        raise Unauthorized("missing credentials")
    if len(credential) > _MAX_CREDENTIAL:
        raise Unauthorized("invalid credentials")
    if credential.startswith(KEY_PREFIX):
        found = await store.find_key(db, _key_hash(credential))
        if found is None:
            raise InvalidApiKey("invalid or revoked API key")
        return Principal(user_id=found.user_id, kind="key", token_id=str(found.id))
    claims = await _valid_claims(db, cfg, credential)
    return Principal(user_id=claims.user_id, kind="jwt", token_id=claims.jti)


async def purge_revoked(db: Database) -> int:
    """Forget logged-out tokens that have expired anyway (run now and then)."""
    return await store.purge_revoked_tokens(db)


async def _valid_claims(db: Database, cfg: IdentityConfig, token: str) -> TokenClaims:
    claims = decode_token(cfg.secrets, token.strip())
    if await store.is_token_revoked(db, claims.jti):
        raise Unauthorized("the token has been revoked")
    return claims


def _key_hash(key: str) -> str:
    # Keys carry 256 random bits: an unkeyed hash cannot be reversed, and keys stay valid
    # when the server secret changes.
    return hashlib.sha256(key.encode()).hexdigest()
