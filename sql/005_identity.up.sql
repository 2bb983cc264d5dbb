-- 005_identity: what /api/v1 identity needs beyond 001 (users with a PIN, keys that
-- gatewayd issues, logins that can be ended).
--
-- PINs stay in users.pin_hash (a keyed hash, see gatewayd/usecases/tokens.py); issued
-- keys stay in api_keys with key_hash set and key NULL, next to the plaintext keys of
-- the deployed setup's other system, which gatewayd only reads.

-- When the user last logged in with their PIN (seed 003's last_login).
ALTER TABLE users ADD COLUMN last_login_at timestamptz;

-- The recognisable start of an issued key ("gwd_" and 8 characters), shown in listings
-- so a user can tell keys apart without the secret; NULL for the other system's keys.
ALTER TABLE api_keys ADD COLUMN prefix text;
-- Last successful authentication with the key; written at most about once a minute.
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- Login tokens ended by a logout before their expiry. A token is a JWT checked without
-- the database, so its id (jti) is refused while listed here; rows past expires_at
-- refuse nothing (the token has expired anyway) and are purged.
CREATE TABLE revoked_tokens (
    jti         text        NOT NULL,
    user_id     text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT revoked_tokens_pkey PRIMARY KEY (jti),
    CONSTRAINT revoked_tokens_jti_check CHECK (jti <> '')
);
-- The purge: DELETE ... WHERE expires_at < now().
CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);
