ALTER TABLE users DROP COLUMN verify_binding;
