-- 0013: retention of personal data (gateway/store/retention.py, `smsgw retention purge`).
--
-- After retention.body_days the text of a message is blanked, never the row: messages.body
-- becomes '' (the column is NOT NULL) once the message is in a terminal status, and
-- body_purged_at says when. Counts by status, class and day, receipts, events and the
-- idempotency keys all stay. Inbound MOs the same way: inbound_messages.text becomes '' with
-- text_purged_at set, and the payloads of its parts (inbound_parts.payload) become empty
-- bytes; the parts' dedupe_key stays, so a very late redelivery is still recognised. An MO
-- is purged whether or not the keyword router finished with it (nothing acts on an MO that
-- old); open parts (message_id NULL, still waiting for their group) are left alone.
--
-- The partial indexes hold only rows not purged yet, so each purge batch starts at the
-- oldest of them and purged rows drop out. On a large existing database, add the columns
-- and build the indexes by hand first (the same statements, the indexes with CREATE INDEX
-- CONCURRENTLY): this file then finds them and skips them, instead of blocking writes to the
-- tables while the indexes build inside the migration's transaction.

ALTER TABLE messages ADD COLUMN IF NOT EXISTS body_purged_at timestamptz NULL;

ALTER TABLE inbound_messages ADD COLUMN IF NOT EXISTS text_purged_at timestamptz NULL;

CREATE INDEX IF NOT EXISTS messages_unpurged_created_idx ON messages (created_at)
    WHERE body_purged_at IS NULL;

CREATE INDEX IF NOT EXISTS inbound_messages_unpurged_created_idx
    ON inbound_messages (created_at)
    WHERE text_purged_at IS NULL;
