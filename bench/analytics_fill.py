"""The data of ``bench/analytics.py``: tenants, and messages generated in SQL.

Everything here is plain SQL on one synchronous connection (run it in a worker thread).
The message mix is fixed so that every size has the same shape, only more of it:

* 1,000 agents of 100 users (10 each), spread evenly; every fifth agent has a webhook,
* messages over the last 90 days, 70 % of them between 08:00 and 20:00 UTC,
* 60 % inbound; 30 % in groups, a fifth of those mentioning the agent;
  types 78 % text, 9 % image, 4 % document, 5 % audio, 2 % video, 2 % sticker/other,
* inbound outcomes as the forwarder records them (``gatewayd/nursery/forwarder.py``):
  ``ignored:group_without_mention``, ``ignored:media``, else ``replied`` / ``no_reply`` /
  ``failed:TIMEOUT`` / ``failed:ERROR``; one ``ai_executions`` row per forwarded message
  (about half of the inbound),
* for agents with a webhook, one delivery per inbound message and its tries
  (``webhook_attempts``), 95 % delivered at the first try, 5 % dead after three.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

Conn = psycopg.Connection[tuple[Any, ...]]

AGENTS = 1000
USERS = 100
#: Rows per INSERT: the rollup triggers aggregate each statement's transition table, so one
#: statement's rows stay in memory (and on disk) until it ends.
CHUNK = 1_000_000

_AGENTS = """
INSERT INTO agents (agent_id, name, user_id, api_key, status, phone_number, webhook_url,
                    created_at, updated_at)
SELECT 'bench-' || lpad(i::text, 4, '0'), 'Agent ' || i, 'bench-user-' || lpad((i / 10)::text, 3, '0'),
       'k', CASE WHEN i %% 7 = 0 THEN 'disconnected' ELSE 'connected' END,
       '6281' || lpad(i::text, 8, '0'),
       CASE WHEN i %% 5 = 0 THEN 'http://127.0.0.1:9/hook' END,
       now() - interval '91 days', now() - interval '91 days'
FROM generate_series(0, %(agents)s - 1) AS i
"""

# Two transitions a week per agent, alternating, the first one 'connected' 91 days ago: what
# uptime is computed from (sql/009_analytics.up.sql keeps this table from its migration on).
_HISTORY = """
INSERT INTO agent_status_history (agent_id, status, at)
SELECT a.id, CASE WHEN k %% 2 = 0 THEN 'connected' ELSE 'disconnected' END,
       now() - interval '91 days' + k * interval '3.5 days' + random() * interval '3 hours'
FROM agents a, generate_series(0, 25) AS k
WHERE a.agent_id LIKE %(pattern)s
"""

_MESSAGES = """
INSERT INTO messages (agent_id, direction, type, chat_jid, sender_jid, is_group, push_name, text,
                      mentioned_jids, wa_message_id, status, handled_at, outcome, created_at,
                      sent_at, received_at)
SELECT a.id, m.direction, m.type, m.chat, CASE WHEN m.inbound THEN m.sender END, m.is_group,
       CASE WHEN m.inbound THEN 'Contact ' || m.contact END,
       CASE WHEN m.has_text THEN 'message ' || m.n || ': how much is the blue one?' END,
       CASE WHEN m.mentioned THEN ARRAY[a.phone_number || '@s.whatsapp.net'] END,
       '3EB0' || upper(to_hex(m.n)),
       CASE WHEN m.inbound THEN 'received' WHEN m.ro < 0.97 THEN 'sent' ELSE 'failed' END,
       CASE WHEN m.inbound AND NOT m.mentioned THEN m.at + interval '2 seconds' END,
       CASE
           WHEN NOT m.inbound OR m.mentioned THEN NULL  -- see _MENTIONS
           WHEN m.is_group AND NOT m.mentioned THEN 'ignored:group_without_mention'
           WHEN NOT m.has_text THEN 'ignored:media'
           WHEN m.ro < 0.80 THEN 'replied'
           WHEN m.ro < 0.90 THEN 'no_reply'
           WHEN m.ro < 0.96 THEN 'failed:TIMEOUT'
           ELSE 'failed:ERROR'
       END,
       m.at, CASE WHEN NOT m.inbound THEN m.at END, CASE WHEN m.inbound THEN m.at END
FROM (
    SELECT s.*,
           CASE WHEN s.inbound THEN 'inbound' ELSE 'outbound' END AS direction,
           CASE WHEN s.rt < 0.78 THEN 'text' WHEN s.rt < 0.87 THEN 'image'
                WHEN s.rt < 0.91 THEN 'document' WHEN s.rt < 0.96 THEN 'audio'
                WHEN s.rt < 0.98 THEN 'video' WHEN s.rt < 0.99 THEN 'sticker'
                ELSE 'other' END AS type,
           s.rt < 0.83 AS has_text,  -- text, and captioned images
           s.is_group AND s.rm < 0.2 AS mentioned,
           CASE WHEN s.is_group THEN '120363' || lpad((s.contact %% 300)::text, 12, '0') || '@g.us'
                ELSE '62812' || lpad(s.contact::text, 7, '0') || '@s.whatsapp.net' END AS chat,
           '62812' || lpad(s.contact::text, 7, '0') || '@s.whatsapp.net' AS sender,
           CASE WHEN s.base > now() THEN s.base - interval '1 day' ELSE s.base END AS at
    FROM (
        SELECT n, floor(random() * %(agents)s)::int AS agent_idx, random() < 0.6 AS inbound,
               random() AS rt, random() < 0.3 AS is_group, random() AS rm, random() AS ro,
               floor(random() * 5000)::int AS contact,
               date_trunc('day', now()) - floor(random() * 90) * interval '1 day'
                 + CASE WHEN random() < 0.7 THEN 8 + floor(random() * 12)
                        ELSE floor(random() * 24) END * interval '1 hour'
                 + random() * interval '1 hour' AS base
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
        OFFSET 0  -- keeps each random() evaluated once per row
    ) s
) m
JOIN agents a ON a.agent_id = 'bench-' || lpad(m.agent_idx::text, 4, '0')
"""

# Mentions are counted when the forwarder records the outcome of a group message that
# mentioned the agent (an UPDATE trigger of sql/009_analytics.up.sql), so these rows were
# inserted unhandled and get their outcome here, as in production.
_MENTIONS = """
UPDATE messages
SET handled_at = created_at + interval '2 seconds',
    outcome = CASE WHEN r < 0.80 THEN 'replied' WHEN r < 0.90 THEN 'no_reply'
                   WHEN r < 0.96 THEN 'failed:TIMEOUT' ELSE 'failed:ERROR' END
