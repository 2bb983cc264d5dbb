"""Keyed rate limits and the login throttle, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gatewayd.errors import RateLimitExceeded
from gatewayd.limits import Decision, KeyedLimiter, LoginThrottle


async def test_a_key_gets_its_burst_then_one_request_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the burst the next request is refused with the seconds until the next token."""
    limiter = KeyedLimiter(60, burst=3)
    answers = [limiter.hit("10.0.0.1") for _ in range(3)]
    assert [a.allowed for a in answers] == [True, True, True]
    assert [a.remaining for a in answers] == [2, 1, 0]
    refused = limiter.hit("10.0.0.1")
    assert refused == Decision(
        allowed=False, limit=3, remaining=0, reset_seconds=3.0, retry_after=1.0
    )
    await trio.sleep(refused.retry_after)
    assert limiter.hit("10.0.0.1").allowed
    assert trio.current_time() == 1.0


async def test_keys_have_separate_budgets(autojump_clock: trio.testing.MockClock) -> None:
    """One key spending its budget leaves another key's untouched."""
    limiter = KeyedLimiter(100)
    for _ in range(100):
        assert limiter.hit("alice").allowed
    assert not limiter.hit("alice").allowed
    bob = limiter.hit("bob")
    assert bob.allowed and bob.remaining == 99 and bob.limit == 100


async def test_a_refused_decision_raises_with_its_numbers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """raise_if_refused carries retry_after, limit, remaining and reset; an allowed one passes."""
    limiter = KeyedLimiter(30, burst=1)
    limiter.hit("k").raise_if_refused()
    with pytest.raises(RateLimitExceeded) as info:
        limiter.hit("k").raise_if_refused("slow down")
    err = info.value
    assert (err.retry_after, err.limit, err.remaining, err.reset) == (2.0, 1, 0, 2.0)
    assert err.message == "slow down"


async def test_peek_neither_takes_nor_remembers(autojump_clock: trio.testing.MockClock) -> None:
    """peek answers what hit would, without spending a request or storing the key."""
    limiter = KeyedLimiter(60, burst=2)
    assert limiter.peek("new").allowed
    assert limiter.statistics().keys == 0
    limiter.hit("k")
    limiter.hit("k")
    assert not limiter.peek("k").allowed
    assert limiter.peek("k").retry_after == 1.0
    await trio.sleep(1)
    assert limiter.peek("k").allowed and limiter.peek("k").remaining == 1


async def test_give_back_returns_a_request(autojump_clock: trio.testing.MockClock) -> None:
    """A request given back can be spent again at once."""
    limiter = KeyedLimiter(60, burst=1)
    assert limiter.hit("k").allowed
    limiter.give_back("k")
    assert limiter.hit("k").allowed
    assert not limiter.hit("k").allowed


async def test_idle_keys_are_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    """A key whose bucket has refilled is dropped the next time the limiter is used."""
    limiter = KeyedLimiter(60, burst=10)
    limiter.hit("a")
    await trio.sleep(5)
    limiter.hit("b")
    assert limiter.statistics().keys == 2
    await trio.sleep(5)  # a was last used 10 s ago: full again
    limiter.hit("c")
    assert limiter.statistics().keys == 2  # b and c
    await trio.sleep(10)
    limiter.hit("d")
    stats = limiter.statistics()
    assert stats.keys == 1 and stats.evicted == 0


async def test_memory_is_bounded_by_max_keys(autojump_clock: trio.testing.MockClock) -> None:
    """Past max_keys the least recently used key is evicted (and starts again full)."""
    limiter = KeyedLimiter(60, burst=1, max_keys=2)
    limiter.hit("a")
    limiter.hit("b")
    limiter.hit("a")  # a is now the most recently used, b the least
    limiter.hit("c")
    stats = limiter.statistics()
    assert (stats.keys, stats.evicted) == (2, 1)
    assert limiter.hit("b").allowed  # forgotten, so forgiven: and it evicts a
    for i in range(1000):
        limiter.hit(f"flood-{i}")
    assert limiter.statistics().keys == 2


async def test_reconfigure_keeps_what_is_left(autojump_clock: trio.testing.MockClock) -> None:
    """New numbers apply to known keys without refilling them."""
    limiter = KeyedLimiter(60, burst=5)
    for _ in range(5):
        limiter.hit("k")
    limiter.reconfigure(120, burst=2)
    refused = limiter.hit("k")
    assert not refused.allowed and refused.limit == 2 and refused.retry_after == 0.5
    assert limiter.hit("other").remaining == 1


async def test_login_throttle_is_per_client_and_global(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that spent its attempts is refused; once everyone spent the global ones, all are."""
    throttle = LoginThrottle(per_client_per_minute=2, global_per_minute=3)
    assert throttle.reserve("1.1.1.1").allowed
    assert throttle.reserve("1.1.1.1").allowed
    refused = throttle.reserve("1.1.1.1")
    assert not refused.allowed and refused.retry_after == 30.0
    assert throttle.reserve("2.2.2.2").allowed  # the third attempt overall
    everyone = throttle.reserve("3.3.3.3")
    assert not everyone.allowed and everyone.limit == 3 and everyone.retry_after == 20.0
    await trio.sleep(20)
    # The refusal by the global budget took nothing from 3.3.3.3's own budget.
    assert throttle.reserve("3.3.3.3").allowed
    assert not throttle.reserve("4.4.4.4").allowed  # that was the one global attempt earned


async def test_released_attempts_do_not_count(autojump_clock: trio.testing.MockClock) -> None:
    """Successful logins give their attempt back, so only failures are throttled."""
    throttle = LoginThrottle(per_client_per_minute=2, global_per_minute=2)
    for _ in range(50):
        assert throttle.reserve("1.1.1.1").allowed
        throttle.release("1.1.1.1")
    assert throttle.reserve("1.1.1.1").allowed
    assert throttle.reserve("1.1.1.1").allowed
    assert not throttle.reserve("1.1.1.1").allowed
