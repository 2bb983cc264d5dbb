"""/api/v1 identity against a real PostgreSQL: PINs, logins, tokens, API keys, the throttle."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog.testing
import trio
import trio.testing

from gatewayd.config import AuthConfig
from gatewayd.errors import ConfigError, InvalidApiKey, NotFound, RateLimitExceeded, Unauthorized
from gatewayd.limits import LoginThrottle
from gatewayd.metrics import Metrics
from gatewayd.store import users as users_store
from gatewayd.store.db import Connection, Database
from gatewayd.usecases import identity
from gatewayd.usecases.identity import IdentityConfig
from gatewayd.usecases.tokens import AuthSecrets, load_secret

SECRET = b"test-secret-test-secret-test-secret-0123"


@pytest.fixture
def cfg() -> IdentityConfig:
    return IdentityConfig(secrets=AuthSecrets.from_secret(SECRET), token_ttl=24 * 3600.0)


def _throttle() -> LoginThrottle:
    return LoginThrottle(per_client_per_minute=10, global_per_minute=100)


def _failures(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("gatewayd_login_failures_total", {"reason": reason})
    assert value is not None
    return value


async def _rows(db: Database, query: str, *args: Any) -> list[tuple[Any, ...]]:
    def work(conn: Connection) -> list[tuple[Any, ...]]:
        return conn.execute(query.encode(), args).fetchall()

    return await db.run(work)


async def _login(db: Database, cfg: IdentityConfig, pin: str) -> identity.LoginResult:
    return await identity.login(
        db, cfg, pin, client="127.0.0.1", throttle=_throttle(), metrics=Metrics()
    )


def _claims(user_id: str = "u1", **changes: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": user_id, "jti": "j-1", "iat": now, "exp": now + 3600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def test_generated_pins_are_well_formed_unique_and_stored_hashed(
    database: Database, cfg: IdentityConfig
) -> None:
    """A PIN matches ^[A-Z0-9]{6}$, differs from the others, and only its keyed hash is kept."""
    issued = [await identity.generate_pin(database, cfg) for _ in range(30)]
    assert all(re.fullmatch(r"[A-Z0-9]{6}", p.pin) for p in issued)
    assert len({p.pin for p in issued}) == 30 and len({p.user_id for p in issued}) == 30
    rows = dict(await _rows(database, "SELECT id, pin_hash FROM users"))
    for p in issued:
        pin_key = hmac.new(SECRET, b"gatewayd/pin-hash/v1", hashlib.sha256).digest()
        assert rows[p.user_id] == hmac.new(pin_key, p.pin.encode(), hashlib.sha256).hexdigest()
    # No column of any stored user holds a PIN in clear.
    dump = str(await _rows(database, "SELECT users::text FROM users"))
    assert not any(p.pin in dump for p in issued)
    assert "pin=" not in repr(issued[0])


async def test_a_taken_pin_is_drawn_again(database: Database, cfg: IdentityConfig) -> None:
    """When the drawn PIN belongs to someone, another one is drawn and the user still created."""
    first = await identity.generate_pin(database, cfg, new_pin=lambda: "AAAAAA")
    draws: Iterator[str] = iter(["AAAAAA", "AAAAAA", "BBBBBB"])
    second = await identity.generate_pin(database, cfg, new_pin=lambda: next(draws))
    assert (first.pin, second.pin) == ("AAAAAA", "BBBBBB")
    assert len(await _rows(database, "SELECT id FROM users")) == 2


async def test_login_with_the_pin_gives_a_24h_token(
    database: Database, cfg: IdentityConfig
) -> None:
    """The right PIN (any case) logs in: an HS256 JWT for the user with jti and a 24 h expiry."""
    issued = await identity.generate_pin(database, cfg)
    result = await _login(database, cfg, issued.pin.lower())
    assert result.user_id == issued.user_id
    assert jwt.get_unverified_header(result.token)["alg"] == "HS256"
    claims = jwt.decode(result.token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == issued.user_id and claims["jti"]
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert result.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    principal = await identity.authenticate(database, cfg, result.token)
    assert (principal.user_id, principal.kind, principal.token_id) == (
        issued.user_id,
        "jwt",
        claims["jti"],
    )
    [(last_login,)] = await _rows(database, "SELECT last_login_at FROM users")
    assert last_login is not None


async def test_a_wrong_pin_is_refused_counted_and_logged_without_the_pin(
    database: Database, cfg: IdentityConfig
) -> None:
    """A wrong or malformed PIN is Unauthorized, counted by reason, and logged without the PIN."""
    await identity.generate_pin(database, cfg, new_pin=lambda: "AAAAAA")
    metrics, throttle = Metrics(), _throttle()
    with structlog.testing.capture_logs() as logs:
        for attempt in ("ZZZZZZ", "not-a-pin"):
            with pytest.raises(Unauthorized):
                await identity.login(
                    database, cfg, attempt, client="10.1.2.3", throttle=throttle, metrics=metrics
                )
    assert _failures(metrics, "wrong_pin") == 1 and _failures(metrics, "malformed") == 1
    failed = [e for e in logs if e["event"] == "gatewayd.auth.login_failed"]
    assert [(e["reason"], e["client"]) for e in failed] == [
        ("wrong_pin", "10.1.2.3"),
        ("malformed", "10.1.2.3"),
    ]
    assert "ZZZZZZ" not in str(logs) and "not-a-pin" not in str(logs)


async def test_failed_logins_are_throttled_with_retry_after(
    database: Database, cfg: IdentityConfig, autojump_clock: trio.testing.MockClock
) -> None:
    """After N failures a client is refused (even with the right PIN) until a token returns."""
    issued = await identity.generate_pin(database, cfg)
    metrics, throttle = Metrics(), LoginThrottle(per_client_per_minute=3, global_per_minute=100)

    async def attempt(pin: str, client: str = "10.0.0.9") -> identity.LoginResult:
        return await identity.login(
            database, cfg, pin, client=client, throttle=throttle, metrics=metrics
        )

    for _ in range(5):  # right PINs do not count
        await attempt(issued.pin)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await attempt("WRONG1")
    with pytest.raises(RateLimitExceeded) as info:
        await attempt(issued.pin)
    assert info.value.retry_after == pytest.approx(20.0)
    assert (info.value.limit, info.value.remaining) == (3, 0)
    assert _failures(metrics, "throttled") == 1
    assert (await attempt(issued.pin, client="10.0.0.10")).user_id == issued.user_id
    await trio.sleep(20)
    assert (await attempt(issued.pin)).user_id == issued.user_id


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda: jwt.encode(_claims(), None, algorithm="none"), id="alg-none"),
        pytest.param(lambda: jwt.encode(_claims(), SECRET * 2, algorithm="HS512"), id="hs512"),
        pytest.param(lambda: jwt.encode(_claims(), b"x" * 40, algorithm="HS256"), id="wrong-key"),
        pytest.param(
            lambda: jwt.encode(_claims(exp=1_600_000_000, iat=1_599_990_000), SECRET, "HS256"),
            id="expired",
        ),
        pytest.param(lambda: jwt.encode(_claims(jti=None), SECRET, "HS256"), id="no-jti"),
        pytest.param(lambda: jwt.encode(_claims(sub=None), SECRET, "HS256"), id="no-sub"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "x" * 10_000, id="huge"),
    ],
)
async def test_forged_tokens_are_refused(
    database: Database, cfg: IdentityConfig, forge: Any
) -> None:
    """alg none, another algorithm, a wrong key, a past exp or a missing claim is Unauthorized."""
    token = forge()
    with pytest.raises(Unauthorized) as info:
        await identity.authenticate(database, cfg, token)
    assert not isinstance(info.value, InvalidApiKey)
    # The same claims, rightly signed, are accepted: the refusal is about the forgery.
    good = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert (await identity.authenticate(database, cfg, good)).user_id == "u1"


async def test_logout_revokes_the_token_until_it_expires(
    database: Database, cfg: IdentityConfig
) -> None:
    """After logout the token is refused; the denylist keeps it until its expiry, then purges."""
    issued = await identity.generate_pin(database, cfg)
    one, two = await _login(database, cfg, issued.pin), await _login(database, cfg, issued.pin)
    await identity.logout(database, cfg, one.token)
    with pytest.raises(Unauthorized, match="revoked"):
        await identity.authenticate(database, cfg, one.token)
    with pytest.raises(Unauthorized):
        await identity.logout(database, cfg, one.token)
    assert (await identity.authenticate(database, cfg, two.token)).user_id == issued.user_id
    [(expires_at,)] = await _rows(database, "SELECT expires_at FROM revoked_tokens")
    assert expires_at == one.expires_at

    past = datetime.now(UTC) - timedelta(minutes=1)
    await users_store.revoke_token(database, "old-jti", issued.user_id, past)
    assert await identity.purge_revoked(database) == 1
    with pytest.raises(Unauthorized, match="revoked"):
        await identity.authenticate(database, cfg, one.token)


async def test_api_keys_are_shown_once_stored_hashed_and_listed_without_secret(
    database: Database, cfg: IdentityConfig
) -> None:
    """A key has a recognisable prefix, authenticates its user, and only its hash is kept."""
    key = await identity.create_key(database, "alice", "ci")
    assert re.fullmatch(r"gwd_[A-Za-z0-9_-]{43}", key.key)
    assert key.prefix == key.key[:12] and key.name == "ci"
    assert key.key not in repr(key)
    principal = await identity.authenticate(database, cfg, key.key)
    assert (principal.user_id, principal.kind, principal.token_id) == ("alice", "key", key.id)
    stored = str(await _rows(database, "SELECT api_keys::text FROM api_keys"))
    assert key.key not in stored and hashlib.sha256(key.key.encode()).hexdigest() in stored
    [listed] = await identity.list_keys(database, "alice")
    assert (listed.id, listed.prefix, listed.name) == (key.id, key.prefix, "ci")
    assert not hasattr(listed, "key") and key.key not in repr(listed)
    assert listed.last_used_at is not None  # the authentication above
    assert await identity.list_keys(database, "bob") == []


async def test_last_used_at_is_written_at_most_once_a_minute(
    database: Database, cfg: IdentityConfig, autojump_clock: trio.testing.MockClock
) -> None:
    """Uses of a key within a minute of the last write leave last_used_at alone, whether the
    key was answered from the cache or read anew; the first use a minute on writes it, from
    either path."""
    key = await identity.create_key(database, "alice", None)

    async def use_and_read() -> datetime:
        await identity.authenticate(database, cfg, key.key)
        [(value,)] = await _rows(database, "SELECT last_used_at FROM api_keys")
        assert isinstance(value, datetime)
        return value

    [(before,)] = await _rows(database, "SELECT last_used_at FROM api_keys")
    assert before is None
    first = await use_and_read()  # read from the database, and written
    assert first is not None
    assert await use_and_read() == first  # cached: nothing written
    await trio.sleep(identity.CREDENTIAL_TTL + 1)
    assert await use_and_read() == first  # read anew (the cache's backstop): not due yet
    await trio.sleep(identity.TOUCH_EVERY - identity.CREDENTIAL_TTL - 3)
    assert await use_and_read() == first  # read anew again, 58 s on: still not due
    await trio.sleep(3)
    second = await use_and_read()  # 61 s on, answered from the cache: written
    assert second > first
    assert await use_and_read() == second
    await trio.sleep(identity.TOUCH_EVERY + 1)
    assert await use_and_read() > second  # read anew and due: the lookup writes it


async def test_a_revoked_key_is_refused_at_once(database: Database, cfg: IdentityConfig) -> None:
    """Revoking a key makes the next authentication with it fail with InvalidApiKey."""
    key = await identity.create_key(database, "alice", "laptop")
    other = await identity.create_key(database, "alice", "phone")
    await identity.revoke_key(database, "alice", key.id)
    with pytest.raises(InvalidApiKey):
        await identity.authenticate(database, cfg, key.key)
    assert (await identity.authenticate(database, cfg, other.key)).user_id == "alice"
    assert [k.id for k in await identity.list_keys(database, "alice")] == [other.id]
    listed = await identity.list_keys(database, "alice", include_revoked=True)
    assert {k.id: k.revoked_at is not None for k in listed} == {key.id: True, other.id: False}
    with pytest.raises(NotFound):
        await identity.revoke_key(database, "alice", key.id)  # already revoked
    with pytest.raises(InvalidApiKey):
        await identity.authenticate(database, cfg, "gwd_" + "A" * 43)


async def test_another_users_key_id_is_not_found(database: Database, cfg: IdentityConfig) -> None:
    """Revoking someone else's key answers exactly as a missing one, and leaves the key working."""
    bobs = await identity.create_key(database, "bob", "bob's")
    errors = []
    for key_id in (bobs.id, "999999", "abc", "-1", "9" * 40):
        with pytest.raises(NotFound) as info:
            await identity.revoke_key(database, "alice", key_id)
        errors.append((type(info.value), info.value.message))
    assert len(set(errors)) == 1
    assert (await identity.authenticate(database, cfg, bobs.key)).user_id == "bob"


