-- Bumped whenever the password changes (reset, change): a reset link sealed
-- for an older epoch is used or superseded.
ALTER TABLE users ADD COLUMN password_epoch integer NOT NULL DEFAULT 0;
CREATE INDEX users_unverified ON users (created_at) WHERE verified_at IS NULL;

-- Whose event a row is: an account's pending mail goes with the account.
ALTER TABLE outbox ADD COLUMN user_id uuid;
CREATE INDEX outbox_user_pending ON outbox (user_id) WHERE published_at IS NULL;
