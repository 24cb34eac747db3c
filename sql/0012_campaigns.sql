-- 0012: marketing campaigns (broadcasts) and the send-time rules for advertising.
--
-- A campaign's messages are created at upload in status 'held': stored, not yet to be sent.
-- Starting the campaign releases them (held → queued) in slices as the links can take them;
-- pausing puts the queued ones back to 'held'. 'held' is also where an advertising message
-- waits when a rule defers it (outside 07:00–22:00, or over the per-number cap): not_before
-- then says from when it may go. Nothing is dropped by a deferral.
--
-- messages.advertiser is whom the 24-hour cap (Decree 91/2020: at most 3 advertising SMS per
-- number per 24 h per advertiser) counts against; it defaults to the sender (brandname).

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN (
    'held', 'queued', 'submitting', 'submitted', 'delivered',
    'undelivered', 'expired', 'rejected', 'failed', 'cancelled'));

ALTER TABLE message_events DROP CONSTRAINT message_events_status_check;
ALTER TABLE message_events ADD CONSTRAINT message_events_status_check CHECK (status IN (
    'held', 'queued', 'submitting', 'submitted', 'delivered',
    'undelivered', 'expired', 'rejected', 'failed', 'cancelled'));

ALTER TABLE messages
    ADD COLUMN campaign_id   uuid        NULL,
    ADD COLUMN campaign_line integer     NULL,  -- the recipient's line in the uploaded file
    ADD COLUMN advertiser    text        NULL,
    ADD COLUMN not_before    timestamptz NULL;

-- A refusal withdraws the number's advertising still waiting (queued or held).
DROP INDEX messages_queued_advertising_idx;
CREATE INDEX messages_pending_advertising_idx ON messages (msisdn)
    WHERE status IN ('queued', 'held') AND class = 'advertising';

-- Progress counts and releases per campaign.
CREATE INDEX messages_campaign_idx ON messages (campaign_id, status)
    WHERE campaign_id IS NOT NULL;

-- Held messages outside campaigns (deferred by a rule) that become due.
CREATE INDEX messages_held_due_idx ON messages (not_before)
    WHERE status = 'held' AND campaign_id IS NULL;

-- The 24-hour cap: advertising sent (or being sent) to a number, by when it was claimed.
CREATE INDEX messages_advertising_sent_idx ON messages (msisdn, submitting_at)
    WHERE class = 'advertising' AND submitting_at IS NOT NULL;

CREATE TABLE campaigns (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text        NOT NULL,
    class         text        NOT NULL CHECK (class IN ('care', 'advertising')),
    sender        text        NOT NULL,
    advertiser    text        NOT NULL,
    template      text        NULL,      -- a templates_sms/ name, or NULL for inline text
    source        text        NOT NULL,  -- the Jinja2 source the messages were rendered from
    status        text        NOT NULL DEFAULT 'draft' CHECK (status IN (
                      'draft', 'approved', 'scheduled', 'running', 'paused',
                      'completed', 'cancelled')),
    file_name     text        NOT NULL DEFAULT '',
    created_by    integer     NULL,  -- API key ids (maker and checker)
    approved_by   integer     NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    approved_at   timestamptz NULL,
    schedule_at   timestamptz NULL,
    started_at    timestamptz NULL,
    paused_at     timestamptz NULL,
    finished_at   timestamptz NULL,
    upload        jsonb       NOT NULL DEFAULT '{}',  -- counts of the validation report
    estimate      jsonb       NOT NULL DEFAULT '{}',  -- segments and encodings at upload
    samples       jsonb       NOT NULL DEFAULT '[]'   -- a few rendered messages
);

CREATE INDEX campaigns_status_idx ON campaigns (status);

-- Every row of the upload that did not become a message: rejected, duplicate or suppressed.
CREATE TABLE campaign_rejects (
    campaign_id  uuid    NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    line         integer NOT NULL,
    value        text    NOT NULL,
    kind         text    NOT NULL CHECK (kind IN ('rejected', 'duplicate', 'suppressed')),
    reason       text    NOT NULL
);

CREATE INDEX campaign_rejects_idx ON campaign_rejects (campaign_id, kind, line);

-- Who did what to a campaign, and when (approval, start, pause ...).
CREATE TABLE campaign_log (
    id           bigserial   PRIMARY KEY,
    campaign_id  uuid        NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    action       text        NOT NULL,
    api_key_id   integer     NULL,
    detail       text        NOT NULL DEFAULT ''
);

CREATE INDEX campaign_log_idx ON campaign_log (campaign_id, id);

-- Do-Not-Call imports may note the file a number came from; the consent ledger records the
-- change with source 'dnc'.
