DROP INDEX outbox_pending_seq;
ALTER TABLE outbox DROP COLUMN seq;
