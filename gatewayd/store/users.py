"""Users with a PIN, the API keys gatewayd issues, and the denylist of ended logins.

Only hashes are stored: ``users.pin_hash`` (keyed, see gatewayd/usecases/tokens.py) and
``api_keys.key_hash``. Issued keys live in ``api_keys`` next to the plaintext keys of the
deployed setup's other system (``key`` set, ``key_hash`` NULL), which this module never
lists, changes or accepts.
"""

from __future__ import annotations

from datetime import datetime

import attrs
from psycopg.rows import class_row

from gatewayd.store.db import Connection, Database

__all__ = [
    "KeyRecord",
    "create_user",
    "find_key",
    "find_user_by_pin_hash",
    "insert_key",
    "is_token_revoked",
    "list_keys",
    "purge_revoked_tokens",
    "revoke_key",
    "revoke_token",
    "touch_key",
]

_KEY_COLUMNS = "id, user_id, prefix, name, is_active, created_at, last_used_at, revoked_at"


@attrs.frozen(kw_only=True)
class KeyRecord:
    """An issued key as stored, without its hash."""

    id: int
    user_id: str
    prefix: str | None
    name: str | None
    is_active: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def create_user(db: Database, user_id: str, pin_hash: str) -> bool:
    """Insert a user with a PIN; False (nothing inserted) when the PIN hash is taken."""

    def work(conn: Connection) -> bool:
        cur = conn.execute(
            "INSERT INTO users (id, pin_hash) VALUES (%s, %s) ON CONFLICT (pin_hash) DO NOTHING",
            (user_id, pin_hash),
        )
        return cur.rowcount == 1

    return await db.run(work)


async def find_user_by_pin_hash(db: Database, pin_hash: str) -> str | None:
    """The id of the user with this PIN, recording the login; None when there is none."""

    def work(conn: Connection) -> str | None:
        row = conn.execute(
            "UPDATE users SET last_login_at = now() WHERE pin_hash = %s RETURNING id",
            (pin_hash,),
        ).fetchone()
        return None if row is None else str(row[0])

    return await db.run(work)


async def insert_key(
    db: Database, *, user_id: str, key_hash: str, prefix: str, name: str | None
) -> KeyRecord:
    def work(conn: Connection) -> KeyRecord:
        with conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            cur.execute(
                "INSERT INTO api_keys (user_id, key_hash, prefix, name) VALUES (%s, %s, %s, %s)"
                f" RETURNING {_KEY_COLUMNS}",
                (user_id, key_hash, prefix, name),
            )
            row = cur.fetchone()
            assert row is not None
            return row

    return await db.run(work)


async def list_keys(db: Database, user_id: str, *, include_revoked: bool) -> list[KeyRecord]:
    """The user's issued keys, newest first."""

    def work(conn: Connection) -> list[KeyRecord]:
        with conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys"
                " WHERE user_id = %s AND key_hash IS NOT NULL AND (is_active OR %s)"
                " ORDER BY created_at DESC, id DESC",
                (user_id, include_revoked),
            )
            return cur.fetchall()

    return await db.run(work)


async def revoke_key(db: Database, user_id: str, key_id: int) -> bool:
    """Revoke the user's active issued key ``key_id``; False when they have no such key."""

    def work(conn: Connection) -> bool:
        cur = conn.execute(
            "UPDATE api_keys SET is_active = false, revoked_at = now()"
            " WHERE id = %s AND user_id = %s AND key_hash IS NOT NULL AND is_active",
            (key_id, user_id),
        )
        return cur.rowcount == 1

    return await db.run(work)


async def find_key(db: Database, key_hash: str, *, touch: bool = False) -> KeyRecord | None:
    """The active issued key with this hash, or None; with ``touch`` its use is recorded
    (``last_used_at``) by the same statement. The caller decides how often that is
    (gatewayd/usecases/identity.py: at most once a minute per key, so a busy key is not an
    UPDATE and a row lock on every request)."""
    verb = (
        "UPDATE api_keys SET last_used_at = now() WHERE key_hash = %s AND is_active"
        f" RETURNING {_KEY_COLUMNS}"
        if touch
        else f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = %s AND is_active"
    )

    def work(conn: Connection) -> KeyRecord | None:
        with conn.cursor(row_factory=class_row(KeyRecord)) as cur:
            cur.execute(verb.encode(), (key_hash,))
            return cur.fetchone()

    return await db.run(work)


async def touch_key(db: Database, key_id: int) -> None:
    """Record a use of the active key ``key_id`` now."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = %s AND is_active", (key_id,)
        )

    await db.run(work)


async def revoke_token(db: Database, jti: str, user_id: str, expires_at: datetime) -> None:
    """Deny the token ``jti`` until it expires (again: nothing changes)."""

    def work(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (jti) DO NOTHING",
            (jti, user_id, expires_at),
        )

    await db.run(work)


async def is_token_revoked(db: Database, jti: str) -> bool:
    def work(conn: Connection) -> bool:
        row = conn.execute("SELECT 1 FROM revoked_tokens WHERE jti = %s", (jti,)).fetchone()
        return row is not None

    return await db.run(work)


async def purge_revoked_tokens(db: Database) -> int:
    """Forget revoked tokens that have expired anyway; how many were forgotten."""

    def work(conn: Connection) -> int:
        return conn.execute("DELETE FROM revoked_tokens WHERE expires_at < now()").rowcount

    return await db.run(work)
