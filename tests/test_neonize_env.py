"""The process environment neonize needs: the bot badge off at exec time, quiet Go logs, our name."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from gatewayd.whatsapp.neonize.env import (
    configure_neonize_logging,
    device_props,
    import_neonize,
)

ROOT = Path(__file__).resolve().parent.parent

_CALLER = (
    "import os, sys; print(os.getpid(), flush=True);"
    "from gatewayd.whatsapp.neonize.env import ensure_bot_tag_env;"
    "ensure_bot_tag_env(['run', '--config', 'x.toml'], module='tests.test_neonize_env');"
    "print('returned', flush=True)"
)


def _run_caller(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _CALLER], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_missing_bot_tag_re_executes_the_process_with_it_off() -> None:
    """Without NEONIZE_BOT_TAG=off the process re-executes itself (same pid) with it set."""
    env = {k: v for k, v in os.environ.items() if k != "NEONIZE_BOT_TAG"}
    lines = _run_caller(env)
    pid = lines[0]
    report = json.loads(lines[1])
    assert report == {"pid": int(pid), "bot_tag": "off", "argv": ["run", "--config", "x.toml"]}
    assert "returned" not in lines  # the old image is gone


def test_bot_tag_already_off_returns_without_re_exec() -> None:
    """With NEONIZE_BOT_TAG=off already in the environment the call returns."""
    lines = _run_caller({**os.environ, "NEONIZE_BOT_TAG": "off"})
    assert lines[1:] == ["returned"]


def test_go_logs_go_to_the_root_handler_at_warning() -> None:
    """whatsmeow's loggers pass WARNING and drop INFO; the Go-side level is WARNING too."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    import_neonize()
    assert root.handlers == handlers  # neonize's basicConfig handler is gone
    configure_neonize_logging()
    client_log = logging.getLogger("whatsmeow.Client")
    assert client_log.isEnabledFor(logging.WARNING) and not client_log.isEnabledFor(logging.INFO)
    assert logging.getLogger("neonize.utils.log").level == logging.WARNING


def test_linked_device_is_named_gatewayd() -> None:
    """The DeviceProps the phone shows name the device "gatewayd", not "Neonize"."""
    assert device_props().os == "gatewayd"


if __name__ == "__main__":
    # The re-exec target of the tests above: report what the new image sees.
    print(
        json.dumps(
            {"pid": os.getpid(), "bot_tag": os.environ.get("NEONIZE_BOT_TAG"), "argv": sys.argv[1:]}
        ),
        flush=True,
    )
