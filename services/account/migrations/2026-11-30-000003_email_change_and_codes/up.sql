-- Bumped when the address changes: an older change link is used or superseded.
ALTER TABLE users ADD COLUMN email_epoch integer NOT NULL DEFAULT 0;
-- The six-digit code of the current verification mail, only as a keyed
-- hash (HMAC of user and code), and the wrong guesses made at it. Kept
-- after the verification, so a late second use says "used", not "wrong".
ALTER TABLE users ADD COLUMN verify_code_hash bytea;
ALTER TABLE users ADD COLUMN verify_code_attempts integer NOT NULL DEFAULT 0;
