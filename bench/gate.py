"""How long one agent's send waits at the gate while other agents restore, old gate vs new.

    NEONIZE_BOT_TAG=off .venv/bin/python bench/gate.py [--sizes 1,10,100,1000]

Runs offline with neonize's real ``.so`` against an embedded PostgreSQL in a temporary
directory. "Restoring" is what ``AgentSupervisor.restore`` makes an agent do at start: one
``run`` of a stored device, which here goes through the whole connect path (exclusive gate,
store check, ``NewClient``, Go registration, DNS failure, ``Stop`` under the gate) and ends in
``ConnectFailed``. Meanwhile another agent sends every 20 ms (refused with ``NotConnected``
once it is through the gate, since nothing can connect offline); each send's time is its wait
at the gate. Three setups are measured in the same run, on the same devices:

* ``fifo``: the strict FIFO turnstile the gate was before (a copy is kept below), every agent
  connecting at once, as restore did;
* ``phase-fair``: the gate of gatewayd/whatsapp/neonize/gate.py, every agent at once;
* ``phase-fair+8``: the same gate with ``agents.restore_concurrency = 8`` (an agent keeps its
  slot until its first attempt ended, as restore's slots do).

For ``fifo`` the process's ``GATE`` is swapped for the old one in every module that imported
it; nothing else differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.test_neonize_stress

import trio
from embedded import on_embedded_postgres

from gatewayd.errors import GatewayError
from gatewayd.whatsapp.neonize import gate as neonize_gate
from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.port import ClientEvent, ConnectFailed

SEND_EVERY = 0.02
SCHEMA = "gatebench"


class FifoTurnstile:
    """The gate before issue 9 (kept as the baseline): writers and readers in one FIFO line."""

    def __init__(self) -> None:
        self._turnstile = trio.Lock()
        self._readers = 0
        self._no_readers = trio.Event()
        self._no_readers.set()
        self.exclusive_entries = 0

    @asynccontextmanager
    async def shared(self, timeout: float | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        async with self._turnstile:
            self._readers += 1
            if self._readers == 1:
                self._no_readers = trio.Event()
        try:
            yield
        finally:
            self._readers -= 1
            if self._readers == 0:
                self._no_readers.set()

    @asynccontextmanager
    async def exclusive(self, timeout: float | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        async with self._turnstile:
            await self._no_readers.wait()
            self.exclusive_entries += 1
            yield


def use_gate(gate: Any) -> None:
    """Make every gatewayd module that imported ``GATE`` use ``gate``."""
    current = neonize_gate.GATE
    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType) and module.__name__.startswith("gatewayd."):
            if getattr(module, "GATE", None) is current:
                module.GATE = gate  # type: ignore[attr-defined]


async def restore_once(
    backend: NeonizeBackend, jids: list[str], prefix: str, concurrency: int | None
) -> tuple[list[float], float]:
    """All agents restore once while one agent sends; the send waits and the total time."""
    waits: list[float] = []
    limiter = trio.CapacityLimiter(concurrency or len(jids))
    done = trio.Event()
    sender = backend.client(f"{prefix}-sender")

    async def agent(index: int) -> None:
        async with limiter:  # held until the first attempt ended, as restore's slots are
            send, recv = trio.open_memory_channel[ClientEvent](16)
            async with recv:
                try:
                    await backend.client(f"{prefix}-{index}").run(jids[index], send)
                except ConnectFailed:
                    pass

    async def sends() -> None:
        while not done.is_set():
            began = trio.current_time()
            try:
                await sender.send_text("628123456789@s.whatsapp.net", "hi")
            except GatewayError:
                pass  # NotConnected, after the gate
            waits.append(trio.current_time() - began)
            await trio.sleep(SEND_EVERY)

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sends)
        async with trio.open_nursery() as agents:
            for index in range(len(jids)):
                agents.start_soon(agent, index)
        total = trio.current_time() - began
        done.set()
    return waits, total


async def bench(dsn: str, sizes: list[int]) -> None:
    from tests.test_neonize_stress import fake_device

    async with open_neonize_backend(
        dsn, schema=SCHEMA, embedded=True, idle_session_timeout="300ms"
    ) as backend:
        jids = [f"62813{i:07d}:1@s.whatsapp.net" for i in range(max(sizes))]
        for jid in jids:
            await trio.to_thread.run_sync(fake_device, backend.store.admin_dsn, SCHEMA, jid)
        await restore_once(backend, jids[:2], "warmup", None)
        new_gate = neonize_gate.GATE
        setups: list[tuple[str, Any, int | None]] = [
            ("fifo", FifoTurnstile(), None),
            ("phase-fair", new_gate, None),
            ("phase-fair+8", new_gate, 8),
        ]
        print(f"{'agents':>6} {'gate':>13} {'sends':>6} {'median ms':>10} {'worst ms':>9} "
              f"{'restore s':>10}")  # fmt: skip
        for n in sizes:
            for name, gate, concurrency in setups:
                use_gate(gate)
                try:
                    waits, total = await restore_once(backend, jids[:n], f"{name}-{n}", concurrency)
                finally:
                    use_gate(new_gate)
                print(f"{n:>6} {name:>13} {len(waits):>6} {statistics.median(waits) * 1000:>10.1f} "
                      f"{max(waits) * 1000:>9.1f} {total:>10.2f}", flush=True)  # fmt: skip
                await trio.sleep(0.5)  # leaked connections reaped (idle_session_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    on_embedded_postgres(lambda dsn: trio.run(bench, dsn, sizes))
    neonize_gate.final_exit(0)


if __name__ == "__main__":
    main()
