-- 001_init, reversed: drops everything 001_init.up.sql created, dependents first.
-- Indexes, constraints and the bigserial sequences go with their tables; 001 created
-- no extension, type or function.
DROP TABLE ai_executions;
DROP TABLE messages;
DROP TABLE agents;
DROP TABLE api_keys;
DROP TABLE users;
