CREATE TABLE users (
    id               uuid PRIMARY KEY,
    email            text NOT NULL,
    -- lower-cased address: the uniqueness key, so Foo@x and foo@x are one account
    email_key        text NOT NULL UNIQUE,
    password_hash    text NOT NULL,
    locale           text NOT NULL,
    verified_at      timestamptz,
    -- bumped on each successful verification (and each re-sign-up): a used or superseded link dies
    verify_epoch     integer NOT NULL DEFAULT 0,
    verification_sent_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    routing_key   text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;

CREATE TABLE sessions (
    -- SHA-256 of the cookie's token; the token itself is never stored
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
