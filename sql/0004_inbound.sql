-- 0004: inbound (mobile-originated) messages: every deliver_sm part as received, and the
-- messages assembled from them.
--
-- A part is stored once (dedupe_key, see gateway/mo.py) and kept after its message is made:
-- message_id links it to that message, and keeping the row is what lets a late redelivery of
-- an already-assembled part be recognised as a duplicate. Parts with message_id NULL are the
-- "open" groups still waiting for their other parts (or for the sweeper to flush them).

CREATE TABLE inbound_messages (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    link            text        NOT NULL,
    source          text        NOT NULL,
    destination     text        NOT NULL,
    text            text        NOT NULL,
    data_coding     smallint    NOT NULL,
    parts_expected  smallint    NOT NULL CHECK (parts_expected BETWEEN 1 AND 255),
    parts_received  smallint    NOT NULL CHECK (parts_received BETWEEN 1 AND parts_expected),
    -- false: flushed by the sweeper with parts missing (their text is simply absent)
    complete        boolean     NOT NULL,
    received_at     timestamptz NOT NULL,  -- when the first part arrived
    completed_at    timestamptz NULL,      -- when the last part arrived (complete only)
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- for the keyword router
    handled_at      timestamptz NULL,
    keyword         text        NULL
);

-- The keyword router reads what it has not handled yet, oldest first.
CREATE INDEX inbound_messages_unhandled_idx ON inbound_messages (created_at, id)
    WHERE handled_at IS NULL;

CREATE TABLE inbound_parts (
    id           bigserial   PRIMARY KEY,
    link         text        NOT NULL,
    source       text        NOT NULL,
    destination  text        NOT NULL,
    ref          integer     NULL CHECK (ref BETWEEN 0 AND 65535),
    total        smallint    NOT NULL CHECK (total BETWEEN 1 AND 255),
    seq          smallint    NOT NULL CHECK (seq BETWEEN 1 AND total),
    data_coding  smallint    NOT NULL,
    payload      bytea       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    dedupe_key   text        NOT NULL UNIQUE,
    message_id   uuid        NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    CHECK (total = 1 OR ref IS NOT NULL)
);

-- The open parts of one concatenation group (link, source, destination, ref, total).
CREATE INDEX inbound_parts_open_group_idx
    ON inbound_parts (link, source, destination, ref, total)
    WHERE message_id IS NULL;

-- The sweeper finds incomplete groups by the age of their parts.
CREATE INDEX inbound_parts_open_age_idx ON inbound_parts (received_at)
    WHERE message_id IS NULL;

CREATE INDEX inbound_parts_message_idx ON inbound_parts (message_id);
