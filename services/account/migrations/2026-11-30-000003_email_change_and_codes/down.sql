ALTER TABLE users DROP COLUMN verify_code_attempts, DROP COLUMN verify_code_hash,
    DROP COLUMN email_epoch;
