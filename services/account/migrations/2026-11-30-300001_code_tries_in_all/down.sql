ALTER TABLE users DROP COLUMN verify_code_wrong_total;
