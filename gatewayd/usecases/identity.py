"""/api/v1 identity: PINs, logins, issued API keys, and who a credential belongs to.

A user is created with a PIN (``^[A-Z0-9]{6}$``, from ``secrets``), shown once and stored
only as a keyed hash (gatewayd/usecases/tokens.py: changing the server secret invalidates
every PIN). Logging in with the PIN gives a login token (a JWT); a logout denies that token
until it expires. A user may also hold API keys (``gwd_`` and 43 url-safe characters: 256
random bits), shown once and stored as SHA-256 hashes; a revoked key is refused at once.

:func:`authenticate` takes what a client sent (``Authorization: Bearer …`` or ``X-API-Key``)
and answers whose it is, from memory when it can (:class:`CredentialCache`): a token's
signature is checked in process, but whether it was logged out and whose a key is are in the
database, and reading it on every request cost more than the request itself. This process's
logouts and key revocations drop what the cache knows at once, so the very next request with
that credential is refused; a change made elsewhere (another process, SQL by hand) is seen
within ``CREDENTIAL_TTL`` (and the one database read that notices it).

Failed logins are throttled (:class:`gatewayd.limits.LoginThrottle`, per client address and
for everyone), counted in ``gatewayd_login_failures_total{reason}`` and logged, never with
the PIN.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import string
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Generic, Literal, TypeVar

import attrs
import structlog
import trio

from gatewayd.config import AuthConfig
from gatewayd.errors import InvalidApiKey, InvalidPayload, NotFound, StoreError, Unauthorized
from gatewayd.limits import LoginThrottle
from gatewayd.metrics import Metrics
from gatewayd.store import users as store
from gatewayd.store.db import Database
from gatewayd.usecases.tokens import AuthSecrets, TokenClaims, decode_token, issue_token

__all__ = [
    "CREDENTIAL_TTL",
    "CredentialCache",
    "IdentityConfig",
    "IssuedKey",
    "KEY_PREFIX",
    "KeyInfo",
    "LoginResult",
    "OneRead",
    "PinIssued",
    "Principal",
    "authenticate",
    "create_key",
    "credential_cache",
    "generate_pin",
    "list_keys",
    "login",
    "logout",
    "purge_revoked",
    "random_pin",
    "revoke_key",
]

log = structlog.get_logger()

K = TypeVar("K")
T = TypeVar("T")

PIN_ALPHABET = string.ascii_uppercase + string.digits
_PIN_RE = re.compile(r"[A-Z0-9]{6}")
KEY_PREFIX = "gwd_"
_SHOWN = len(KEY_PREFIX) + 8  # the part of a key a listing shows
_MAX_CREDENTIAL = 4096  # longer is not ours; refused before any hashing or parsing
_PIN_TRIES = 8  # 36^6 PINs: a collision twice running already means a nearly full space
_MAX_KEY_NAME = 100

#: Seconds an accepted credential is trusted without asking the database again: the backstop
#: for what this process cannot see (a logout or revocation by another process, SQL by hand).
CREDENTIAL_TTL = 10.0
#: Accepted credentials remembered at most; the least recently used is forgotten first.
CREDENTIAL_CACHE_SIZE = 10_000
#: A key's ``last_used_at`` is written at most this often (docs/contract/api-v1.md §5).
TOUCH_EVERY = 60.0


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


class OneRead(Generic[K, T]):
    """One re-read per key at a time, for the caches of the read paths (here, and
    gatewayd/usecases/core.py ``AgentRows``).

    An entry lapses ``ttl`` seconds after it was read: the backstop for changes this process
    cannot see (another process, SQL by hand). Under load, every request that finds it lapsed
    at the same moment would read the same row again. Instead the first one does, and the
    others meanwhile are answered the lapsed entry, which is as good as it was a moment ago:
    what this process changes drops an entry, it does not lapse. A lapsed entry stands in
    only while its re-read is in flight, and only until twice ``ttl`` after it was read
    (the caches' ``look`` says so). Nobody waits for another request's read.
    """

    def __init__(self) -> None:
        self._reading: set[K] = set()

    async def run(
        self,
        key: K,
        look: Callable[[], tuple[T, bool] | None],
        read: Callable[[], Awaitable[T]],
    ) -> T:
        """The cached entry ``look()`` finds if it is fresh (its second item), or lapsed while
        another request re-reads it; else ``read()`` (which keeps what it read)."""
        found = look()
        if found is not None and (found[1] or key in self._reading):
            return found[0]
        if key in self._reading:
            return await read()  # nothing to stand in: read on our own
        self._reading.add(key)
        try:
            return await read()
        finally:
            self._reading.discard(key)


@attrs.define
class _Accepted:
    principal: Principal
    #: trio clock: when the database must be asked again (``CREDENTIAL_TTL`` after it was).
    recheck_at: float
    #: Wall clock (Unix seconds): a token's ``exp``; infinity for a key.
    expires_at: float
    #: The signing key a token was verified with; None for a key.
    jwt_key: bytes | None


class CredentialCache:
    """Accepted credentials, so that a request with a known one does not read the database.

    Entries are keyed by the SHA-256 of the credential (no key or token is kept in clear)
    and hold whose it is. Only credentials the database accepted are remembered — a refused
    one is asked about again each time (refusals are throttled per client address, see
    gatewayd/http/v1/common.py) — so wrong keys cannot grow it, and it holds at most
    ``size`` entries. A token entry counts only while its ``exp`` has not passed and for the
    signing key it was verified with: a token verified under an old secret is verified anew.

    :meth:`forget` (a logout, a revoked key) drops a credential at once; a lookup that was
    reading the database meanwhile does not put back what it read (``epoch``). A key's use is
    written to ``last_used_at`` at most every ``TOUCH_EVERY`` seconds (:meth:`touch_due`).
    ``reads`` has a lapsed credential read again by one request at a time.
    """

    def __init__(self, *, size: int = CREDENTIAL_CACHE_SIZE, ttl: float = CREDENTIAL_TTL) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[bytes, _Accepted] = OrderedDict()  # least recent first
        #: When each key (by digest) last had its use written (trio clock), oldest first.
        self._touched: OrderedDict[bytes, float] = OrderedDict()
        #: Bumped by every ``forget``: a fill that began before one is dropped.
        self.epoch = 0
        self.reads = OneRead[bytes, Principal]()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, jwt_key: bytes | None = None) -> Principal | None:
        """Whose the credential with this digest is, if it was accepted within the TTL."""
        found = self.look(digest, jwt_key)
        return found[0] if found is not None and found[1] else None

    def look(self, digest: bytes, jwt_key: bytes | None = None) -> tuple[Principal, bool] | None:
        """Whose the credential with this digest is, and whether that was read within the TTL
        (else it lapsed, and may stand in while it is read again: see :class:`OneRead`)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        now = trio.current_time()
        if (
            now >= entry.recheck_at + self.ttl
            or time.time() >= entry.expires_at
            or entry.jwt_key != jwt_key
        ):
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.principal, now < entry.recheck_at

    def discard(self, digest: bytes) -> None:
        """Drop a credential the database has just refused."""
        self._entries.pop(digest, None)

    def put(
        self,
        digest: bytes,
        principal: Principal,
        *,
        epoch: int,
        expires_at: float = math.inf,
        jwt_key: bytes | None = None,
    ) -> None:
        """Remember an accepted credential, unless something was forgotten since ``epoch``
        (the database answer may predate that logout or revocation)."""
        if epoch != self.epoch:
            return
        recheck_at = trio.current_time() + self.ttl
        self._entries[digest] = _Accepted(principal, recheck_at, expires_at, jwt_key)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, kind: Literal["jwt", "key"], token_id: str) -> None:
        """Drop every entry of the token ``jti`` or the key ``id``: the next request with it
        asks the database. Rare (a logout, a revocation), so a scan is fine."""
        self.epoch += 1
        stale = [
            digest
            for digest, entry in self._entries.items()
            if entry.principal.kind == kind and entry.principal.token_id == token_id
        ]
        for digest in stale:
            del self._entries[digest]

    def touch_due(self, digest: bytes) -> bool:
        """Whether the key with this digest should have its use written now."""
        last = self._touched.get(digest)
        return last is None or trio.current_time() - last >= TOUCH_EVERY

    def touched(self, digest: bytes) -> None:
        """The key's use was written (or tried) now. Only keys the database accepted come
        here; those not written within ``TOUCH_EVERY`` are due anyway and are dropped first."""
        now = trio.current_time()
        self._touched[digest] = now
        self._touched.move_to_end(digest)
        while self._touched:
            oldest, at = next(iter(self._touched.items()))
            if len(self._touched) <= self.size and now - at < TOUCH_EVERY:
                break
            del self._touched[oldest]


