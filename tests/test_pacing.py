"""Token bucket, backoff and the events bus, on trio's virtual clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from gatewayd.nursery.backoff import Backoff
from gatewayd.nursery.bus import BusEvent, EventBus
from gatewayd.nursery.ratelimit import TokenBucket


async def test_bucket_sends_burst_at_once_then_paces_at_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """150 sends at 100/min with burst 100: 100 at t=0, then one every 0.6 s, the last at t=30."""
    bucket = TokenBucket(rate_per_minute=100, burst=100)
    times = []
    for _ in range(150):
        await bucket.take()
        times.append(trio.current_time())
    assert times[:100] == [0.0] * 100
    assert times[100] == pytest.approx(0.6, abs=1e-6)
    assert times[-1] == pytest.approx(30.0, abs=1e-6)
    gaps = [b - a for a, b in zip(times[100:], times[101:], strict=False)]
    assert all(g == pytest.approx(0.6, abs=1e-6) for g in gaps)


async def test_bucket_refills_up_to_burst_only(autojump_clock: trio.testing.MockClock) -> None:
    """An idle bucket refills to its burst and no further."""
    bucket = TokenBucket(rate_per_minute=60, burst=5)
    for _ in range(5):
        bucket.take_nowait()
    with pytest.raises(trio.WouldBlock):
        bucket.take_nowait()
    await trio.sleep(3600)
    assert bucket.statistics().tokens == 5


async def test_bucket_reconfigure_changes_rate_live(autojump_clock: trio.testing.MockClock) -> None:
    """A new rate applies to the next wait without losing earned tokens."""
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    await bucket.take()
    bucket.reconfigure(rate_per_minute=6, burst=1)
    await bucket.take()
    assert trio.current_time() == pytest.approx(10.0, abs=1e-6)


def test_backoff_doubles_to_the_cap_without_jitter() -> None:
    """Without jitter the delays are 1, 2, 4, … capped at 60, and reset starts over."""
    b = Backoff(initial=1, maximum=60, jitter=False)
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next() == 1


def test_backoff_jitter_stays_within_half_and_full_delay() -> None:
    """With jitter each delay lies in [base/2, base]."""
    b = Backoff(initial=1, maximum=60, rng=random.Random(7))
    for attempt in range(10):
        base = b.base(attempt)
        delay = b.next()
        assert base / 2 <= delay <= base


async def test_bus_delivers_per_agent_and_global() -> None:
    """An agent's subscribers see only its events; global subscribers see all."""
    bus = EventBus()
    with bus.subscribe("a") as sub_a, bus.subscribe("b") as sub_b, bus.subscribe() as everyone:
        bus.publish(BusEvent("a", "status", {"status": "connected"}))
        bus.publish(BusEvent("b", "status", {"status": "disconnected"}))
        assert (await sub_a.receive.receive()).agent_id == "a"
        assert (await sub_b.receive.receive()).agent_id == "b"
        assert [(await everyone.receive.receive()).agent_id for _ in range(2)] == ["a", "b"]
        assert sub_a.receive.statistics().current_buffer_used == 0
    assert bus.subscriber_count("a") == 0 and bus.subscriber_count() == 0


async def test_slow_subscriber_is_dropped_and_never_blocks() -> None:
    """A full subscriber is dropped; publishing continues for the others without waiting."""
    bus = EventBus(buffer=3)
    with bus.subscribe("a") as slow, bus.subscribe("a", buffer=100) as fast:
        for i in range(10):
            bus.publish(BusEvent("a", "message", {"i": i}))  # never awaits
        assert slow.dropped and not fast.dropped
        drained = [event.data["i"] async for event in slow]
        assert drained == [0, 1, 2]  # what it had, then its iteration ends
        assert [(await fast.receive.receive()).data["i"] for _ in range(10)] == list(range(10))
        assert bus.subscriber_count("a") == 1
