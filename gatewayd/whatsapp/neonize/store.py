"""whatsmeow's device store: its schema in gatewayd's PostgreSQL, its role, its URL.

whatsmeow keeps its 17 ``whatsmeow_*`` tables in the database neonize is given as a URL. We
give it gatewayd's own PostgreSQL with ``search_path=<schema>`` in the URL (lib/pq passes it to
the server as a runtime parameter), so the tables live in their own schema (docs/neonize.md,
"The device store").

Every neonize connect attempt opens a ``database/sql`` pool that is never closed: one leaked
server connection per attempt. ``idle_session_timeout`` on the role neonize uses reaps them
(and live pools reconnect transparently, measured). With the embedded PostgreSQL we own the
cluster, so neonize gets a dedicated role ``<user>_whatsmeow`` with that setting; with an
external server we use the configured role and warn when the setting is missing.

The blocking functions here use psycopg directly; ``neonize_backend`` runs them in threads.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, unquote, urlencode, urlsplit

import attrs
import psycopg
import structlog
from psycopg import sql

from gatewayd.store.db import map_exceptions as map_store_exceptions

log = structlog.get_logger()

IDLE_SESSION_TIMEOUT = "5min"
"""How long a leaked whatsmeow connection may idle before the server closes it."""

# libpq-only connection options that lib/pq would forward to the server as (unknown) runtime
# parameters, making every connection fail.
_LIBPQ_ONLY = {
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "target_session_attrs", "gssencmode", "channel_binding", "tcp_user_timeout",
    "load_balance_hosts", "require_auth", "sslcompression", "sslsni", "passfile", "service",
    "hostaddr", "krbsrvname", "gsslib", "replication", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "sslcrl", "sslcrldir", "sslpassword", "requirepeer",
}  # fmt: skip
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@attrs.frozen(repr=False)
class WhatsmeowStore:
    """Where whatsmeow's tables are, and how each side connects to them."""

    admin_dsn: str  # psycopg: the DSN gatewayd was given
    url: str  # neonize (lib/pq): role, search_path, sslmode
    schema: str
    role: str

    def __repr__(self) -> str:  # never the passwords
        return f"WhatsmeowStore(schema={self.schema!r}, role={self.role!r})"


def _neonize_role_password(admin_password: str) -> str:
    """A stable password for the neonize role, derived from the cluster owner's.

    Stable, so that every process on the cluster (a restart, a test next door) sets the same
    one and the pools already open keep working after their connections are reaped.
    """
    return hmac.new(admin_password.encode(), b"gatewayd-whatsmeow-role", hashlib.sha256).hexdigest()


def neonize_url(params: dict[str, str], *, schema: str) -> str:
    """A ``postgres://`` URL lib/pq understands, with ``search_path`` set to ``schema``."""
    host = params.get("host", "localhost")
    if "," in host or host.startswith("/"):
        raise ValueError("neonize needs a single TCP host in database.url")
    user = quote(params.get("user", ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    netloc_host = f"[{host}]" if ":" in host else host
    port = params.get("port", "5432")
    query = {
        k: v
        for k, v in params.items()
        if k not in {"host", "port", "user", "password", "dbname"} and k not in _LIBPQ_ONLY
    }
    query["search_path"] = schema
    # lib/pq's default is sslmode=require; a loopback server (the embedded one) has no TLS.
    if "sslmode" not in query and host in _LOOPBACK:
        query["sslmode"] = "disable"
    if query.get("sslmode") in {"prefer", "allow"}:
        query["sslmode"] = "disable" if host in _LOOPBACK else "require"
    dbname = quote(params.get("dbname", ""), safe="")
    return f"postgres://{auth}{netloc_host}:{port}/{dbname}?{urlencode(query)}"


def redact_url_secrets(text: str, url: str) -> str:
    """``text`` (an error from Go) with the password of ``url`` replaced, raw or quoted."""
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password), quote(unquote(password), safe="")}:
            text = text.replace(form, "***")
    return text


