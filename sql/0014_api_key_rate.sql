-- 0014: a request rate limit per API key (token bucket: requests per second and a burst).
-- NULL = the gateway's default ([http] key_rate_per_s / key_burst); rate 0 = no limit.
-- `< 'Infinity'` also refuses NaN (Postgres sorts NaN above every number).

ALTER TABLE api_keys
    ADD COLUMN rate_per_s double precision NULL
        CHECK (rate_per_s IS NULL OR (rate_per_s >= 0 AND rate_per_s < 'Infinity')),
    ADD COLUMN burst integer NULL CHECK (burst IS NULL OR burst >= 1);
