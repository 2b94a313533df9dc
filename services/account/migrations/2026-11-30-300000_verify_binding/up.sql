-- Pre-hijack defence: the hash of the binding cookie of the browser whose
-- sign-up set the pending password (NULL: no browser, e.g. a sign-up
-- without cookies). Only that browser verifies the address without
-- proving the password; anywhere else the link or the code also needs the
-- password, or a reset sets a new one.
ALTER TABLE users ADD COLUMN verify_binding bytea;
