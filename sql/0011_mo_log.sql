-- 0011: the keyword router's log (gateway/keywords.py): one row per inbound message it took,
-- what it matched, what the action did and whether (and with which message) it replied.
--
-- The row is made before anything else happens (MoLogStore.claim) and is the claim on the
-- message: inbound_id is unique, so a message handed to the router twice (a redelivery, the
-- hook and a sweeper, two processes) is acted on once. A row whose handling never finished
-- (handled_at NULL: the process died, Postgres failed) may be taken over once its claim is
-- older than the router's claim timeout.
--
-- The reply rate limit is counted from these rows, so every gateway process shares it: a
-- reply is reserved (replied = true) under a transaction-scoped advisory lock on the number
-- before the message is made, and released when it could not be made. reply_kind 'help' marks
-- the help sent for an unrecognised message (at most one per number per hour).
--
-- msisdn is E.164 digits for mobile numbers, or the source as received for alphanumeric
-- senders and short codes (which are logged, never answered). No foreign key to
-- inbound_messages: purging old inbound messages must not lose this log.

CREATE TABLE mo_log (
    id                bigserial   PRIMARY KEY,
    inbound_id        uuid        NOT NULL UNIQUE,  -- inbound_messages.id
    msisdn            text        NOT NULL,
    received_at       timestamptz NOT NULL,         -- when the MO's first part arrived
    keyword           text        NULL,             -- canonical keyword matched, or 'SURVEY'
    action            text        NULL,             -- e.g. 'refuse_ads', 'unknown', 'survey'
    detail            text        NOT NULL DEFAULT '',
    reply_kind        text        NULL CHECK (reply_kind IN ('action', 'help', 'error')),
    replied           boolean     NOT NULL DEFAULT false,
    reply_message_id  uuid        NULL,             -- messages.id of the reply
    reason            text        NULL,             -- why there was no reply, or what failed
    at                timestamptz NOT NULL DEFAULT now(),  -- when the router took the MO
    handled_at        timestamptz NULL,             -- when it finished with it
    CHECK (replied OR reply_message_id IS NULL)
);

-- Rate limit: the replies to one number in the last window.
CREATE INDEX mo_log_replies_idx ON mo_log (msisdn, at) WHERE replied;

-- The last help sent to a number for an unrecognised message.
CREATE INDEX mo_log_help_idx ON mo_log (msisdn, at) WHERE replied AND reply_kind = 'help';

-- A number's history (MoLogStore.entries_for), newest first.
CREATE INDEX mo_log_msisdn_idx ON mo_log (msisdn, id);
