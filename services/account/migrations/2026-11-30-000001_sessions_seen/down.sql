ALTER TABLE sessions DROP COLUMN user_agent, DROP COLUMN last_seen_at, DROP COLUMN id;
