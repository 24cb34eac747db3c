-- 0005: subscribers of the care programs.

CREATE TABLE subscribers (
    msisdn         text        PRIMARY KEY CHECK (msisdn ~ '^[0-9]{6,15}$'),  -- E.164 digits
    full_name      text        NOT NULL DEFAULT '',
    date_of_birth  date        NULL,
    tier           text        NOT NULL DEFAULT '',   -- Thân thiết, Bạc, Titan, Vàng, Kim cương
    points         integer     NOT NULL DEFAULT 0,
    segment        text        NOT NULL DEFAULT '',
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    khong_dau      boolean     NOT NULL DEFAULT false,  -- prefers SMS without diacritics
    attributes     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Birthday job: subscribers born on a given month and day.
CREATE INDEX subscribers_birthday_idx
    ON subscribers ((extract(month FROM date_of_birth)), (extract(day FROM date_of_birth)))
    WHERE date_of_birth IS NOT NULL;
CREATE INDEX subscribers_tier_idx ON subscribers (tier);
CREATE INDEX subscribers_segment_idx ON subscribers (segment);
