-- 0009: advertising consent (TC / DK QC by SMS, imports, API), the Do-Not-Call list, and the
-- 'cancelled' message status (queued advertising withdrawn after a refusal).
--
-- consent_ledger is the audit of every consent change request (Law 91/2025/QH15 on personal
-- data: consent to marketing can be withdrawn and its changes are kept). It is append-only: a
-- trigger refuses UPDATE and DELETE. Every request is recorded, also one that changes nothing
-- (a second TC); `changed` says whether it moved the state.
--
-- consent_state is the current state per number, written in the same transaction as the
-- ledger row that set it (gateway/store/consent.py). A request older than the state
-- (`at` < changed_at: an MO flushed late) is recorded but does not move the state. A number
-- without a row has never refused (nor opted in) by any channel we know of.
--
-- dnc_numbers is the national Do-Not-Call list (registered by DK DNC to 5656), as imported.
-- `channels`: 'all' (DK DNC), 'sms' (DK DNC S) or 'voice' (DK DNC V, calls only: SMS allowed).
-- Being on the list suppresses advertising SMS whatever the consent state: an opt-in (DK QC)
-- does not override it.

-- 'cancelled': a queued message withdrawn before any submit_sm (terminal).
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN (
    'queued', 'submitting', 'submitted', 'delivered',
    'undelivered', 'expired', 'rejected', 'failed', 'cancelled'));

ALTER TABLE message_events DROP CONSTRAINT message_events_status_check;
ALTER TABLE message_events ADD CONSTRAINT message_events_status_check CHECK (status IN (
    'queued', 'submitting', 'submitted', 'delivered',
    'undelivered', 'expired', 'rejected', 'failed', 'cancelled'));

-- A refusal cancels the queued advertising of one number (MessageStore.
-- cancel_pending_advertising): this small partial index finds them without a table scan.
CREATE INDEX messages_queued_advertising_idx ON messages (msisdn)
    WHERE status = 'queued' AND class = 'advertising';

CREATE TABLE consent_ledger (
    id            bigserial   PRIMARY KEY,
    msisdn        text        NOT NULL CHECK (msisdn ~ '^[0-9]{6,15}$'),  -- E.164 digits
    action        text        NOT NULL CHECK (action IN ('refuse', 'optin')),
    scope         text        NOT NULL DEFAULT 'advertising',
    source        text        NOT NULL CHECK (source IN ('sms', 'import', 'api', 'dnc')),
    source_ref    text        NULL,  -- e.g. the inbound MO id, an import file, an API key
    at            timestamptz NOT NULL DEFAULT now(),  -- when the subscriber asked
    effective_at  timestamptz NOT NULL,  -- from when it applies (a refusal: at once)
    changed       boolean     NOT NULL,  -- whether it moved consent_state
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX consent_ledger_msisdn_idx ON consent_ledger (msisdn, at);

CREATE FUNCTION consent_ledger_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'consent_ledger is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER consent_ledger_append_only
    BEFORE UPDATE OR DELETE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION consent_ledger_append_only();

CREATE TABLE consent_state (
    msisdn      text        PRIMARY KEY CHECK (msisdn ~ '^[0-9]{6,15}$'),
    refused     boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,  -- `at` of the ledger row that set it
    ledger_id   bigint      NOT NULL REFERENCES consent_ledger (id)
);

CREATE TABLE dnc_numbers (
    msisdn    text        PRIMARY KEY CHECK (msisdn ~ '^[0-9]{6,15}$'),
    channels  text        NOT NULL DEFAULT 'all' CHECK (channels IN ('all', 'sms', 'voice')),
    source    text        NOT NULL,  -- e.g. the name of the imported list
    added_at  timestamptz NOT NULL DEFAULT now()
);
