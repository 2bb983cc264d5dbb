"""The cleanup timer: delete media previews older than ``media.preview_ttl`` from
``media.temp_dir``, and received media older than ``media.inbound_retention`` from
``media.inbound_dir`` (gatewayd/media/files.py), every ``media.cleanup_interval`` seconds.

Only files the daemon wrote (``PREVIEW_PREFIX``) are touched: TEMP_DIR may be shared.
Both times are read on every round, so a SIGHUP changes them without a restart.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from gatewayd.config import Config
from gatewayd.media.files import delete_old_media, inbound_dir
from gatewayd.sweep import delete_old_files

log = structlog.get_logger()

PREVIEW_PREFIX = "gatewayd-preview-"


def delete_old_previews(directory: Path, *, older_than: float, now: float) -> list[str]:
    """Blocking: remove our preview files whose mtime is more than ``older_than`` s before ``now``."""
    return delete_old_files(
        directory, lambda name: older_than if name.startswith(PREVIEW_PREFIX) else None, now=now
    )


async def run_cleanup(
    config: Callable[[], Config],
    *,
    now: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    # Rounds run on a fixed schedule (start + k × interval), not "interval after the
    # last round ended", so a slow disk never makes the timer drift.
    deadline = trio.current_time()
    while True:
        deadline = max(deadline + config().media.cleanup_interval, trio.current_time())
        await trio.sleep_until(deadline)
        current, at = config(), now()
        media = current.media
        try:
            removed = await trio.to_thread.run_sync(
                functools.partial(
                    delete_old_previews, Path(media.temp_dir), older_than=media.preview_ttl, now=at
                )
            )
        except OSError as exc:
            log.warning("gatewayd.cleanup.failed", error=str(exc))
        else:
            if removed:
                log.info("gatewayd.cleanup.removed", count=len(removed))
        await clean_inbound(current, now=at)


async def clean_inbound(config: Config, *, now: float) -> list[str]:
    """Delete received media past ``media.inbound_retention``; the names removed."""
    directory = inbound_dir(config)
    try:
        removed = await trio.to_thread.run_sync(
            functools.partial(
                delete_old_media, directory, older_than=config.media.inbound_retention, now=now
            )
        )
    except OSError as exc:
        log.warning("gatewayd.cleanup.inbound_failed", error=str(exc))
        return []
    if removed:
        log.info("gatewayd.cleanup.inbound_removed", count=len(removed))
    return removed
