-- 006_agent_names: two agents of one user may share a name (agentName is a label, as in the
-- deployed service; agent_id and id identify an agent).
ALTER TABLE agents DROP CONSTRAINT agents_user_id_name_key;
-- What the constraint's index served: a user's agents, listed by name.
CREATE INDEX agents_user_id_name_idx ON agents (user_id, name);
