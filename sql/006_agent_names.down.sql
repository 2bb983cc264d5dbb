-- 006_agent_names, reverted: one name per agent of a user again. Agents that share a name
-- cannot be made unique without choosing which to rename, which is the operator's choice:
-- the revert stops (and its transaction rolls back, nothing changed) until they are renamed.
DO $$
DECLARE
    clashes integer;
BEGIN
    SELECT count(*) INTO clashes
    FROM (SELECT 1 FROM agents GROUP BY user_id, name HAVING count(*) > 1) AS shared;
    IF clashes > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'unique_violation',
            MESSAGE = format(
                'cannot revert 006_agent_names: %s (user_id, name) pairs are shared by'
                ' several agents', clashes),
            HINT = 'Rename those agents (SELECT user_id, name FROM agents GROUP BY 1, 2'
                ' HAVING count(*) > 1), then revert again.',
            TABLE = 'agents',
            CONSTRAINT = 'agents_user_id_name_key';
    END IF;
END
$$;
DROP INDEX agents_user_id_name_idx;
ALTER TABLE agents ADD CONSTRAINT agents_user_id_name_key UNIQUE (user_id, name);
