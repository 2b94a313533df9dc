-- Sessions a person can see and end: an id to name one by, when it was
-- last used (the idle timeout) and from what browser.
ALTER TABLE sessions
    ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN user_agent text;
