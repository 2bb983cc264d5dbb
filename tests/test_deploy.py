"""docs/deploy.md's installation, run for real: ``tools/install.sh`` installs the wheel of
``make dist`` under a scratch root (DESTDIR) — the venv under /opt/gatewayd, the config and
the secrets file under /etc/gatewayd with their modes, the unit — and the installed daemon,
started as the unit starts it (its config, its environment file, its working directory),
serves the API and the dashboard.

Only what needs a booted systemd and root (the system user, ``systemctl``) is left out: the
script skips it with DESTDIR. tests/test_systemd.py verifies the unit itself.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx

from tests.browser import ROOT, SimDaemon
from tests.test_container import known_setting
from tests.test_dist import build_wheel

INSTALL = ROOT / "tools" / "install.sh"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as systemd's EnvironmentFile= reads them (comments skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_install_script_installs_a_daemon_that_serves(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    root = tmp_path / "root"
    result = subprocess.run(
        [str(INSTALL), str(wheel)],
        env={**os.environ, "DESTDIR": str(root)},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    etc = root / "etc" / "gatewayd"
    assert stat.S_IMODE((etc / "gatewayd.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "gatewayd.toml").stat().st_mode) == 0o644
    unit = root / "etc" / "systemd" / "system" / "gatewayd.service"
    assert unit.read_text() == (ROOT / "systemd" / "gatewayd.service").read_text()
    gatewayd = root / "opt" / "gatewayd" / ".venv" / "bin" / "gatewayd"
    assert (
        "ExecStart=/opt/gatewayd/.venv/bin/gatewayd run --config /etc/gatewayd/gatewayd.toml"
        in unit.read_text()
    )

    env = read_env_file(etc / "gatewayd.env")
    assert all(known_setting(name) for name in env), env
    # The unit's environment, with the machine's paths moved under the scratch root, a free
    # port, and the simulated network (WhatsApp cannot be reached from here).
    state = root / "var" / "lib" / "gatewayd"
    state.mkdir(parents=True)
    # The installed as-service.sh (for cron, docs/backup.md) runs a command with the
    # environment file's settings, in the state directory.
    as_service = root / "opt" / "gatewayd" / "as-service.sh"
    assert stat.S_IMODE(as_service.stat().st_mode) == 0o755
    seen = subprocess.run(
        [str(as_service), "sh", "-c", "pwd; env"],
        env={"PATH": os.environ["PATH"], "DESTDIR": str(root)},
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.splitlines()  # fmt: skip
    assert Path(seen[0]).resolve() == state.resolve()
    assert {f"{name}={value}" for name, value in env.items()} <= set(seen[1:])
    env.update(
        {
            "GATEWAYD_SERVER_PORT": "0",
            "GATEWAYD_DATABASE_DATA_DIR": str(state / "data"),
            "GATEWAYD_MEDIA_TEMP_DIR": str(state / "tmp"),
            "GATEWAYD_WHATSAPP_DEVICE_DIR": str(state / "devices"),
            "GATEWAYD_WHATSAPP_MODE": "sim",
        }
    )
    with SimDaemon.running(
        etc / "gatewayd.toml", cwd=state, extra_env=env, program=[str(gatewayd)]
    ) as daemon:
        assert daemon.base_url.startswith("http://127.0.0.1:")  # loopback unless configured
        health = httpx.get(f"{daemon.base_url}/health", timeout=30)
        assert health.status_code == 200
        assert health.json()["components"]["database"]["status"] == "up"
        page = httpx.get(f"{daemon.base_url}/login", timeout=30)
        assert page.status_code == 200 and '<div id="root">' in page.text
    assert (state / "data").is_dir()  # the embedded PostgreSQL lives in the state directory
