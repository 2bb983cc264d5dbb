"""What the benchmarks share: a throw-away embedded PostgreSQL for one run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gatewayd.store.embedded import EmbeddedPostgres

T = TypeVar("T")


def on_embedded_postgres(run: Callable[[str], T]) -> T:
    """``run(dsn)`` against a new embedded PostgreSQL in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            return run(server.dsn)
        finally:
            server.stop()
