-- The whole port message of an inbound row (mentions, quote, flags, media metadata),
-- so a message persisted before a crash can be handed to the forwarder again exactly
-- as it arrived.
ALTER TABLE messages ADD COLUMN payload jsonb;
ALTER TABLE messages ADD COLUMN mentioned_jids text[];