def prepare_store(
    dsn: str, *, schema: str, embedded: bool, idle_session_timeout: str = IDLE_SESSION_TIMEOUT
) -> WhatsmeowStore:
    """Create the schema (and with ``embedded`` the role); return where neonize connects.

    Blocking. Runs before any neonize call; whatsmeow's own tables are created afterwards by
    ``NeonizeBackend`` (one sequential upgrade: parallel first connects race and fail).
    """
    with map_store_exceptions():
        params = {
            k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None
        }
        with psycopg.connect(dsn, autocommit=True) as conn:
            if not embedded:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                _check_idle_timeout(conn, params.get("user", ""))
                return WhatsmeowStore(
                    dsn, neonize_url(params, schema=schema), schema, params.get("user", "")
                )
            role = f"{params.get('user', 'gatewayd')}_whatsmeow"
            password = _neonize_role_password(params.get("password", ""))
            _ensure_role(
                conn, role, password, params.get("dbname", ""), schema, idle_session_timeout
            )
    return WhatsmeowStore(
        dsn, neonize_url(params | {"user": role, "password": password}, schema=schema), schema, role
    )


def _ensure_role(
    conn: psycopg.Connection, role: str, password: str, dbname: str, schema: str, idle: str
) -> None:
    """The dedicated neonize role: owns the schema, has the idle timeout."""
    ident = sql.Identifier(role)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if exists is None:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        except psycopg.errors.DuplicateObject:
            pass  # another process on the cluster created it just now
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
    conn.execute(
        sql.SQL("ALTER ROLE {} SET idle_session_timeout = {}").format(ident, sql.Literal(idle))
    )
    if dbname:
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), ident)
        )
    conn.execute(
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
            sql.Identifier(schema), ident
        )
    )
    conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), ident))


def _check_idle_timeout(conn: psycopg.Connection, user: str) -> None:
    """Warn when leaked whatsmeow connections would never be reaped on this server."""
    row = conn.execute(
        "SELECT setting FROM pg_settings WHERE name = 'idle_session_timeout'"
    ).fetchone()
    if row is None:
        log.warning(
            "gatewayd.whatsapp.store.idle_timeout_unsupported",
            hint="PostgreSQL < 14: every neonize connect attempt leaks a server connection "
            "until gatewayd restarts; keep max_connections well above the number of agents",
        )
    elif str(row[0]) == "0":
        log.warning(
            "gatewayd.whatsapp.store.idle_timeout_missing",
            role=user,
            hint=f"every neonize connect attempt leaks a server connection; run "
            f"ALTER ROLE \"{user}\" SET idle_session_timeout = '{IDLE_SESSION_TIMEOUT}' "
            "(or give neonize its own role with that setting)",
        )


def device_jids(admin_dsn: str, schema: str) -> frozenset[str]:
    """Device JIDs in whatsmeow's store (``user:device@server``). Blocking.

    Read from the table, not through neonize's ``get_all_devices_from_db``, whose parse of Go's
    answer breaks on names with commas (docs/neonize.md, "Reading the device list").
    """
    with map_store_exceptions(), psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not _has_device_table(conn, schema):
            return frozenset()
        rows = conn.execute(
            sql.SQL("SELECT jid FROM {}.whatsmeow_device").format(sql.Identifier(schema))
        ).fetchall()
    return frozenset(str(r[0]) for r in rows)


def delete_device(admin_dsn: str, schema: str, device_jid: str) -> bool:
    """Delete a device and (by whatsmeow's cascades) everything keyed by it. Blocking."""
    with map_store_exceptions(), psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not _has_device_table(conn, schema):
            return False
        cur = conn.execute(
            sql.SQL("DELETE FROM {}.whatsmeow_device WHERE jid = %s").format(
                sql.Identifier(schema)
            ),
            (device_jid,),
        )
        return cur.rowcount > 0


def _has_device_table(conn: psycopg.Connection, schema: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.whatsmeow_device', %s::text))", (schema,)
    ).fetchone()
    return row is not None and row[0] is not None
