"""What an idle neonize client costs: RSS and threads per client, next to the no-client baseline.

    NEONIZE_BOT_TAG=off .venv/bin/python bench/neonize_idle.py [--sizes 1,50,200]

Runs offline against an embedded PostgreSQL in a temporary directory. "Idle" here is what
an agent is while WhatsApp is unreachable: its ``NeonizeClient`` exists, one ``run`` attempt
went through the whole connect path (gate, store check, ``NewClient``, Go registration, DNS
failure, ``Stop`` under the gate) and ended in ``ConnectFailed``. That leaves behind what a
retrying agent keeps between attempts; the database connection each attempt leaks is counted
separately (it is reaped by ``idle_session_timeout``, shortened here so waves stay under
PostgreSQL's ``max_connections``). A connected idle client (websocket, keepalives) cannot be
measured offline. Each size is measured on fresh clients, in the same process, cumulatively
(RSS is never given back, which is the point), so the baseline is the run's zero.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.test_neonize_stress

import psutil
import psycopg
import trio
from embedded import on_embedded_postgres

from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.neonize.gate import final_exit
from gatewayd.whatsapp.port import ClientEvent, ConnectFailed

PROC = psutil.Process()
WAVE = 20  # concurrent connect attempts; each holds a leaked DB connection for ~1 s


def snapshot() -> tuple[float, int, int]:
    gc.collect()
    return PROC.memory_info().rss / 2**20, PROC.num_threads(), threading.active_count()


def neonize_connections(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'gatewayd_whatsmeow'"
        ).fetchone()
    return int(row[0]) if row else 0


def store_device(dsn: str, jid: str) -> None:
    from tests.test_neonize_stress import fake_device

    fake_device(dsn, "whatsmeow", jid)


async def fail_once(backend: NeonizeBackend, agent_id: str, jid: str) -> bool:
    send, recv = trio.open_memory_channel[ClientEvent](4)
    try:
        await backend.client(agent_id).run(jid, send)
    except ConnectFailed:
        return True
    finally:
        recv.close()
    return False


async def bench(dsn: str, sizes: list[int]) -> None:
    async with open_neonize_backend(dsn, embedded=True, idle_session_timeout="1s") as backend:
        total = sum(sizes)
        jids = [f"6289{i:08d}:1@s.whatsapp.net" for i in range(total)]
        for jid in jids:
            await trio.to_thread.run_sync(store_device, dsn, jid)
        # Warm-up: one throwaway attempt loads what every client shares (Go runtime, pools).
        await trio.to_thread.run_sync(store_device, dsn, "628900000000:9@s.whatsapp.net")
        await fail_once(backend, "warmup", "628900000000:9@s.whatsapp.net")
        await settle(dsn)
        base_rss, base_os, base_py = snapshot()
        print(f"baseline (neonize loaded, store open, 0 clients): RSS {base_rss:.1f} MiB, "
              f"OS threads {base_os}, Python threads {base_py}")  # fmt: skip
        print(f"{'N':>5} {'RSS MiB':>9} {'+MiB/client':>12} {'OS thr':>7} {'+thr':>5} "
              f"{'py thr':>7} {'failed':>7} {'leaked conns (peak/wave)':>25}")  # fmt: skip
        start = 0
        prev_rss = base_rss
        for n in sizes:
            failed = 0
            peak = 0
            batch = jids[start : start + n]
            for wave in range(0, n, WAVE):
                results: list[bool] = []

                async def one(
                    i: int, jid: str, results: list[bool] = results, start: int = start
                ) -> None:
                    results.append(await fail_once(backend, f"agent-{start + i}", jid))

                async with trio.open_nursery() as nursery:
                    for i, jid in enumerate(batch[wave : wave + WAVE], start=wave):
                        nursery.start_soon(one, i, jid)
                failed += sum(results)
                peak = max(peak, await trio.to_thread.run_sync(neonize_connections, dsn))
                await settle(dsn)
            start += n
            rss, os_threads, py_threads = snapshot()
            print(f"{n:>5} {rss:>9.1f} {(rss - prev_rss) / n:>12.3f} {os_threads:>7} "
                  f"{os_threads - base_os:>5} {py_threads:>7} {failed:>7} {peak:>25}")  # fmt: skip
            prev_rss = rss
        print(f"after {total} idle clients: RSS +{rss - base_rss:.1f} MiB "
              f"({(rss - base_rss) / total:.3f} MiB/client), OS threads +{os_threads - base_os}")  # fmt: skip


async def settle(dsn: str) -> None:
    """Wait for the leaked connections to be reaped (idle_session_timeout=1s)."""
    with trio.move_on_after(30):
        while await trio.to_thread.run_sync(neonize_connections, dsn) > 2:
            await trio.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,50,200")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    on_embedded_postgres(lambda dsn: trio.run(bench, dsn, sizes))
    final_exit(0)


if __name__ == "__main__":
    main()
