-- Wrong codes in all, across every code the address was sent, until it is
-- verified. Each new mail brings a new code with five tries of its own;
-- without a total, whoever signs an address up again and again (or logs in
-- to the unverified account, which re-sends) renews the guesses for ever.
ALTER TABLE users ADD COLUMN verify_code_wrong_total integer NOT NULL DEFAULT 0;