_caches: weakref.WeakKeyDictionary[Database, CredentialCache] = weakref.WeakKeyDictionary()


def credential_cache(db: Database) -> CredentialCache:
    """The credential cache of ``db``: one per open database, as the database is what it
    mirrors (and what ``logout`` and ``revoke_key`` are given)."""
    cache = _caches.get(db)
    if cache is None:
        cache = _caches[db] = CredentialCache()
    return cache


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
    """End the login ``token``: it is refused from now until it expires (the denylist is
    written first, then the cache forgets the token)."""
    claims = await _valid_claims(db, cfg, token)
    await store.revoke_token(db, claims.jti, claims.user_id, claims.expires_at)
    credential_cache(db).forget("jwt", claims.jti)
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
    credential_cache(db).forget("key", str(int(key_id)))  # "017" is key 17
    log.info("gatewayd.auth.key_revoked", user_id=user_id, key_id=key_id)


async def authenticate(db: Database, cfg: IdentityConfig, credential: str) -> Principal:
    """Whose ``credential`` (a login token or an issued API key) is.

    Raises InvalidApiKey for a key that is unknown or revoked, Unauthorized for anything
    else (no credential, a token that is forged, expired or logged out). A credential
    accepted lately is answered from :class:`CredentialCache` without the database.
    """
    credential = credential.strip()
    if not credential:
        raise Unauthorized("missing credentials")
    if len(credential) > _MAX_CREDENTIAL:
        raise Unauthorized("invalid credentials")
    cache = credential_cache(db)
    digest = hashlib.sha256(credential.encode()).digest()
    if credential.startswith(KEY_PREFIX):
        return await _authenticate_key(db, cache, digest)
    jwt_key = cfg.secrets.jwt_key

    async def read() -> Principal:
        epoch = cache.epoch
        try:
            claims = await _valid_claims(db, cfg, credential)
        except Unauthorized:
            cache.discard(digest)  # a lapsed entry of it must not stand in any more
            raise
        principal = Principal(user_id=claims.user_id, kind="jwt", token_id=claims.jti)
        expires_at = claims.expires_at.timestamp()
        cache.put(digest, principal, epoch=epoch, expires_at=expires_at, jwt_key=jwt_key)
        return principal

    return await cache.reads.run(digest, lambda: cache.look(digest, jwt_key), read)


