-- 0006: billing and care events from the operator's systems (POST /v1/events), and the latest
-- bill of each subscriber that those events keep up to date (for the "KT CUOC" lookup).
--
-- event_id is unique across every source: a source system makes its ids unique (e.g. prefixes
-- them with its own name), and the same id posted again, by any API key, is the same event.
-- The message is created with idempotency key 'event:' || event_id under the API key that
-- first recorded the event; message_id is filled in once it exists (NULL meanwhile, or after a
-- crash between the two, until a repost or EventService.resume_unattached() completes it).

CREATE TABLE care_events (
    event_id     text        PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 128),
    type         text        NOT NULL,
    msisdn       text        NOT NULL CHECK (msisdn ~ '^[0-9]{6,15}$'),  -- E.164 digits
    data         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- no foreign key: deleting old messages must neither fail nor empty this column (an
    -- event whose message_id is NULL is one whose message is still to be made)
    message_id   uuid        NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    api_key_id   integer     NULL
);

-- resume_unattached() finds events still waiting for their message.
CREATE INDEX care_events_unattached_idx ON care_events (received_at) WHERE message_id IS NULL;
CREATE INDEX care_events_msisdn_idx ON care_events (msisdn, received_at);

-- Order of a bill's statuses within one billing period: an event only replaces the latest bill
-- when (period_key, rank of status, event received_at) is not older than the row's. A bill
-- once paid stays paid for its period, whatever reminder arrives late.
CREATE FUNCTION latest_bill_rank(status text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT CASE status WHEN 'issued' THEN 0 WHEN 'due' THEN 1 WHEN 'overdue' THEN 2
                             WHEN 'paid' THEN 3 END $$;

CREATE TABLE latest_bills (
    msisdn             text        PRIMARY KEY CHECK (msisdn ~ '^[0-9]{6,15}$'),
    period             text        NOT NULL,  -- as the source wrote it, e.g. '11/2026'
    period_key         integer     NOT NULL CHECK (period_key BETWEEN 100001 AND 999912),
    amount             bigint      NOT NULL,  -- đồng: the bill, the debt, or for 'paid' the payment
    due_date           date        NULL,
    status             text        NOT NULL CHECK (status IN ('issued', 'due', 'overdue', 'paid')),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    event_id           text        NOT NULL,  -- the event that last changed the row
    event_received_at  timestamptz NOT NULL   -- its care_events.received_at (tie-break order)
);
