-- 008_webhooks, reverted: the outbox and its history go, with the webhook settings added.
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
ALTER TABLE agents DROP COLUMN webhook_headers;
ALTER TABLE agents DROP COLUMN webhook_events;
