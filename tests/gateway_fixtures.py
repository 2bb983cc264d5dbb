"""Fixtures that start the gateway exactly as production does, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from gatewayd.config import Config
from gatewayd.daemon import Gateway, run_gateway


def make_config(pg_dsn: str, **sections: dict[str, Any]) -> Config:
    """A config on the test database, listening on a free loopback port."""
    raw: dict[str, dict[str, Any]] = {
        "server": {"port": 0, "shutdown_grace": 2.0},
        "database": {"url": pg_dsn, "pool_max": 4},
        "whatsapp": {"mode": "sim"},
        # A fixed login-token key: the daemon would otherwise keep a generated one in the
        # data directory (tested in tests/test_identity.py).
        "auth": {"jwt_secret": "tests-only-jwt-secret-0123456789abcdef"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Config.from_mapping(raw)


@attrs.define
class Running:
    gateway: Gateway
    client: httpx.AsyncClient

    @property
    def base_url(self) -> str:
        return self.gateway.http_binds[0]


@pytest.fixture
async def gateway_config(pg_dsn: str, request: pytest.FixtureRequest) -> Config:
    """The sections given by an indirect parametrization override the defaults."""
    return make_config(pg_dsn, **getattr(request, "param", {}))


@pytest.fixture
async def running(gateway_config: Config, nursery: trio.Nursery) -> AsyncIterator[Running]:
    """The daemon on the test database, and an HTTP client pointed at it."""
    gateway: Gateway = await nursery.start(
        lambda task_status: run_gateway(
            gateway_config, environ={}, handle_signals=False, task_status=task_status
        )
    )
    async with httpx.AsyncClient(base_url=gateway.http_binds[0], timeout=30) as client:
        yield Running(gateway, client)
    gateway.request_stop()
