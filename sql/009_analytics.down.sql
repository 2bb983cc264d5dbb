-- 009_analytics, reverted: the rollups, the status history and their triggers go.
DROP INDEX messages_created_brin;
DROP TRIGGER webhook_attempts_analytics_insert ON webhook_attempts;
DROP TRIGGER ai_executions_analytics_insert ON ai_executions;
DROP TRIGGER messages_analytics_mention ON messages;
DROP TRIGGER messages_analytics_insert ON messages;
DROP TRIGGER agents_status_history_update ON agents;
DROP TRIGGER agents_status_history_insert ON agents;
DROP FUNCTION analytics_attempts_inserted();
DROP FUNCTION analytics_executions_inserted();
DROP FUNCTION analytics_mention_counted();
DROP FUNCTION analytics_messages_inserted();
DROP FUNCTION analytics_status_changed();
DROP TABLE analytics_hourly;
DROP TABLE agent_status_history;
