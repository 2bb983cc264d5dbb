-- 009_analytics: what the analytics endpoints read (docs/contract/api-v1.md §10), kept up
-- to date as rows are written, so a query reads O(hours in range), never O(messages).
--
-- analytics_hourly holds one row per agent and UTC hour (hour = date_trunc('hour', t, 'UTC')).
-- STATEMENT-level triggers with transition tables add each INSERT statement's rows on
-- messages (by created_at), ai_executions (by created_at) and webhook_attempts (by at),
-- grouped by agent and hour, with one upsert. A group mention is counted by a row trigger
-- when the forwarder first records an outcome (gatewayd/store/messages.py mark_handled_many)
-- that says the message was looked at and not ignored for lack of a mention
-- (gatewayd/nursery/forwarder.py ignore_reason). Deleting rows (retention,
-- gatewayd/nursery/retention.py) does not touch the rollups: they keep the history.
--
-- Hours are UTC: a time zone whose offset is not a whole number of hours gets its day
-- boundaries at the nearest hour (gatewayd/store/analytics.py).
--
-- agent_status_history records every status an agent takes (a row trigger on agents), so
-- uptime over any range is computed from transitions.

CREATE TABLE agent_status_history (
    id        bigserial   NOT NULL,
    agent_id  uuid        NOT NULL,
    status    text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_status_history_pkey PRIMARY KEY (id),
    CONSTRAINT agent_status_history_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE
);
CREATE INDEX agent_status_history_agent_at_idx ON agent_status_history (agent_id, at);

-- The current status of every agent, as of its last change (the best time known).
INSERT INTO agent_status_history (agent_id, status, at)
SELECT id, status, updated_at FROM agents;

CREATE FUNCTION analytics_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO agent_status_history (agent_id, status) VALUES (NEW.id, NEW.status);
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_status_history_insert AFTER INSERT ON agents
    FOR EACH ROW EXECUTE FUNCTION analytics_status_changed();
CREATE TRIGGER agents_status_history_update AFTER UPDATE OF status ON agents
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION analytics_status_changed();

CREATE TABLE analytics_hourly (
    agent_id          uuid        NOT NULL,
    hour              timestamptz NOT NULL,
    inbound           integer     NOT NULL DEFAULT 0,
    outbound          integer     NOT NULL DEFAULT 0,
    private_messages  integer     NOT NULL DEFAULT 0,
    group_messages    integer     NOT NULL DEFAULT 0,
    group_mentions    integer     NOT NULL DEFAULT 0,
    type_text         integer     NOT NULL DEFAULT 0,
    type_image        integer     NOT NULL DEFAULT 0,
    type_document     integer     NOT NULL DEFAULT 0,
    type_audio        integer     NOT NULL DEFAULT 0,
    type_video        integer     NOT NULL DEFAULT 0,
    -- stickers and anything else
    type_other        integer     NOT NULL DEFAULT 0,
    ai_ok             integer     NOT NULL DEFAULT 0,
    ai_failed         integer     NOT NULL DEFAULT 0,
    ai_ms_sum         bigint      NOT NULL DEFAULT 0,
    webhook_ok        integer     NOT NULL DEFAULT 0,
    webhook_failed    integer     NOT NULL DEFAULT 0,
    webhook_ms_sum    bigint      NOT NULL DEFAULT 0,
    -- The newest message or AI execution of the hour (webhook tries do not count).
    last_activity     timestamptz,
    CONSTRAINT analytics_hourly_pkey PRIMARY KEY (agent_id, hour),
    CONSTRAINT analytics_hourly_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES agents (id) ON DELETE CASCADE
);

