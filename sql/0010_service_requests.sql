-- 0010: subscriber self-service requests by SMS (issue 6): TAM NGUNG, MO LAI, DOI SIM,
-- CHUYEN TRA SAU, CHUYEN TRA TRUOC, DOI DIA CHI (gateway/actions/selfservice.py).
--
-- A request is created by one inbound MO. A destructive one (suspend, SIM swap, change of
-- payment type) waits for the subscriber's "Y" until confirm_by (received_at + 10 minutes):
-- 'awaiting_confirmation' → 'confirmed', or → 'expired' when the window passed (or a newer
-- destructive request of the same number replaced it). A non-destructive one is 'confirmed'
-- at once. A confirmed request is posted to the back-office webhook by an arq job
-- (jobs/webhooks.py): → 'posted', or → 'failed' after the configured number of attempts.
-- With no webhook configured, confirmed requests stay 'confirmed'.
--
-- reference is what the subscriber and the care team quote: "YC" + 8 characters from an
-- alphabet without look-alikes (no 0/O, 1/I/L, 2/Z, 5/S, 8/B).
--
-- requested_at is when the subscriber asked (the MO's received_at), created_at when the row
-- was written. No foreign key to inbound_messages: purging old MOs must not lose requests.
-- inbound_id is unique: the same MO handled twice makes one request.

CREATE TABLE service_requests (
    id            bigserial   PRIMARY KEY,
    reference     text        NOT NULL UNIQUE
                              CHECK (reference ~ '^YC[34679ACDEFGHJKMNPQRTUVWXY]{8}$'),
    type          text        NOT NULL CHECK (type IN (
                                  'suspend', 'reconnect', 'sim_swap', 'to_postpaid',
                                  'to_prepaid', 'change_address')),
    msisdn        text        NOT NULL CHECK (msisdn ~ '^[0-9]{6,15}$'),  -- E.164 digits
    args          jsonb       NOT NULL DEFAULT '{}'::jsonb
                              CHECK (jsonb_typeof(args) = 'object'),
    status        text        NOT NULL CHECK (status IN (
                                  'awaiting_confirmation', 'confirmed', 'expired', 'posted',
                                  'failed')),
    inbound_id    uuid        NULL,
    confirm_by    timestamptz NULL,
    requested_at  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    confirmed_at  timestamptz NULL,
    posted_at     timestamptz NULL,
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    text        NULL,
    CHECK (status <> 'awaiting_confirmation' OR confirm_by IS NOT NULL),
    CHECK (status NOT IN ('confirmed', 'posted', 'failed') OR confirmed_at IS NOT NULL),
    CHECK (status <> 'posted' OR posted_at IS NOT NULL)
);

CREATE UNIQUE INDEX service_requests_inbound_idx ON service_requests (inbound_id)
    WHERE inbound_id IS NOT NULL;

-- "Y": the newest request of a number still awaiting its confirmation.
CREATE INDEX service_requests_awaiting_idx ON service_requests (msisdn, requested_at DESC)
    WHERE status = 'awaiting_confirmation';

-- The sweeper: awaiting requests past their window, confirmed ones not posted yet.
CREATE INDEX service_requests_confirm_by_idx ON service_requests (confirm_by)
    WHERE status = 'awaiting_confirmation';
CREATE INDEX service_requests_unposted_idx ON service_requests (confirmed_at)
    WHERE status = 'confirmed';

CREATE INDEX service_requests_msisdn_idx ON service_requests (msisdn, requested_at);
