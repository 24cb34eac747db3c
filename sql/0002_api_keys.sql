-- 0002: API keys for the HTTP intake. Only the sha256 of a key is stored.

CREATE TABLE api_keys (
    id          serial      PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    prefix      text        NOT NULL,
    key_hash    text        NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz NULL
);
