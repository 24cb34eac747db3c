-- 0007: the greetings ledger (birthday wishes and holiday greetings, gateway/greetings.py).
--
-- One row per (kind, period, subscriber) ever greeted: kind 'birthday' with period = the
-- year ('2026'), or 'holiday:<name>' with period = the ISO date ('2026-02-17'). The primary
-- key is what guarantees one greeting per subscriber per period across reruns, catch-up runs
-- and several workers: a runner claims subscribers with INSERT ... ON CONFLICT DO NOTHING and
-- only creates messages for the rows it inserted.
--
-- message_id is NULL between the claim and the creation of the message. A row left NULL (the
-- process died in between) is retried by a later run with the same idempotency key, so the
-- message is still created at most once. error is set instead when the message could not be
-- made at all (invalid number, template data): such rows are not retried.
--
-- No foreign keys: the ledger outlives deleted subscribers and purged messages (a purged
-- message must not make the subscriber look un-greeted).

CREATE TABLE greetings_sent (
    kind        text        NOT NULL,
    period      text        NOT NULL,
    msisdn      text        NOT NULL,
    message_id  uuid        NULL,
    error       text        NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, period, msisdn)
);

-- Retry of claims that never got their message.
CREATE INDEX greetings_sent_pending_idx ON greetings_sent (kind, period, created_at)
    WHERE message_id IS NULL AND error IS NULL;