-- Messages: counts by direction; chat kind and type of the received ones. Upserts go in key order so two
-- statements touching the same agents lock their rows in the same order.
CREATE FUNCTION analytics_messages_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_hourly AS h (agent_id, hour, inbound, outbound, private_messages,
        group_messages, type_text, type_image, type_document, type_audio, type_video,
        type_other, last_activity)
    SELECT agent_id, date_trunc('hour', created_at, 'UTC'),
        count(*) FILTER (WHERE direction = 'inbound'),
        count(*) FILTER (WHERE direction = 'outbound'),
        count(*) FILTER (WHERE direction = 'inbound' AND NOT is_group),
        count(*) FILTER (WHERE direction = 'inbound' AND is_group),
        count(*) FILTER (WHERE direction = 'inbound' AND type = 'text'),
        count(*) FILTER (WHERE direction = 'inbound' AND type = 'image'),
        count(*) FILTER (WHERE direction = 'inbound' AND type = 'document'),
        count(*) FILTER (WHERE direction = 'inbound' AND type = 'audio'),
        count(*) FILTER (WHERE direction = 'inbound' AND type = 'video'),
        count(*) FILTER (WHERE direction = 'inbound'
            AND type NOT IN ('text', 'image', 'document', 'audio', 'video')),
        max(created_at)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (agent_id, hour) DO UPDATE SET
        inbound = h.inbound + excluded.inbound,
        outbound = h.outbound + excluded.outbound,
        private_messages = h.private_messages + excluded.private_messages,
        group_messages = h.group_messages + excluded.group_messages,
        type_text = h.type_text + excluded.type_text,
        type_image = h.type_image + excluded.type_image,
        type_document = h.type_document + excluded.type_document,
        type_audio = h.type_audio + excluded.type_audio,
        type_video = h.type_video + excluded.type_video,
        type_other = h.type_other + excluded.type_other,
        last_activity = greatest(h.last_activity, excluded.last_activity);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_analytics_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_messages_inserted();

-- A group mention: the first outcome of an inbound group message that the mention check
-- let through. Outcomes that say the check never ran or failed are not mentions: ignored
-- before it (status broadcast, newsletter, own message, edit) or by it, quarantined,
-- expired unread.
CREATE FUNCTION analytics_mention_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_hourly AS h (agent_id, hour, group_mentions)
    VALUES (NEW.agent_id, date_trunc('hour', NEW.created_at, 'UTC'), 1)
    ON CONFLICT (agent_id, hour) DO UPDATE SET group_mentions = h.group_mentions + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_analytics_mention AFTER UPDATE OF outcome ON messages
    FOR EACH ROW WHEN (
        OLD.outcome IS NULL AND NEW.outcome IS NOT NULL
        AND NEW.direction = 'inbound' AND NEW.is_group
        AND NEW.outcome NOT IN ('ignored:group_without_mention', 'ignored:status_broadcast',
            'ignored:newsletter', 'ignored:from_me', 'ignored:edit', 'expired')
        AND NEW.outcome NOT LIKE 'quarantined:%'
    )
    EXECUTE FUNCTION analytics_mention_counted();

-- AI calls: success, or failed (timeout, error); the time they took.
CREATE FUNCTION analytics_executions_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_hourly AS h (agent_id, hour, ai_ok, ai_failed, ai_ms_sum,
        last_activity)
    SELECT agent_id, date_trunc('hour', created_at, 'UTC'),
        count(*) FILTER (WHERE status = 'success'),
        count(*) FILTER (WHERE status <> 'success'),
        coalesce(sum(duration_ms), 0),
        max(created_at)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (agent_id, hour) DO UPDATE SET
        ai_ok = h.ai_ok + excluded.ai_ok,
        ai_failed = h.ai_failed + excluded.ai_failed,
        ai_ms_sum = h.ai_ms_sum + excluded.ai_ms_sum,
        last_activity = greatest(h.last_activity, excluded.last_activity);
    RETURN NULL;
END
$$;

CREATE TRIGGER ai_executions_analytics_insert AFTER INSERT ON ai_executions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_executions_inserted();

