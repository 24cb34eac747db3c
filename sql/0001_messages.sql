-- 0001: message ledger — messages, their SMSC parts, the event log and unmatched receipts.

CREATE TABLE messages (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    msisdn           text        NOT NULL CHECK (msisdn ~ '^[0-9]{6,15}$'),
    sender           text        NOT NULL,
    body             text        NOT NULL,
    template         text        NULL,
    encoding         text        NOT NULL CHECK (encoding IN ('gsm7', 'ucs2')),
    segments         integer     NOT NULL CHECK (segments > 0),
    class            text        NOT NULL CHECK (class IN ('care', 'advertising')),
    priority         smallint    NOT NULL DEFAULT 1,
    khong_dau        boolean     NOT NULL DEFAULT false,
    status           text        NOT NULL DEFAULT 'queued' CHECK (status IN (
                         'queued', 'submitting', 'submitted', 'delivered',
                         'undelivered', 'expired', 'rejected', 'failed')),
    smsc_message_id  text        NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    idempotency_key  text        NULL,
    api_key_id       integer     NULL,
    last_error       text        NULL,
    submitting_at    timestamptz NULL,
    submitted_at     timestamptz NULL,
    done_at          timestamptz NULL
);

-- One message per (API key, idempotency key); messages without an API key share key 0.
CREATE UNIQUE INDEX messages_idempotency_uq
    ON messages ((COALESCE(api_key_id, 0)), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The sweeper looks for rows stuck in a status for too long.
CREATE INDEX messages_status_updated_idx ON messages (status, updated_at);

CREATE TABLE message_parts (
    message_id       uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part_no          smallint    NOT NULL CHECK (part_no > 0),
    smsc_message_id  text        NOT NULL,
    status           text        NOT NULL DEFAULT 'submitted' CHECK (status IN (
                         'submitted', 'delivered', 'undelivered', 'expired')),
    receipt_stat     text        NULL,
    receipt_err      text        NULL,
    receipt_at       timestamptz NULL,
    PRIMARY KEY (message_id, part_no)
);

CREATE INDEX message_parts_smsc_id_idx ON message_parts (smsc_message_id);

CREATE TABLE message_events (
    id          bigserial   PRIMARY KEY,
    message_id  uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the message's status once the event happened (a receipt that changes nothing keeps it)
    status      text        NOT NULL CHECK (status IN (
                    'queued', 'submitting', 'submitted', 'delivered',
                    'undelivered', 'expired', 'rejected', 'failed')),
    detail      text        NOT NULL DEFAULT ''
);

CREATE INDEX message_events_message_idx ON message_events (message_id, id);

-- Receipts whose SMSC id matched no part yet (e.g. the receipt overtook the submit_sm_resp).
-- They are kept, never dropped; matched_at is set once they are applied.
CREATE TABLE pending_receipts (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    candidates   text[]      NOT NULL,
    state        text        NOT NULL CHECK (state IN ('delivered', 'undelivered', 'expired')),
    stat         text        NULL,
    err          text        NULL,
    raw          text        NULL,
    matched_at   timestamptz NULL
);

CREATE INDEX pending_receipts_candidates_idx ON pending_receipts USING gin (candidates);
