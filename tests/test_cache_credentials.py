"""The credential cache (gatewayd/usecases/identity.py ``CredentialCache``) against a real
PostgreSQL: accepted credentials are answered from memory, this process's revocations and
logouts take effect on the very next request, nobody else's key is ever answered, changes
made elsewhere are seen within ``CREDENTIAL_TTL``, and the cache stays bounded."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from gatewayd.errors import InvalidApiKey, Unauthorized
from gatewayd.limits import LoginThrottle
from gatewayd.metrics import Metrics
from gatewayd.store.db import Connection, Database
from gatewayd.usecases import identity
from gatewayd.usecases.identity import CredentialCache, IdentityConfig, Principal
from gatewayd.usecases.tokens import AuthSecrets, issue_token
from tests.gateway_fixtures import Running
from tests.test_api_v1 import bearer, new_user

SECRET = b"cache-secret-cache-secret-cache-secret-0"


@pytest.fixture
def cfg() -> IdentityConfig:
    return IdentityConfig(secrets=AuthSecrets.from_secret(SECRET))


async def _sql(db: Database, query: str, *args: Any) -> None:
    def work(conn: Connection) -> None:
        conn.execute(query.encode(), args)

    await db.run(work)


async def test_a_cached_key_is_refused_right_after_its_revocation(
    database: Database, cfg: IdentityConfig
) -> None:
    """A key answered from the cache a moment ago is refused on the next check once it is
    revoked here; the user's other key, cached too, goes on working."""
    laptop = await identity.create_key(database, "alice", "laptop")
    phone = await identity.create_key(database, "alice", "phone")
    for key in (laptop, phone, laptop, phone):
        assert (await identity.authenticate(database, cfg, key.key)).user_id == "alice"
    assert len(identity.credential_cache(database)) == 2
    await identity.revoke_key(database, "alice", "0" + laptop.id)  # the same id, written oddly
    with pytest.raises(InvalidApiKey):
        await identity.authenticate(database, cfg, laptop.key)
    assert (await identity.authenticate(database, cfg, phone.key)).token_id == phone.id


async def test_a_cached_token_is_refused_right_after_logout(
    database: Database, cfg: IdentityConfig
) -> None:
    """Logging out forgets the token at once; another login of the same user is unaffected."""
    user = await identity.generate_pin(database, cfg)
    throttle = LoginThrottle(per_client_per_minute=10, global_per_minute=100)
    metrics = Metrics()
    one, two = [
        await identity.login(
            database, cfg, user.pin, client="c", throttle=throttle, metrics=metrics
        )
        for _ in range(2)
    ]
    for token in (one.token, two.token, one.token):
        assert (await identity.authenticate(database, cfg, token)).user_id == user.user_id
    await identity.logout(database, cfg, one.token)
    with pytest.raises(Unauthorized, match="revoked"):
        await identity.authenticate(database, cfg, one.token)
    assert (await identity.authenticate(database, cfg, two.token)).user_id == user.user_id


async def test_changes_made_elsewhere_are_seen_within_the_ttl(
    database: Database, cfg: IdentityConfig, autojump_clock: trio.testing.MockClock
) -> None:
    """A revocation or logout this process did not make (another process, SQL by hand) is not
    seen while the credential is cached, and is from CREDENTIAL_TTL on."""
    key = await identity.create_key(database, "alice", None)
    user = await identity.generate_pin(database, cfg)
    token, claims = issue_token(cfg.secrets, user.user_id, ttl=3600)
    await identity.authenticate(database, cfg, key.key)
    await identity.authenticate(database, cfg, token)
    await _sql(database, "UPDATE api_keys SET is_active = false WHERE id = %s", int(key.id))
    await _sql(
        database,
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES (%s, %s, %s)",
        claims.jti,
        user.user_id,
        claims.expires_at,
    )
    await trio.sleep(identity.CREDENTIAL_TTL - 1)
    assert (await identity.authenticate(database, cfg, key.key)).user_id == "alice"
    assert (await identity.authenticate(database, cfg, token)).user_id == user.user_id
    await trio.sleep(1)
    with pytest.raises(InvalidApiKey):
        await identity.authenticate(database, cfg, key.key)
    with pytest.raises(Unauthorized, match="revoked"):
        await identity.authenticate(database, cfg, token)
    cache = identity.credential_cache(database)
    assert len(cache) == 0  # refused on the re-read: no lapsed entry is left to stand in


