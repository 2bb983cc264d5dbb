-- 007_uptime: what the share of a session's life spent connected is computed from
-- (docs/contract/api-v1.md §7.2; gatewayd/store/owned.py uptime_percentage).
--
-- connected_seconds sums the connected stretches that have ended: a status transition that
-- leaves 'connected' adds now() - last_connected_at in the same UPDATE
-- (gatewayd/store/agents.py). The running stretch is added when the figure is read.
ALTER TABLE agents ADD COLUMN connected_seconds double precision NOT NULL DEFAULT 0;
-- Which run of the daemon wrote 'connected' (a token per open database pool). A daemon
-- killed while connected leaves the row 'connected' with an old last_connected_at; the next
-- run sees another token and does not count that stretch, so the time the daemon was down
-- is never counted as connected.
ALTER TABLE agents ADD COLUMN connected_run uuid;
