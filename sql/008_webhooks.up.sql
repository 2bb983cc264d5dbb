-- 008_webhooks: the webhook outbox (docs/contract/api-v1.md §12).
--
-- A delivery is written in the same transaction as the inbound message it describes
-- (gatewayd/store/messages.py insert_inbound_batch), so a message we own always has its
-- delivery. Workers claim due rows with FOR UPDATE SKIP LOCKED and a lease
-- (gatewayd/store/webhooks.py claim_due): a worker that dies mid-try leaves leased_until in
-- the past soon, and the row is taken up again. Statuses:
--   pending    due at next_attempt_at (never tried, or replayed)
--   failed     the last try failed; due again at next_attempt_at
--   delivered  a try got a 2xx
--   dead       still failing when its schedule (webhooks.max_age) ran out; replayable
ALTER TABLE agents ADD COLUMN webhook_events text[] NOT NULL DEFAULT ARRAY['message.received'];
-- Extra request headers (n8n's Header Auth, say): {"name": "value"}; never the signature's.
ALTER TABLE agents ADD COLUMN webhook_headers jsonb NOT NULL DEFAULT '{}'::jsonb;

CREATE TABLE webhook_deliveries (
    id                bigserial   NOT NULL,
    agent_id          uuid        NOT NULL,
    message_id        bigint,
    event             text        NOT NULL,
    -- json, not jsonb: the body keeps its key order (event, session_id, …) on every try.
    payload           json        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending',
    -- Tries begun in the current schedule (counted when claimed: a try that killed the
    -- process counts too); a replay starts a new schedule.
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    leased_until      timestamptz,
    lease_token       uuid,
    last_status_code  integer,
    last_error        text,
    -- Where the current schedule began (created, or replayed): max_age counts from here.
    schedule_start    timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_deliveries_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_message_id_fkey FOREIGN KEY (message_id)
        REFERENCES messages (id) ON DELETE SET NULL,
    CONSTRAINT webhook_deliveries_status_check CHECK (
        status IN ('pending', 'failed', 'delivered', 'dead')
    )
);
-- What workers scan: open rows by due time.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, id)
    WHERE status IN ('pending', 'failed');
-- A session's deliveries, newest first (GET …/webhook/deliveries).
CREATE INDEX webhook_deliveries_agent_idx ON webhook_deliveries (agent_id, id);
-- One delivery per message and event, whatever redelivers it.
CREATE UNIQUE INDEX webhook_deliveries_message_event_idx ON webhook_deliveries (message_id, event)
    WHERE message_id IS NOT NULL;

-- Every try: its answer (or why there was none) and how long it took; analytics read this.
CREATE TABLE webhook_attempts (
    id           bigserial   NOT NULL,
    delivery_id  bigint      NOT NULL,
    agent_id     uuid        NOT NULL,
    n            integer     NOT NULL,
    status_code  integer,
    duration_ms  integer     NOT NULL,
    error        text,
    success      boolean     NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_attempts_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_attempts_delivery_id_fkey FOREIGN KEY (delivery_id)
        REFERENCES webhook_deliveries (id) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);
CREATE INDEX webhook_attempts_agent_at_idx ON webhook_attempts (agent_id, at);