async def test_nobody_elses_key_is_answered_from_the_cache(
    database: Database, cfg: IdentityConfig
) -> None:
    """Each cached key answers its own user; a key sharing a cached key's shown prefix, or
    differing from it in one character, is read from the database and refused."""
    alice = await identity.create_key(database, "alice", None)
    bob = await identity.create_key(database, "bob", None)
    for _ in range(2):
        assert (await identity.authenticate(database, cfg, alice.key)).user_id == "alice"
        assert (await identity.authenticate(database, cfg, bob.key)).user_id == "bob"
    last = alice.key[-1]
    forged = [
        alice.prefix + bob.key[len(alice.prefix) :],
        alice.key[:-1] + ("A" if last != "A" else "B"),
        alice.key + "x",
    ]
    for key in forged:
        with pytest.raises(InvalidApiKey):
            await identity.authenticate(database, cfg, key)
    assert len(identity.credential_cache(database)) == 2


async def test_another_users_key_is_refused_over_http(running: Running) -> None:
    """Through the API: each user's key, used over and over, lists that user's sessions only;
    revoking one is effective on the very next request and leaves the other user's alone."""
    client = running.client
    _, _, alice_token = await new_user(client)
    _, _, bob_token = await new_user(client)
    keys = {}
    for name, token in (("alice", alice_token), ("bob", bob_token)):
        made = await client.post("/api/v1/keys", json={"name": name}, headers=bearer(token))
        keys[name] = made.json()["data"]
        await client.post("/api/v1/sessions", json={"session_name": name}, headers=bearer(token))
    for _ in range(3):
        for name in ("alice", "bob"):
            listed = await client.get("/api/v1/sessions", headers={"X-API-Key": keys[name]["key"]})
            assert listed.status_code == 200, listed.text
            assert [s["session_name"] for s in listed.json()["data"]] == [name]
    revoked = await client.delete(
        f"/api/v1/keys/{keys['alice']['id']}", headers=bearer(alice_token)
    )
    assert revoked.status_code == 200
    refused = await client.get("/api/v1/sessions", headers={"X-API-Key": keys["alice"]["key"]})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_API_KEY"
    kept = await client.get("/api/v1/sessions", headers=bearer(keys["bob"]["key"]))
    assert [s["session_name"] for s in kept.json()["data"]] == ["bob"]


async def test_logout_is_effective_on_the_next_request_over_http(running: Running) -> None:
    """A token used (and cached) a moment ago answers 401 on the request after its logout."""
    client = running.client
    _, _, token = await new_user(client)
    for _ in range(3):
        assert (await client.get("/api/v1/sessions", headers=bearer(token))).status_code == 200
    out = await client.post("/api/v1/auth/logout", headers=bearer(token))
    assert out.status_code == 200
    again = await client.get("/api/v1/sessions", headers=bearer(token))
    assert again.status_code == 401 and again.json()["error"]["code"] == "UNAUTHORIZED"


async def test_a_token_is_checked_again_under_another_secret(
    database: Database, cfg: IdentityConfig
) -> None:
    """A token cached under one signing key is verified anew (and refused) under another."""
    token, _ = issue_token(cfg.secrets, "u1", ttl=3600)
    assert (await identity.authenticate(database, cfg, token)).user_id == "u1"
    other = IdentityConfig(secrets=AuthSecrets.from_secret(b"another-secret-" * 3))
    with pytest.raises(Unauthorized):
        await identity.authenticate(database, other, token)
    assert (await identity.authenticate(database, cfg, token)).user_id == "u1"


async def test_a_cached_token_is_refused_once_it_expires(
    database: Database, cfg: IdentityConfig
) -> None:
    """The cache answers a token only until its exp (the token's own clock: the wall clock)."""
    issued = datetime.now(UTC) - timedelta(seconds=58)
    token, claims = issue_token(cfg.secrets, "u1", ttl=60, now=issued)
    assert (await identity.authenticate(database, cfg, token)).user_id == "u1"
    await trio.sleep(max(0.0, claims.expires_at.timestamp() - time.time()) + 0.1)
    with pytest.raises(Unauthorized):
        await identity.authenticate(database, cfg, token)


