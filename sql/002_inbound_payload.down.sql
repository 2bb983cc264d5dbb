ALTER TABLE messages DROP COLUMN mentioned_jids;
ALTER TABLE messages DROP COLUMN payload;
