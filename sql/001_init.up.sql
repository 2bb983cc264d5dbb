-- 001_init: identity (users, API keys, agents) and message history.
--
-- Runs in one transaction together with its row in gatewayd_schema_migrations.
-- No extensions: gen_random_uuid() is core since PostgreSQL 13.

-- A tenant. Ids are text: compatibility clients bring their own ("123", a UUID);
-- users registered by PIN get a UUID.
CREATE TABLE users (
    id          text        NOT NULL,
    -- Deterministic keyed hash of the 6-character PIN, so a login can look it up;
    -- NULL for users without a PIN (NULLs do not collide in a UNIQUE constraint).
    pin_hash    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_id_check CHECK (id <> ''),
    CONSTRAINT users_pin_hash_key UNIQUE (pin_hash)
);

-- API keys of users. In the deployed setup another system owns this table (its name
-- is configurable at run time), so there is no foreign key to users: its user ids
-- need not exist here. Keys from that system are plaintext (key); keys gatewayd
-- issues are stored hashed (key_hash) and compared in constant time.
CREATE TABLE api_keys (
    id          bigserial   NOT NULL,
    user_id     text        NOT NULL,
    key         text,
    key_hash    text,
    name        text,
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_key_present_check CHECK (key IS NOT NULL OR key_hash IS NOT NULL),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
-- "The user's latest active key": WHERE user_id = $1 AND is_active ORDER BY created_at DESC.
CREATE INDEX api_keys_user_active_created_idx
    ON api_keys (user_id, is_active, created_at DESC);
-- Bearer lookups of plaintext keys.
CREATE INDEX api_keys_key_idx ON api_keys (key) WHERE key IS NOT NULL;

-- One WhatsApp account (= session). id is the /api/v1 session_id; agent_id is the
-- agents-API path id. user_id is not a foreign key: compatibility clients create
-- agents for user ids that have no users row.
CREATE TABLE agents (
    id                    uuid        NOT NULL DEFAULT gen_random_uuid(),
    agent_id              text        NOT NULL,
    name                  text        NOT NULL,
    user_id               text        NOT NULL,
    api_key               text        NOT NULL,
    endpoint_url_run      text,
    webhook_url           text,
    webhook_secret        text,
    status                text        NOT NULL DEFAULT 'awaiting_qr',
    status_reason         text,
    last_connected_at     timestamptz,
    last_disconnected_at  timestamptz,
    phone_number          text,
    lid                   text,
    device_jid            text,
    device_info           jsonb,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agents_pkey PRIMARY KEY (id),
    CONSTRAINT agents_agent_id_key UNIQUE (agent_id),
    CONSTRAINT agents_user_id_name_key UNIQUE (user_id, name),
    CONSTRAINT agents_agent_id_check CHECK (agent_id <> ''),
    CONSTRAINT agents_status_check CHECK (
        status IN ('awaiting_qr', 'connected', 'disconnected', 'auth_failed', 'stopped')
    )
);

-- Every message received or sent. Inbound rows are written before anything else
-- happens to them; handled_at stays NULL until the forwarder is done, which is how
-- processing resumes after a restart.
CREATE TABLE messages (
    id             bigserial   NOT NULL,
    agent_id       uuid        NOT NULL,
    direction      text        NOT NULL,
    type           text        NOT NULL DEFAULT 'text',
    chat_jid       text        NOT NULL,
    chat_lid       text,
    sender_jid     text,
    sender_lid     text,
    is_group       boolean     NOT NULL DEFAULT false,
    push_name      text,
    text           text,
    quoted_id      text,
    media          jsonb,
    wa_message_id  text,
    status         text,
    trace_id       text,
    handled_at     timestamptz,
    outcome        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    received_at    timestamptz,
    CONSTRAINT messages_pkey PRIMARY KEY (id),
    CONSTRAINT messages_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE,
    CONSTRAINT messages_direction_check CHECK (direction IN ('inbound', 'outbound')),
    CONSTRAINT messages_type_check CHECK (
        type IN ('text', 'image', 'document', 'audio', 'video', 'sticker', 'other')
    ),
    -- A redelivered WhatsApp message is stored once. NULLs never collide, so this is
    -- "unique where wa_message_id IS NOT NULL"; being a plain constraint, both
    -- ON CONFLICT (agent_id, direction, wa_message_id) and the form with
    -- WHERE wa_message_id IS NOT NULL find it.
    CONSTRAINT messages_agent_direction_wa_message_id_key
        UNIQUE (agent_id, direction, wa_message_id)
);
CREATE INDEX messages_agent_created_idx ON messages (agent_id, created_at);
-- The resume-after-restart scan: inbound messages the forwarder has not finished.
CREATE INDEX messages_unhandled_inbound_idx ON messages (agent_id, created_at)
    WHERE direction = 'inbound' AND handled_at IS NULL;

-- One call to an agent's AI backend, for analytics and debugging.
CREATE TABLE ai_executions (
    id           bigserial   NOT NULL,
    agent_id     uuid        NOT NULL,
    message_id   bigint,
    request      jsonb,
    response     jsonb,
    duration_ms  integer,
    status       text        NOT NULL,
    error        text,
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_executions_pkey PRIMARY KEY (id),
    CONSTRAINT ai_executions_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE,
    CONSTRAINT ai_executions_message_id_fkey FOREIGN KEY (message_id)
        REFERENCES messages (id) ON DELETE SET NULL,
    CONSTRAINT ai_executions_status_check CHECK (status IN ('success', 'timeout', 'error')),
    CONSTRAINT ai_executions_duration_ms_check CHECK (duration_ms >= 0)
);
CREATE INDEX ai_executions_agent_created_idx ON ai_executions (agent_id, created_at);
-- Lets deleting a message find its executions without a full scan (ON DELETE SET NULL).
CREATE INDEX ai_executions_message_id_idx ON ai_executions (message_id)
    WHERE message_id IS NOT NULL;
