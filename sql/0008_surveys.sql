-- 0008: customer-satisfaction surveys sent by SMS (gateway/surveys.py).
--
-- A survey is invited once per number: survey_recipients' primary key is what makes a resend
-- (or two concurrent sends) invite nobody twice, and each invitation's message is made with
-- idempotency key 'survey:<survey id>:<msisdn>' (no API key) so a resend after a crash between
-- the two reuses the same message. message_id is NULL between the claim and the message.
--
-- The reply window of an invitation is [sent_at, sent_at + reply_window_s]; an MO from the
-- number inside it is a reply to the most recently sent open survey (status not 'closed').
--
-- One reply row per recipient. A later reply replaces what it carries: a valid answer replaces
-- the earlier answer, free text replaces the earlier comment; a part it does not carry is kept
-- ("5" after "rat cham" keeps the comment). A reply older than the stored one (a message
-- flushed late by the MO sweeper) changes nothing.
--
-- No foreign key to messages: purging old messages must not lose survey results.

CREATE TABLE surveys (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    question        text        NOT NULL CHECK (length(question) BETWEEN 1 AND 1000),
    -- the valid answers as configured, e.g. {'1','2','3','4','5'}
    answers         text[]      NOT NULL CHECK (cardinality(answers) BETWEEN 1 AND 20),
    reply_window_s  integer     NOT NULL CHECK (reply_window_s > 0),
    template        text        NOT NULL DEFAULT 'survey_invite',
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text        NOT NULL DEFAULT 'draft'
                                CHECK (status IN ('draft', 'sent', 'closed'))
);

CREATE TABLE survey_recipients (
    survey_id   uuid        NOT NULL REFERENCES surveys (id) ON DELETE CASCADE,
    msisdn      text        NOT NULL CHECK (msisdn ~ '^[0-9]{6,15}$'),  -- E.164 digits
    message_id  uuid        NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (survey_id, msisdn)
);

-- The open invitation of a number: its most recent invitations first.
CREATE INDEX survey_recipients_msisdn_idx ON survey_recipients (msisdn, sent_at DESC);

CREATE TABLE survey_replies (
    survey_id    uuid        NOT NULL,
    msisdn       text        NOT NULL,
    answer       text        NULL,  -- one of the survey's answers, as configured
    comment      text        NULL,  -- free text (the whole reply when it is no answer)
    inbound_id   uuid        NULL,  -- inbound_messages.id of the latest reply
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (survey_id, msisdn),
    FOREIGN KEY (survey_id, msisdn) REFERENCES survey_recipients (survey_id, msisdn)
        ON DELETE CASCADE,
    CHECK (answer IS NOT NULL OR comment IS NOT NULL)
);
