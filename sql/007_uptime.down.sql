-- 007_uptime, reverted: the uptime bookkeeping goes.
ALTER TABLE agents DROP COLUMN connected_run;
ALTER TABLE agents DROP COLUMN connected_seconds;
