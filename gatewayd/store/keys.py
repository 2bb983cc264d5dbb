"""Users' API keys and the agents' copies of them.

The keys table belongs to another system in the deployed setup, so its name comes
from the config (validated as ``table`` or ``schema.table`` at load time) and it is
only ever read here.
"""

from __future__ import annotations

from psycopg import sql

from gatewayd.store.db import Connection, Database


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


async def latest_active_key(db: Database, table: str, user_id: str) -> str | None:
    """The user's newest active plaintext key, or None."""

    def work(conn: Connection) -> str | None:
        query = sql.SQL(
            "SELECT key FROM {} WHERE user_id::text = %s AND is_active AND key IS NOT NULL"
            " ORDER BY created_at DESC LIMIT 1"
        ).format(_table(table))
        row = conn.execute(query, (user_id,)).fetchone()
        return None if row is None else str(row[0])

    return await db.run(work)


async def set_agent_key(db: Database, agent_id: str, key: str) -> bool:
    """Store ``key`` as the agent's key; True when it changed."""

    def work(conn: Connection) -> bool:
        cur = conn.execute(
            "UPDATE agents SET api_key = %s, updated_at = now() WHERE agent_id = %s AND api_key <> %s",
            (key, agent_id, key),
        )
        return cur.rowcount > 0

    return await db.run(work)


async def add_key(
    db: Database, table: str, user_id: str, key: str, *, is_active: bool = True
) -> None:
    """Insert a plaintext key (what the other system does; used by tests and demos)."""

    def work(conn: Connection) -> None:
        conn.execute(
            sql.SQL("INSERT INTO {} (user_id, key, is_active) VALUES (%s, %s, %s)").format(
                _table(table)
            ),
            (user_id, key, is_active),
        )

    await db.run(work)
