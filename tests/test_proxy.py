"""``server.trusted_proxies`` (gatewayd/http/proxy.py): behind a trusted reverse proxy the
client is read from X-Forwarded-For; from anywhere else, headers change nothing. Checked on the
rule itself and through the daemon, where the login throttle counts per client address."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from gatewayd.http.proxy import client_address, networks
from tests.browser import SimDaemon, write_sim_config

TRUSTED = networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
        (
            "127.0.0.1",
            "198.51.100.1, 203.0.113.7",
            "203.0.113.7",
        ),  # the left one is the client's word
        ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),  # a second trusted hop skipped
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "10.1.2.3", "10.1.2.3"),  # only proxies: the farthest one
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7, garbage", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7:4711", "203.0.113.7"),
        ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("::1", "2001:db8::2", "2001:db8::2"),
        ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("192.0.2.50", "203.0.113.7", "192.0.2.50"),  # not a proxy: the header is ignored
    ],
)
def test_the_client_is_the_nearest_untrusted_hop(peer: str, header: str, client: str) -> None:
    assert client_address(peer, header, TRUSTED) == client


def test_nothing_is_believed_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", "203.0.113.7", ()) == "127.0.0.1"


def login_failures(daemon: SimDaemon, forwarded_for: str, times: int) -> list[int]:
    bad = base64.b64encode(b"ZZZZZZ:").decode()
    statuses = []
    for _ in range(times):
        r = httpx.post(
            f"{daemon.base_url}/api/v1/auth/login",
            headers={"Authorization": f"Basic {bad}", "X-Forwarded-For": forwarded_for},
        )
        statuses.append(r.status_code)
    return statuses


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-proxy", "direct"])
def test_login_throttling_counts_per_client_behind_the_proxy(
    tmp_path: Path, pg_dsn: str, trusted: bool
) -> None:
    """Two clients behind the proxy (the test, on 127.0.0.1) have a budget each; with no
    trusted proxy the header changes nothing and they share the peer's."""
    extra = "[auth]\nlogin_attempts_per_minute = 2\n"
    if trusted:
        extra = f"{extra}\n".replace("[auth]", "[auth]")  # same limits
    config = write_sim_config(tmp_path, pg_dsn, extra)
    if trusted:
        text = config.read_text().replace(
            "[server]\n", '[server]\ntrusted_proxies = ["127.0.0.1"]\n', 1
        )
        config.write_text(text)
    with SimDaemon.running(config) as daemon:
        first = login_failures(daemon, "203.0.113.1", 3)
        second = login_failures(daemon, "203.0.113.2", 1)
    assert first == [401, 401, 429]
    assert second == ([401] if trusted else [429])
