"""The shipped systemd unit: it verifies without a warning on this machine's systemd (252, as
on Debian 12; Ubuntu 22.04 has 249), and its reload command drives the daemon through the
RELOADING=1 → READY=1 handshake that ``Type=notify`` relies on.

systemd 253's ``Type=notify-reload`` lives in a drop-in of its own
(systemd/gatewayd.service.d/notify-reload.conf), for those who have it.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.daemon import ROOT, Daemon
from tests.test_daemon import next_notification, notify_socket, write_config

__all__ = ["notify_socket"]  # the fixture, used by name below

UNIT = ROOT / "systemd" / "gatewayd.service"
DROP_IN = ROOT / "systemd" / "gatewayd.service.d" / "notify-reload.conf"
INSTALLED = "/opt/gatewayd/.venv/bin/gatewayd"


def service_section(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser["Service"]


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian: the systemd package)"
    # The unit as installed, with ExecStart pointing at this checkout's entry point (verify
    # checks that the command exists).
    gatewayd = Path(sys.executable).parent / "gatewayd"
    assert gatewayd.is_file()
    unit = UNIT.read_text()
    assert INSTALLED in unit
    (tmp_path / "gatewayd.service").write_text(unit.replace(INSTALLED, str(gatewayd)))
    result = subprocess.run(
        [analyze, "verify", "./gatewayd.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_unit_uses_what_every_systemd_since_249_knows() -> None:
    service = service_section(UNIT)
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NotifyAccess"] == "main"
    assert "ReloadSignal" not in service
    drop_in = service_section(DROP_IN)
    assert (drop_in["Type"], drop_in["ReloadSignal"], drop_in["ExecReload"]) == (
        "notify-reload",
        "SIGHUP",
        "",
    )


async def test_the_units_reload_command_drives_the_reload_handshake(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery, notify_socket: trio.socket.SocketType
) -> None:
    """``ExecReload`` exactly as written in the unit ($MAINPID filled in, as systemd does):
    the daemon answers RELOADING=1 with MONOTONIC_USEC, then READY=1, and keeps serving."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    daemon = await Daemon.start(nursery, ["--config", str(config)], env)
    while "READY" not in await next_notification(notify_socket):
        pass

    command = service_section(UNIT)["ExecReload"].replace("$MAINPID", str(daemon.process.pid))
    finished = await trio.run_process(shlex.split(command), check=False)
    assert finished.returncode == 0
    reloading = await next_notification(notify_socket)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    ready = await next_notification(notify_socket)
    assert ready["READY"] == "1"
    assert await daemon.wait_for("gatewayd.config.reloaded")

    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
