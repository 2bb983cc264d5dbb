"""The directory of received media: one file per message row, named by its row id.

Names are the row id's digits only (what the route parses), so no request can name a path
outside the directory. A file is written under a dot-name and renamed into place, so a reader
sees a whole file or none. ``delete_old_media`` is the retention, run by the cleanup timer
(gatewayd/nursery/cleanup.py); it never touches a name it did not make.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from gatewayd.config import Config
from gatewayd.sweep import delete_old_files

PART_SUFFIX = ".part"
#: A half-written file older than this (a crash mid-write) is removed by the cleanup.
PART_MAX_AGE = 3600.0


def inbound_dir(config: Config) -> Path:
    """``media.inbound_dir``, or ``media`` in ``database.data_dir``."""
    if config.media.inbound_dir:
        return Path(config.media.inbound_dir)
    return Path(config.database.data_dir) / "media"


def media_file(directory: Path, row_id: int) -> Path:
    if row_id < 0:
        raise ValueError("row ids are not negative")
    return directory / str(int(row_id))


def write_media(directory: Path, row_id: int, data: bytes) -> str:
    """Blocking: keep ``data`` as the file of ``row_id``; its SHA-256 (hex)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = media_file(directory, row_id)
    part = directory / f".{row_id}.{secrets.token_hex(4)}{PART_SUFFIX}"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def delete_old_media(directory: Path, *, older_than: float, now: float) -> list[str]:
    """Blocking: remove kept media whose mtime is more than ``older_than`` s before ``now``
    (and half-written files older than ``PART_MAX_AGE``); the names removed."""

    def max_age(name: str) -> float | None:
        if name.isdigit() and name.isascii():
            return older_than
        if name.startswith(".") and name.endswith(PART_SUFFIX):
            return PART_MAX_AGE
        return None

    return delete_old_files(directory, max_age, now=now)
