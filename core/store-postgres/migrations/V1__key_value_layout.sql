-- usm's store as one transactional key-value table holding the layout the embedded store uses
-- (usm-store's `kv` module), so every backend runs the same code for every transaction.
-- Keys are compared as bytes (bytea), which is the order the layout's scans rely on.

-- The named trees of the layout, for people reading the database; `usm_kv.tree` holds the id.
CREATE TABLE usm_trees (
    id SMALLINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

INSERT INTO usm_trees (id, name) VALUES
    (0, 'records'),
    (1, 'history'),
    (2, 'approvals'),
    (3, 'index'),
    (4, 'backlinks'),
    (5, 'outbox'),
    (6, 'counters'),
    (7, 'idempotency'),
    (8, 'artifacts'),
    (9, 'settings'),
    (10, 'audit'),
    (11, 'timers'),
    (12, 'timer_owners'),
    (13, 'idempotency_expiry');

CREATE TABLE usm_kv (
    tree SMALLINT NOT NULL,
    key BYTEA NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (tree, key)
);
