-- Rate limits shared by every account instance: one row per limited key
-- (SHA-256 of `<action>:<scope>:<value>`), holding the key's GCRA state.
-- `tat` is the theoretical arrival time: a request is allowed while
-- max(tat, now) + step <= now + span (span = burst * step); rows whose tat
-- is past are fully replenished and purged by the housekeeping loop.
-- UNLOGGED: no WAL per request; after a crash or a failover the table is
-- empty, which only forgives what was counted.
CREATE UNLOGGED TABLE rate_limits (
    key      bytea PRIMARY KEY,
    tat      timestamptz NOT NULL,
    step     interval NOT NULL,
    span     interval NOT NULL,
    -- the decision of the last request on this key, returned by the upsert
    allowed  boolean NOT NULL
);
