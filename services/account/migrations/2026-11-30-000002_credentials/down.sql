DROP INDEX outbox_user_pending;
ALTER TABLE outbox DROP COLUMN user_id;
DROP INDEX users_unverified;
ALTER TABLE users DROP COLUMN password_epoch;
