"""The process environment neonize needs, and importing it without side effects.

* ``NEONIZE_BOT_TAG=off``: by default every one-to-one send carries neonize's ``<bot/>`` node
  (the "AI" badge, neonize issue #196). Go reads only the environment present when the process
  was executed; setting ``os.environ`` later is invisible to it (measured: docs/neonize.md,
  "The environment Go reads"). So ``ensure_bot_tag_env`` re-executes the process with the
  variable set when it is missing. The systemd unit sets it too, which makes the re-exec a
  no-op in production.
* Logging: neonize calls ``logging.basicConfig`` at import and forwards whatsmeow's Go logs to
  the ``whatsmeow.*`` loggers. ``import_neonize`` undoes the basicConfig, and
  ``configure_neonize_logging`` sets the Go-side level (read from the ``neonize.utils.log``
  logger at each connect) and the Python-side level, so Go logs reach structlog through the root
  handler at WARNING by default, as JSON lines naming their logger. What Go prints to stdout
  itself (``fmt.Println`` of send errors) is turned into log lines by ``gatewayd.log``'s
  ``capture_stdout``, which ``gatewayd run`` starts in neonize mode.
* ``device_props``: the linked-devices list on the phone shows ``os``; neonize's default is
  "Neonize".
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

BOT_TAG_VARIABLE = "NEONIZE_BOT_TAG"

_LOGGERS = ("neonize", "whatsmeow", "Whatsmeow")


def bot_tag_off(environ: Mapping[str, str] | None = None) -> bool:
    """True when neonize's bot badge is switched off in ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    return env.get(BOT_TAG_VARIABLE, "").strip().lower() == "off"


def ensure_bot_tag_env(argv: list[str], *, module: str = "gatewayd") -> None:
    """Re-execute ``python -m <module> *argv`` with ``NEONIZE_BOT_TAG=off`` unless it is set.

    Returns only when the variable already is ``off``; otherwise the process image is replaced
    (same pid, same stdio). Call it before anything else happens in the process (no threads
    started, no files worth flushing), i.e. first thing in ``gatewayd run``.
    """
    if bot_tag_off():
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    env = dict(os.environ)
    env[BOT_TAG_VARIABLE] = "off"
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def import_neonize() -> ModuleType:
    """Import ``neonize.client`` and remove the root handler neonize's ``basicConfig`` added.

    neonize's import also leaks an ``os.popen("uname -a")`` pipe (``utils/platform.py``); its
    ``ResourceWarning`` is silenced and the pipe collected here, once.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        import neonize.client

        gc.collect()
        # The popen'd child may still be running when its pipe is dropped: Popen.__del__ then
        # parks it in subprocess._active, and its unclosed pipe warns whenever it is reaped.
        active = getattr(subprocess, "_active", None) or []
        for proc in list(active):
            if proc.args == "uname -a":
                proc.wait(timeout=5)
                if proc.stdout is not None:
                    proc.stdout.close()
                active.remove(proc)
        gc.collect()

    if before:
        # basicConfig was a no-op or added to ours; keep exactly what we had.
        root.handlers[:] = before
    else:
        # No logging was configured yet: drop neonize's handler so that whoever configures
        # logging later (gatewayd.log) is the only one writing.
        root.handlers[:] = []
    root.setLevel(level)
    client_module: ModuleType = neonize.client
    return client_module


def configure_neonize_logging(level: str = "warning") -> None:
    """Route neonize's and whatsmeow's logs into the root (structlog) handler at ``level``.

    The Go side filters by the level of the ``neonize.utils.log`` logger at connect time
    (``NOTSET`` would mean a DEBUG firehose through ctypes), so it is set explicitly.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        logger.propagate = True
    logging.getLogger("neonize.utils.log").setLevel(numeric)


def device_props(name: str = "gatewayd") -> Any:
    """The ``DeviceProps`` that make the linked device show as ``name`` on the phone."""
    from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

    return DeviceProps(os=name, platformType=DeviceProps.SAFARI)  # neonize's, known to work
