-- 003_durability: what makes the inbound path and every send survive a crash.
--
-- Inbound rows move received -> answered (the AI's reply is queued) and are
-- handled (handled_at set) once their reply went out or definitively failed;
-- attempts counts how often the forwarder took one up, so a message that keeps
-- killing the process is quarantined instead of retried forever.
--
-- Outbound rows are written before they go out:
--   queued   a reply (or a developer report) waiting for the agent to be connected;
--            safe to send after a restart
--   pending  an API send accepted by a caller who is waiting for it; not resumed
--            after a restart (the caller retries with its Idempotency-Key)
--   sending  handed to WhatsApp; a crash here leaves it "unknown", never resent
--   sent / failed / unknown / expired   final
ALTER TABLE messages ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reply_to bigint;
ALTER TABLE messages ADD COLUMN idempotency_key text;
ALTER TABLE messages ADD COLUMN result jsonb;
ALTER TABLE messages ADD COLUMN error text;
ALTER TABLE messages ADD CONSTRAINT messages_reply_to_fkey FOREIGN KEY (reply_to)
    REFERENCES messages (id) ON DELETE SET NULL;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (
    status IN ('received', 'answered', 'quarantined',
               'queued', 'pending', 'sending', 'sent', 'failed', 'unknown', 'expired')
);
-- One send per client-chosen key and agent (a retry answers the first result).
CREATE UNIQUE INDEX messages_agent_idempotency_key_idx ON messages (agent_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The outbound queue an agent drains once connected, and what a restart reconciles.
CREATE INDEX messages_outbound_open_idx ON messages (agent_id, id)
    WHERE direction = 'outbound' AND status IN ('queued', 'pending', 'sending');
CREATE INDEX messages_reply_to_idx ON messages (reply_to) WHERE reply_to IS NOT NULL;
