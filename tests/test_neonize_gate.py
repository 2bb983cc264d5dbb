"""The phase-fair gate of gatewayd/whatsapp/neonize/gate.py, in virtual time.

Each test runs on trio's autojump clock, so the times asserted are exact: a holder "works" by
sleeping, and the clock jumps whenever every task waits.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gatewayd.whatsapp.neonize.gate import FfiGate


class Recorder:
    """Drives one gate and records when each holder got in and left."""

    def __init__(self, gate: FfiGate) -> None:
        self.gate = gate
        self.entered: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self.order: list[str] = []

    async def read(self, name: str, hold: float, at: float = 0.0) -> None:
        await trio.sleep_until(at)
        async with self.gate.shared():
            self._in(name)
            await trio.sleep(hold)
            self.left[name] = trio.current_time()

    async def write(self, name: str, hold: float, at: float = 0.0) -> None:
        await trio.sleep_until(at)
        async with self.gate.exclusive():
            assert self.gate.readers == 0
            self._in(name)
            await trio.sleep(hold)
            self.left[name] = trio.current_time()

    def _in(self, name: str) -> None:
        self.entered[name] = trio.current_time()
        self.order.append(name)


async def test_a_reader_behind_queued_writers_waits_for_one_writer_phase(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader arriving behind 20 queued writers gets in when the writer inside leaves."""
    rec = Recorder(FfiGate())
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.write, "w0", 1.0, start)
        for i in range(1, 21):
            nursery.start_soon(rec.write, f"w{i}", 1.0, start + 0.01 * i)
        nursery.start_soon(rec.read, "r1", 0.25, start + 0.5)
        # Arrives while w1 waits for r1 to leave: it waits for w1's phase, not w2's.
        nursery.start_soon(rec.read, "r2", 0.25, start + 1.1)
    assert rec.entered["r1"] - start == pytest.approx(1.0)  # w0's phase only, not 20 more
    assert rec.entered["w1"] - start == pytest.approx(1.25)  # w1 waited for r1 to leave
    assert rec.entered["r2"] - start == pytest.approx(2.25)  # right after w1's phase
    assert rec.entered["w2"] - start == pytest.approx(2.5)
    assert rec.order[:5] == ["w0", "r1", "w1", "r2", "w2"]
    assert [n for n in rec.order if n.startswith("w")] == [f"w{i}" for i in range(21)]
    assert rec.left["w20"] - start == pytest.approx(21.5)


async def test_every_reader_waiting_gets_in_together_at_the_end_of_a_writer_phase(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """All readers held back by one writer enter at once, ahead of the writers queued after it."""
    rec = Recorder(FfiGate())
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.write, "w0", 2.0, start)
        nursery.start_soon(rec.write, "w1", 2.0, start + 0.1)
        for i in range(50):
            nursery.start_soon(rec.read, f"r{i}", 0.5 + 0.01 * i, start + 0.2 + 0.01 * i)
    assert [rec.entered[f"r{i}"] - start for i in range(50)] == [pytest.approx(2.0)] * 50
    assert rec.entered["w1"] - start == pytest.approx(2.0 + 0.5 + 0.49)  # the longest reader


async def test_a_writer_is_not_starved_by_a_stream_of_readers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Overlapping readers never leave the gate free, yet a writer gets in after those inside."""
    rec = Recorder(FfiGate())
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        # A new reader every 0.1 s, each holding 0.5 s, for 10 s: never a moment without one.
        for i in range(100):
            nursery.start_soon(rec.read, f"r{i}", 0.5, start + 0.1 * i)
        nursery.start_soon(rec.write, "w", 1.0, start + 1.05)
    # Inside at 1.05: r6..r10, the last leaving at 1.5. Readers arriving later wait for w.
    assert rec.entered["w"] - start == pytest.approx(1.5)
    assert rec.entered["r11"] - start == pytest.approx(2.5)  # arrived at 1.1, after w's phase
    assert rec.entered["r25"] - start == pytest.approx(2.5)  # arrived at 2.5, walked in


async def test_a_bounded_shared_wait_gives_up_and_leaves_no_trace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """shared(timeout) behind a long writer raises TooSlowError on time; the gate is unchanged."""
    gate = FfiGate()
    rec = Recorder(gate)
    start = trio.current_time()
    failed_at: list[float] = []

    async def impatient() -> None:
        await trio.sleep(0.5)
        with pytest.raises(trio.TooSlowError):
            async with gate.shared(timeout=2.0):
                raise AssertionError("got in while the writer held the gate")
        failed_at.append(trio.current_time())
        assert gate.readers_waiting == 0 and gate.readers == 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.write, "w", 10.0, start)
        nursery.start_soon(impatient)
    assert failed_at == [pytest.approx(start + 2.5)]
    assert gate.readers == gate.readers_waiting == gate.writers_waiting == 0
    async with gate.exclusive(timeout=0):  # free again: no wait, so no timeout either
        pass


async def test_a_writer_giving_up_lets_in_the_readers_held_back_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A head writer that times out behind a stuck reader admits the readers waiting for it."""
    gate = FfiGate()
    rec = Recorder(gate)
    start = trio.current_time()
    gave_up: list[float] = []

    async def bounded_writer() -> None:
        await trio.sleep(1.0)
        with pytest.raises(trio.TooSlowError):
            async with gate.exclusive(timeout=3.0):
                raise AssertionError("got in while the stuck reader held the gate")
        gave_up.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.read, "stuck", 100.0, start)  # a stalled upload
        nursery.start_soon(bounded_writer)
        nursery.start_soon(rec.read, "send", 0.1, start + 2.0)
    assert gave_up == [pytest.approx(start + 4.0)]
    assert rec.entered["send"] - start == pytest.approx(4.0)  # not 100 s
    assert gate.writers_waiting == gate.readers_waiting == gate.readers == 0


async def test_a_cancelled_queued_writer_leaves_the_queue_and_its_readers_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling a writer queued behind another keeps the rest of the queue and its readers in order."""
    gate = FfiGate()
    rec = Recorder(gate)
    start = trio.current_time()
    cancel_w1 = trio.CancelScope()

    async def w1() -> None:
        with cancel_w1:
            await rec.write("w1", 2.0, start + 0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.write, "w0", 2.0, start)
        nursery.start_soon(w1)
        nursery.start_soon(rec.write, "w2", 2.0, start + 0.2)
        nursery.start_soon(rec.read, "r", 0.5, start + 0.3)
        await trio.sleep_until(start + 1.0)
        assert (gate.writers_waiting, gate.readers_waiting) == (2, 1)
        cancel_w1.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert (gate.writers_waiting, gate.readers_waiting) == (1, 1)
    assert "w1" not in rec.entered
    assert rec.order == ["w0", "r", "w2"]
    assert rec.entered["r"] - start == pytest.approx(2.0)  # still right after w0
    assert rec.entered["w2"] - start == pytest.approx(2.5)