async def _authenticate_key(db: Database, cache: CredentialCache, digest: bytes) -> Principal:
    """Whose the issued key with this digest is; its use written when due."""

    async def read() -> Principal:
        epoch, due = cache.epoch, cache.touch_due(digest)
        # A due use is written by the lookup itself (one statement).
        found = await store.find_key(db, digest.hex(), touch=due)
        if found is None:
            cache.discard(digest)  # a lapsed entry of it must not stand in any more
            raise InvalidApiKey("invalid or revoked API key")
        if due:
            cache.touched(digest)
        principal = Principal(user_id=found.user_id, kind="key", token_id=str(found.id))
        cache.put(digest, principal, epoch=epoch)
        return principal

    principal = await cache.reads.run(digest, lambda: cache.look(digest), read)
    if cache.touch_due(digest):  # answered from the cache, and its use not written lately
        await _touch_key(db, cache, digest, int(principal.token_id))
    return principal


async def _touch_key(db: Database, cache: CredentialCache, digest: bytes, key_id: int) -> None:
    """Write a cached key's use. It is bookkeeping: a failure is logged, not the request's,
    and tried again ``TOUCH_EVERY`` later."""
    cache.touched(digest)
    try:
        await store.touch_key(db, key_id)
    except StoreError as exc:
        log.warning("gatewayd.auth.key_touch_failed", key_id=key_id, error=exc.message)


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
