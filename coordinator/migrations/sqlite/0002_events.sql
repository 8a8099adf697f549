-- Events: a condition on one site and tree (behind, silent, failing, a certificate about
-- to expire) from when it was first seen until it cleared.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    opened INTEGER NOT NULL,
    closed INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX events_open ON events (closed, kind, site, tree);