-- Webhook tries: every try counts (a delivery that succeeded on its third try adds two
-- failures), as in gatewayd/store/webhooks.py daily_stats.
CREATE FUNCTION analytics_attempts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_hourly AS h (agent_id, hour, webhook_ok, webhook_failed,
        webhook_ms_sum)
    SELECT agent_id, date_trunc('hour', at, 'UTC'),
        count(*) FILTER (WHERE success),
        count(*) FILTER (WHERE NOT success),
        sum(duration_ms)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (agent_id, hour) DO UPDATE SET
        webhook_ok = h.webhook_ok + excluded.webhook_ok,
        webhook_failed = h.webhook_failed + excluded.webhook_failed,
        webhook_ms_sum = h.webhook_ms_sum + excluded.webhook_ms_sum;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_attempts_analytics_insert AFTER INSERT ON webhook_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_attempts_inserted();

-- The backfill: the rows written so far, counted as the triggers would have.
INSERT INTO analytics_hourly (agent_id, hour, inbound, outbound, private_messages,
    group_messages, group_mentions, type_text, type_image, type_document, type_audio,
    type_video, type_other, last_activity)
SELECT agent_id, date_trunc('hour', created_at, 'UTC'),
    count(*) FILTER (WHERE direction = 'inbound'),
    count(*) FILTER (WHERE direction = 'outbound'),
    count(*) FILTER (WHERE direction = 'inbound' AND NOT is_group),
    count(*) FILTER (WHERE direction = 'inbound' AND is_group),
    count(*) FILTER (WHERE direction = 'inbound' AND is_group AND outcome IS NOT NULL
        AND outcome NOT IN ('ignored:group_without_mention', 'ignored:status_broadcast',
            'ignored:newsletter', 'ignored:from_me', 'ignored:edit', 'expired')
        AND outcome NOT LIKE 'quarantined:%'),
    count(*) FILTER (WHERE direction = 'inbound' AND type = 'text'),
    count(*) FILTER (WHERE direction = 'inbound' AND type = 'image'),
    count(*) FILTER (WHERE direction = 'inbound' AND type = 'document'),
    count(*) FILTER (WHERE direction = 'inbound' AND type = 'audio'),
    count(*) FILTER (WHERE direction = 'inbound' AND type = 'video'),
    count(*) FILTER (WHERE direction = 'inbound'
            AND type NOT IN ('text', 'image', 'document', 'audio', 'video')),
    max(created_at)
FROM messages GROUP BY 1, 2;

INSERT INTO analytics_hourly AS h (agent_id, hour, ai_ok, ai_failed, ai_ms_sum, last_activity)
SELECT agent_id, date_trunc('hour', created_at, 'UTC'),
    count(*) FILTER (WHERE status = 'success'),
    count(*) FILTER (WHERE status <> 'success'),
    coalesce(sum(duration_ms), 0),
    max(created_at)
FROM ai_executions GROUP BY 1, 2
ON CONFLICT (agent_id, hour) DO UPDATE SET
    ai_ok = excluded.ai_ok, ai_failed = excluded.ai_failed, ai_ms_sum = excluded.ai_ms_sum,
    last_activity = greatest(h.last_activity, excluded.last_activity);

-- webhook_attempts.agent_id has no foreign key: tries of agents gone are left out.
INSERT INTO analytics_hourly (agent_id, hour, webhook_ok, webhook_failed, webhook_ms_sum)
SELECT agent_id, date_trunc('hour', at, 'UTC'),
    count(*) FILTER (WHERE success),
    count(*) FILTER (WHERE NOT success),
    sum(duration_ms)
FROM webhook_attempts WHERE agent_id IN (SELECT id FROM agents) GROUP BY 1, 2
ON CONFLICT (agent_id, hour) DO UPDATE SET
    webhook_ok = excluded.webhook_ok, webhook_failed = excluded.webhook_failed,
    webhook_ms_sum = excluded.webhook_ms_sum;

-- Retention deletes old messages in batches (gatewayd/store/analytics.py
-- delete_old_messages): a BRIN index finds them for almost no upkeep on insert.
CREATE INDEX messages_created_brin ON messages USING brin (created_at);