async def test_the_cache_is_bounded_and_keeps_no_refusal(
    database: Database, cfg: IdentityConfig
) -> None:
    """Beyond its size the least recently used credential is forgotten (and read again when
    used); a flood of wrong keys and forged tokens adds nothing."""
    cache = identity.credential_cache(database)
    cache.size = 3
    keys = [await identity.create_key(database, "alice", f"k{n}") for n in range(5)]
    for key in keys:
        await identity.authenticate(database, cfg, key.key)
    assert len(cache) == 3
    for n in range(200):
        with pytest.raises(InvalidApiKey):
            await identity.authenticate(database, cfg, f"gwd_{n:043d}")
        with pytest.raises(Unauthorized):
            await identity.authenticate(database, cfg, f"eyJ.{n}.x")
    assert len(cache) == 3
    assert (await identity.authenticate(database, cfg, keys[0].key)).token_id == keys[0].id
    assert len(cache) == 3


def _principal(n: int) -> Principal:
    return Principal(user_id=f"u{n}", kind="key", token_id=str(n))


async def test_a_lookup_begun_before_a_revocation_is_not_kept() -> None:
    """What a lookup read from the database before a revocation landed is not put back by it
    (the database answer may predate the revocation); later lookups are kept again."""
    cache = CredentialCache(size=10)
    epoch = cache.epoch
    cache.forget("key", "7")  # a revocation lands while the lookup is reading
    cache.put(b"k7", _principal(7), epoch=epoch)
    assert cache.get(b"k7") is None
    cache.put(b"k7", _principal(7), epoch=cache.epoch)
    assert cache.get(b"k7") == _principal(7)


async def test_the_use_of_a_key_is_due_once_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A key whose use was written is not due again for TOUCH_EVERY seconds; the record of
    writes is bounded, oldest first."""
    cache = CredentialCache(size=2)
    assert cache.touch_due(b"a")
    cache.touched(b"a")
    assert not cache.touch_due(b"a")
    await trio.sleep(identity.TOUCH_EVERY - 1)
    assert not cache.touch_due(b"a")
    await trio.sleep(1)
    assert cache.touch_due(b"a")
    cache.touched(b"a")
    cache.touched(b"b")
    cache.touched(b"c")  # beyond the size: "a", the oldest write, is forgotten
    assert cache.touch_due(b"a") and not cache.touch_due(b"b") and not cache.touch_due(b"c")


async def test_a_lapsed_entry_stands_in_only_while_one_request_reads_it_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past the TTL, the first request reads the credential again; requests meanwhile are
    answered the lapsed entry instead of reading too. Without a read in flight, or from
    twice the TTL on, a lapsed entry answers nobody."""
    cache = CredentialCache(ttl=10)
    old, new = _principal(1), _principal(2)
    reads: list[str] = []

    async def read(who: str, seconds: float = 0) -> Principal:
        reads.append(who)
        epoch = cache.epoch
        await trio.sleep(seconds)
        cache.put(b"k", new, epoch=epoch)
        return new

    cache.put(b"k", old, epoch=cache.epoch)
    await trio.sleep(10)
    assert cache.get(b"k") is None and cache.look(b"k") == (old, False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: cache.reads.run(b"k", lambda: cache.look(b"k"), lambda: read("first", 1))
        )
        await trio.sleep(0.5)
        for _ in range(3):
            assert (
                await cache.reads.run(b"k", lambda: cache.look(b"k"), lambda: read("other")) == old
            )
    assert reads == ["first"] and cache.get(b"k") == new
    await trio.sleep(15)  # lapsed, nobody reading it: the request reads
    assert await cache.reads.run(b"k", lambda: cache.look(b"k"), lambda: read("alone")) == new
    assert reads == ["first", "alone"]
    await trio.sleep(20)  # twice the TTL: gone
    assert cache.look(b"k") is None and len(cache) == 0
