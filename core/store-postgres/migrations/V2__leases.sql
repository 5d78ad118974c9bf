-- Leases of singleton work (outbox consumers) among the nodes sharing the database: one row per
-- lease, taken or renewed by one conditional upsert (no advisory locks), timed by the
-- database's clock so that the nodes' clocks do not matter.
CREATE TABLE usm_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
