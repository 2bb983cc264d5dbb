"""The phase-fair gate with neonize's real ``.so``: a send is not queued behind every connect.

50 agents connect at once (offline, each fails at the DNS lookup after Go registered it: a
real connect-start under the exclusive gate, then a real ``Stop``), while one agent's call
holds the shared side, so that all 50 connect-starts queue as writers. A send of another
agent arrives behind them. With the phase-fair gate it goes through after one writer phase
(one connect-start); the FIFO turnstile it replaced made it wait for all 50. Counted in
exclusive entries, not seconds. The load runs in a child (``python -m
tests.test_neonize_gate_real``) so that a Go abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

AGENTS = 50


def test_a_send_waits_for_one_connect_not_for_fifty(pg_dsn: str) -> None:
    """Behind 50 queued real connects, another agent's send completes after one writer phase."""
    env = {**os.environ, "NEONIZE_BOT_TAG": "off", "GATE_DSN": pg_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_neonize_gate_real", str(AGENTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["writers_queued"] == AGENTS  # every connect-start waited behind the held call
    assert report["send"] == "NotConnected"  # it went through the gate (offline: refused there)
    # Exclusive sections entered between the release of the held call and the send's answer.
    assert report["writer_phases_before_send"] <= 1, report
    assert report["connect_failures"] == AGENTS  # all of them really ran, and failed at DNS


# --------------------------------------------------------------------------- the child


async def held_restore(dsn: str, agents: int) -> dict[str, object]:
    """The load: ``agents`` connects queued behind a held call, then one send. See above."""
    import trio

    from gatewayd.errors import GatewayError
    from gatewayd.whatsapp.neonize.backend import open_neonize_backend
    from gatewayd.whatsapp.neonize.gate import GATE
    from gatewayd.whatsapp.port import ClientEvent, ConnectFailed
    from tests.test_neonize_stress import fake_device

    report: dict[str, object] = {}
    counts = {"connect_failures": 0, "entries_at_release": 0}
    async with open_neonize_backend(
        dsn, schema="gate", embedded=True, idle_session_timeout="300ms"
    ) as backend:
        jids = [f"62811{i:07d}:1@s.whatsapp.net" for i in range(agents)]
        for jid in jids:
            await trio.to_thread.run_sync(fake_device, backend.store.admin_dsn, "gate", jid)
        release = trio.Event()
        held = trio.Event()

        async def held_call() -> None:
            # One agent's call that does not come back for a while (a stalled upload).
            async with GATE.shared():
                held.set()
                await release.wait()

        async def connect(index: int) -> None:
            send, recv = trio.open_memory_channel[ClientEvent](16)
            async with recv:
                try:
                    await backend.client(f"agent-{index}").run(jids[index], send)
                except ConnectFailed:
                    counts["connect_failures"] += 1

        async def send() -> None:
            try:
                await backend.client("sender").send_text("628123456789@s.whatsapp.net", "hi")
                report["send"] = "sent"
            except GatewayError as exc:
                report["send"] = type(exc).__name__
            # Writer phases completed meanwhile: the next writer may already be in (the answer
            # crosses from the task that held the gate), but it cannot have finished.
            phases = GATE.exclusive_entries - counts["entries_at_release"] - GATE.writing
            report["writer_phases_before_send"] = phases

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held_call)
            await held.wait()
            for index in range(agents):
                nursery.start_soon(connect, index)
            with trio.fail_after(30):
                while GATE.writers_waiting < agents:
                    await trio.sleep(0.01)
            report["writers_queued"] = GATE.writers_waiting
            nursery.start_soon(send)
            with trio.fail_after(30):
                while GATE.readers_waiting < 1:
                    await trio.lowlevel.checkpoint()
            counts["entries_at_release"] = GATE.exclusive_entries
            release.set()
    return {**report, "connect_failures": counts["connect_failures"]}


def main() -> None:
    import trio

    from gatewayd.whatsapp.neonize.gate import final_exit

    report = trio.run(held_restore, os.environ["GATE_DSN"], int(sys.argv[1]))
    print(json.dumps(report), flush=True)
    final_exit(0)


if __name__ == "__main__":
    main()
