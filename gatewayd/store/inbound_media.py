"""Received media on the message row: what to download, and how each download ended.

The ``media`` column of an inbound media message holds the attachment's description (mimetype,
size, caption, file name) from the moment it is stored. The downloader (gatewayd/media/fetch.py)
adds ``stored`` (``{"bytes", "sha256", "at"}``) once the file is kept, or ``download_error``
(with ``download_failed_at``) when it could not be had. The adapter's download reference
(``Media.ref``) lives only in ``payload``, never in ``media``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
from psycopg.types.json import Jsonb

from gatewayd.store.db import Connection, Database
from gatewayd.store.messages import structure_inbound
from gatewayd.whatsapp.port import Media

#: The message types whose attachment is downloaded.
DOWNLOADABLE: tuple[str, ...] = ("image", "document", "audio", "video", "sticker")


@attrs.frozen
class MediaRow:
    """An inbound media message as the downloader and the media route need it."""

    row_id: int
    agent_uuid: uuid.UUID
    agent_id: str
    type: str
    #: The attachment as the adapter described it, download reference included.
    media: Media
    #: The ``media`` column: ``stored`` / ``download_error`` once decided.
    state: dict[str, Any]

    @property
    def stored(self) -> bool:
        return isinstance(self.state.get("stored"), dict)

    @property
    def download_error(self) -> str | None:
        error = self.state.get("download_error")
        return error if isinstance(error, str) else None


_SELECT = (
    "SELECT m.id, m.agent_id, a.agent_id, m.type, m.payload, m.media FROM messages m"
    " JOIN agents a ON a.id = m.agent_id"
)


def _row(row: tuple[Any, ...]) -> MediaRow | None:
    payload, state = row[4], row[5]
    if not isinstance(payload, dict) or not isinstance(state, dict):
        return None
    try:
        media = structure_inbound(payload).media
    except Exception:  # noqa: BLE001 - a row written by an older build: nothing to download
        return None
    if media is None:
        return None
    return MediaRow(int(row[0]), row[1], str(row[2]), str(row[3]), media, state)


async def media_row(db: Database, row_id: int) -> MediaRow | None:
    """The inbound media message ``row_id``; None when there is none (or it has no media)."""

    def work(conn: Connection) -> tuple[Any, ...] | None:
        return conn.execute(
            f"{_SELECT} WHERE m.id = %s AND m.direction = 'inbound' AND m.type = ANY(%s)",
            (row_id, list(DOWNLOADABLE)),
        ).fetchone()

    found = await db.run(work)
    return None if found is None else _row(found)


async def pending_media(db: Database, max_age: float, limit: int) -> list[int]:
    """Row ids of inbound media younger than ``max_age`` s neither stored nor failed, oldest
    first (at most ``limit`` per agent; read per agent along ``messages_agent_created_idx``)."""

    def work(conn: Connection) -> list[int]:
        rows = conn.execute(
            "SELECT p.id FROM agents a CROSS JOIN LATERAL ("
            " SELECT id, created_at FROM messages WHERE agent_id = a.id"
            " AND created_at > now() - make_interval(secs => %s)"
            " AND direction = 'inbound' AND type = ANY(%s) AND media IS NOT NULL"
            " AND NOT media ? 'stored' AND NOT media ? 'download_error'"
            " ORDER BY created_at LIMIT %s) p ORDER BY p.created_at, p.id",
            (max_age, list(DOWNLOADABLE), limit),
        ).fetchall()
        return [int(r[0]) for r in rows]

    return await db.run(work)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _merge(db: Database, row_id: int, patch: dict[str, Any], drop: str) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET media = (coalesce(media, '{}'::jsonb) - %s) || %s WHERE id = %s",
            (drop, Jsonb(patch), row_id),
        )

    await db.run(work)


async def record_stored(db: Database, row_id: int, *, size: int, sha256: str) -> None:
    """The file of ``row_id`` is kept (a former failure is forgotten)."""
    stored = {"bytes": size, "sha256": sha256, "at": _now()}
    await _merge(db, row_id, {"stored": stored}, "download_error")


async def record_failed(db: Database, row_id: int, error: str) -> None:
    """The download of ``row_id`` failed for ``error`` (shown as ``media.download_error``)."""
    await _merge(
        db, row_id, {"download_error": error[:500], "download_failed_at": _now()}, "stored"
    )
