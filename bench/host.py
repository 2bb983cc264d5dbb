"""How steady this machine's CPU speed is: the reference that latency figures need beside them.

    .venv/bin/python bench/host.py [--seconds 60]

Once a second, times a fixed piece of pure-Python work (``host_speed``: JSON and hashing,
about what a message costs the daemon, the best of seven tries) and prints the spread. Where
the figures move (a shared host: docs/benchmarks.md measured 2x within 30 s on an idle VM),
every latency figure taken there moves with them.
bench/inbound.py prints the same figure just before its phases.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from typing import Any


def host_speed() -> float:
    """Milliseconds this machine takes, at best of seven tries, for a fixed piece of
    pure-Python work. Lower is faster."""
    doc: dict[str, Any] = {"id": "", "text": "message 1: is the blue one in stock?", "n": 0}
    best = math.inf
    for _ in range(7):
        begin = time.perf_counter()
        for n in range(2_000):
            doc["id"], doc["n"] = uuid.UUID(int=n).hex, n
            json.loads(json.dumps(doc, separators=(",", ":")))
            hash(tuple(sorted(doc)))
        best = min(best, time.perf_counter() - begin)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=60, help="how long to watch (one try/s)")
    args = parser.parse_args()
    times: list[float] = []
    begin = time.monotonic()
    for n in range(args.seconds):
        times.append(host_speed())
        time.sleep(max(0.0, begin + n + 1 - time.monotonic()))
    ordered = sorted(times)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    print(
        f"host speed over {args.seconds} s (ms for the same work, lower is faster):"
        f" min {ordered[0]:.1f}, p50 {at(0.5):.1f}, p90 {at(0.9):.1f}, max {ordered[-1]:.1f};"
        f" the slowest second ran at {ordered[0] / ordered[-1]:.0%} of the fastest one's speed"
    )


if __name__ == "__main__":
    main()
