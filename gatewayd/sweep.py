"""Removing files past their age: the preview files and the kept inbound media share it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def delete_old_files(
    directory: Path, max_age: Callable[[str], float | None], *, now: float
) -> list[str]:
    """Blocking: remove the regular files of ``directory`` whose mtime is more than
    ``max_age(name)`` s before ``now`` (None: not ours, kept); the names removed. Symlinks are
    never followed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        limit = max_age(entry.name)
        if limit is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime > limit:
                os.unlink(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:
            continue  # someone else removed it first
    return removed
