"""The race that aborts an ungated process: many clients connecting and stopping while other
tasks read from neonize.

Without the gate, reads of neonize's Go maps racing a connect-start or a stop abort the process
with ``fatal error: concurrent map read and map write`` (3 of 3 runs: docs/neonize.md,
"Process-global Go maps and the gate"). The load runs in a child process
(``python -m tests.test_neonize_stress``) so that an abort fails the test instead of killing
pytest. Offline, every connect fails at the DNS lookup after Go has registered and
unregistered the client: exactly the map writes that race.

Besides the agents' own calls, probe tasks read the maps in bursts (``IsConnected`` of a
client Go never registered) under ``GATE.shared()``. A control runs the same load with those
probes outside the gate and must abort: without it, a passing run would not show that the load
reaches the race at all (the agents' own reads reach Go only mid-session, rarely enough that
ungated runs of them alone survived).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent


def fake_device(admin_dsn: str, schema: str, device_jid: str) -> None:
    """Store a paired-looking device (random keys) so that neonize resumes it by JID."""

    def key(n: int) -> bytes:
        return secrets.token_bytes(n)

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.whatsmeow_device (jid, registration_id, noise_key, identity_key,"
                " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details,"
                " adv_account_sig, adv_account_sig_key, adv_device_sig)"
                " VALUES (%s, 1, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ).format(sql.Identifier(schema)),
            (
                device_jid,
                key(32),
                key(32),
                key(32),
                key(64),
                key(32),
                b"\x00",
                key(64),
                key(32),
                key(64),
            ),
        )


def run_child(pg_dsn: str, *mode: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the load below for 8 s in a child: 20 agents, 8 agent readers, 4 map probes."""
    env = {**os.environ, "NEONIZE_BOT_TAG": "off", "STRESS_DSN": pg_dsn}
    return subprocess.run(
        [sys.executable, "-m", "tests.test_neonize_stress", "20", "8", "8", *mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_concurrent_connects_stops_and_reads_do_not_abort(pg_dsn: str) -> None:
    """20 clients connect and stop concurrently with reader calls in parallel, without an abort."""
    done = run_child(pg_dsn, timeout=120)
    assert "fatal error" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["connect_failures"] >= 40  # connect/stop cycles (serialised by the gate)
    # Gated reader calls that reached Go or the gate (272-544 seen here; a sanity floor only).
    assert report["reads"] >= 100
    # Far more gated map reads than the ungated control below needs to abort (about 1-2 s).
    assert report["probe_reads"] >= 20_000
    assert report["unexpected"] == []
    # Every session thread was stopped and joined (bounded), none left behind.
    assert report["session_threads_left"] == 0


def test_the_same_load_with_ungated_reads_aborts(pg_dsn: str) -> None:
    """The same load with the probe reads made outside the gate dies of Go's map race."""
    # The control that shows the load above exercises the race (measured: 14 of 14 runs
    # aborted, after 1.0-1.8 s; docs/neonize.md, "Process-global Go maps and the gate", records
    # the same with reader threads). Only the probes skip the gate; connect-start and stop still
    # hold it exclusively.
    done = run_child(pg_dsn, "ungated", timeout=60)
    assert "fatal error: concurrent map read and map write" in done.stderr, (
        done.returncode,
        done.stdout[-1000:],
        done.stderr[-3000:],
    )
    assert done.returncode == -signal.SIGABRT


# --------------------------------------------------------------------------- the child


PROBE_READERS = 4
"""Tasks reading the Go maps in bursts, as the 4 reader threads of the measured race did.

(docs/neonize.md, "Process-global Go maps and the gate")
"""

PROBE_BURST = 1000
"""``IsConnected`` calls one probe makes per trip to a worker thread (per hold of the gate)."""


async def _stress(
    dsn: str, clients: int, readers: int, seconds: float, *, gated: bool = True
) -> dict[str, object]:
    import random
    from contextlib import AsyncExitStack

    import trio
    from neonize.client import NewClient

    from gatewayd.errors import WhatsAppError
    from gatewayd.whatsapp.neonize.backend import open_neonize_backend
    from gatewayd.whatsapp.neonize.gate import FFI_LIMITER, GATE, neonize_threads
    from gatewayd.whatsapp.port import ConnectFailed, Disconnected

    counts = {"connect_failures": 0, "reads": 0, "probe_reads": 0}
    unexpected: list[str] = []
    # A short idle timeout keeps the connections every failed attempt leaks (one each) well
    # under max_connections while hundreds of attempts run.
    async with open_neonize_backend(
        dsn, schema="stress", embedded=True, idle_session_timeout="300ms"
    ) as backend:
        jids = [f"62800000{i:04d}:1@s.whatsapp.net" for i in range(clients)]
        for jid in jids:
            await trio.to_thread.run_sync(fake_device, backend.store.admin_dsn, "stress", jid)
        agents = [backend.client(f"agent-{i}") for i in range(clients)]
        rng = random.Random(7)
        # A client Go never registers: its IsConnected is a bare read of the maps that every
        # connect-start and stop writes (False, safe in itself), so a burst of them reaches Go
        # far more often than the agents' own reads, which reach it only mid-session.
        probe = NewClient(dsn, uuid="stress-probe")
        probe._stop_finalizer.detach()

        def probe_burst() -> None:
            for _ in range(PROBE_BURST):
                probe.is_connected  # noqa: B018 - the read itself is the point

        async def agent_loop(index: int) -> None:
            send, recv = trio.open_memory_channel[object](100)
            async with recv:
                while True:
                    try:
                        await agents[index].run(jids[index], send)  # type: ignore[arg-type]
                        unexpected.append("run returned")
                    except ConnectFailed as exc:
                        if not isinstance(exc.event, Disconnected):
                            unexpected.append(repr(exc.event))
                        counts["connect_failures"] += 1
                    while True:
                        try:
                            recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                    # Pacing, not waiting for anything: the load stays under max_connections.
                    await trio.sleep(rng.uniform(0.05, 0.35))

        async def reader_loop() -> None:
            while True:
                agent = agents[rng.randrange(clients)]
                try:
                    await agent.go_connected()
                    await agent.send_text("628123456789@s.whatsapp.net", "hi")
                except WhatsAppError:
                    pass  # NotConnected: the gate refused before reaching Go
                counts["reads"] += 1

        async def probe_loop() -> None:
            while True:
                async with AsyncExitStack() as stack:
                    if gated:
                        await stack.enter_async_context(GATE.shared())
                    # The control run (gated=False) makes the same reads outside the gate.
                    await trio.to_thread.run_sync(probe_burst, limiter=FFI_LIMITER)
                counts["probe_reads"] += PROBE_BURST

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for i in range(clients):
                    nursery.start_soon(agent_loop, i)
                for _ in range(readers):
                    nursery.start_soon(reader_loop)
                for _ in range(PROBE_READERS):
                    nursery.start_soon(probe_loop)
    left = [t.name for t in neonize_threads() if t.name.startswith("628")]
    return {**counts, "unexpected": unexpected, "session_threads_left": len(left)}


def main() -> None:
    import trio

    clients, readers, seconds = (int(a) for a in sys.argv[1:4])
    gated = sys.argv[4:] != ["ungated"]
    report = trio.run(
        partial(_stress, gated=gated), os.environ["STRESS_DSN"], clients, readers, float(seconds)
    )
    print(json.dumps(report), flush=True)
    from gatewayd.whatsapp.neonize.gate import final_exit

    final_exit(0 if threading.main_thread().is_alive() else 1)


if __name__ == "__main__":
    main()
