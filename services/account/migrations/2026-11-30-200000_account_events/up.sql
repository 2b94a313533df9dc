-- Account events share the outbox with mail. `seq` orders one user's
-- account events: the relay publishes one only after every earlier one of
-- the same user is confirmed.
ALTER TABLE outbox ADD COLUMN seq bigserial NOT NULL;
CREATE INDEX outbox_pending_seq ON outbox (seq) WHERE published_at IS NULL;
