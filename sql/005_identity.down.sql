-- 005_identity, reversed: the denylist goes with its index; the added columns are dropped.
DROP TABLE revoked_tokens;
ALTER TABLE api_keys DROP COLUMN last_used_at;
ALTER TABLE api_keys DROP COLUMN prefix;
ALTER TABLE users DROP COLUMN last_login_at;