async def test_key_names_are_checked(database: Database) -> None:
    """A blank, overlong or control-character name is refused; no key is created."""
    for name in ("  ", "x" * 101, "a\nb"):
        with pytest.raises(Exception, match="name") as info:
            await identity.create_key(database, "alice", name)
        assert info.type.__name__ == "InvalidPayload"
    assert await identity.list_keys(database, "alice") == []


async def test_changing_the_secret_invalidates_tokens_and_pins(
    database: Database, cfg: IdentityConfig
) -> None:
    """Tokens and PINs made under one secret are refused under another; API keys stay valid."""
    issued = await identity.generate_pin(database, cfg)
    token = (await _login(database, cfg, issued.pin)).token
    key = await identity.create_key(database, issued.user_id, None)
    other = IdentityConfig(secrets=AuthSecrets.from_secret(b"another-secret-" * 3))
    with pytest.raises(Unauthorized):
        await identity.authenticate(database, other, token)
    with pytest.raises(Unauthorized):
        await _login(database, other, issued.pin)
    assert (await identity.authenticate(database, other, key.key)).user_id == issued.user_id


def test_the_secret_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    """Without JWT_SECRET a secret is created in the data dir (0600) and read back after."""
    auth = AuthConfig()
    first = load_secret(auth, tmp_path / "data")
    path = tmp_path / "data" / "auth.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(auth, tmp_path / "data") == first
    assert len(first.jwt_key) >= 32
    assert [p.name for p in path.parent.iterdir()] == ["auth.secret"]  # no temp file left
    configured = load_secret(AuthConfig(jwt_secret="s" * 32), tmp_path / "data")
    assert configured.jwt_key == b"s" * 32
    path.write_text("c2hvcnQ=\n")  # "short"
    with pytest.raises(ConfigError, match="auth.secret_file"):
        load_secret(auth, tmp_path / "data")