FROM (SELECT id AS mid, random() AS r FROM messages
      WHERE id > %(after)s AND direction = 'inbound' AND outcome IS NULL OFFSET 0) o
WHERE id = o.mid
"""

_EXECUTIONS = """
INSERT INTO ai_executions (agent_id, message_id, duration_ms, status, error, created_at)
SELECT agent_id, id,
       CASE WHEN outcome = 'failed:TIMEOUT' THEN 30000
            WHEN outcome = 'failed:ERROR' THEN floor(random() * 2000)::int
            ELSE 300 + floor(random() * random() * 6000)::int END,
       CASE WHEN outcome = 'failed:TIMEOUT' THEN 'timeout'
            WHEN outcome = 'failed:ERROR' THEN 'error' ELSE 'success' END,
       CASE WHEN outcome LIKE 'failed:%%' THEN 'bench' END,
       created_at + interval '1 second'
FROM messages
WHERE id > %(after)s AND direction = 'inbound'
  AND outcome IN ('replied', 'no_reply', 'failed:TIMEOUT', 'failed:ERROR')
"""

_DELIVERIES = """
INSERT INTO webhook_deliveries (agent_id, message_id, event, payload, status, attempts,
                                next_attempt_at, schedule_start, created_at, delivered_at)
SELECT agent_id, id, 'message.received', '{"event": "message.received"}'::json,
       CASE WHEN ok THEN 'delivered' ELSE 'dead' END, CASE WHEN ok THEN 1 ELSE 3 END,
       created_at, created_at, created_at,
       CASE WHEN ok THEN created_at + interval '1 second' END
FROM (
    SELECT m.agent_id, m.id, m.created_at, random() < 0.95 AS ok
    FROM messages m
    JOIN agents a ON a.id = m.agent_id AND a.webhook_url IS NOT NULL
    WHERE m.id > %(after)s AND m.direction = 'inbound'
    OFFSET 0  -- keeps random() evaluated once per row
) d
"""

_ATTEMPTS = """
INSERT INTO webhook_attempts (delivery_id, agent_id, n, status_code, duration_ms, error, success,
                              at)
SELECT d.id, d.agent_id, k, CASE WHEN d.status = 'delivered' THEN 200 ELSE 502 END,
       40 + floor(random() * random() * 800)::int,
       CASE WHEN d.status = 'dead' THEN 'HTTP 502' END, d.status = 'delivered',
       d.created_at + (k - 1) * interval '30 seconds'
FROM webhook_deliveries d, generate_series(1, d.attempts) AS k
WHERE d.id > %(after)s
"""


def _max_id(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def count(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def tenants(conn: Conn) -> None:
    """The users and their agents (and, once sql/009 exists, their status history)."""
    conn.execute(
        "INSERT INTO users (id) SELECT 'bench-user-' || lpad(u::text, 3, '0')"
        " FROM generate_series(0, %(users)s - 1) AS u",
        {"users": USERS},
    )
    conn.execute(_AGENTS, {"agents": AGENTS})
    row = conn.execute("SELECT to_regclass('agent_status_history') IS NOT NULL").fetchone()
    if row and row[0]:
        conn.execute(_HISTORY, {"pattern": "bench-%"})
    conn.commit()


def grow(conn: Conn, upto: int) -> tuple[int, float]:
    """Add messages (and their executions and webhook tries) until there are ``upto``, one
    transaction per chunk; the rows added and the seconds it took."""
    begin = time.perf_counter()
    have = count(conn, "messages")
    conn.rollback()
    added = 0
    while have < upto:
        last = min(upto, have + CHUNK)
        after = _max_id(conn, "messages")
        deliveries = _max_id(conn, "webhook_deliveries")
        conn.execute(_MESSAGES, {"first": have + 1, "last": last, "agents": AGENTS})
        conn.execute(_MENTIONS, {"after": after})
        conn.execute(_EXECUTIONS, {"after": after})
        conn.execute(_DELIVERIES, {"after": after})
        conn.execute(_ATTEMPTS, {"after": deliveries})
        conn.commit()
        added += last - have
        have = last
        print(f"  … {have:,} messages ({time.perf_counter() - begin:.0f} s)", flush=True)
    return added, time.perf_counter() - begin


def vacuum_analyze(conn: Conn) -> float:
    """VACUUM ANALYZE everything (autocommit: VACUUM cannot run in a transaction)."""
    begin = time.perf_counter()
    conn.rollback()
    conn.autocommit = True
    try:
        conn.execute("VACUUM ANALYZE")
    finally:
        conn.autocommit = False
    return time.perf_counter() - begin
