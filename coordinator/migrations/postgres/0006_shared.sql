-- What two coordinators on one database share (PostgreSQL), and one coordinator keeps
-- across restarts (SQLite).

-- Pushes by tree: `upstream` wakes the sites that sync from the tree's own stores,
-- `downstream` the sites below a relay; `waiting_since` is when a push started to wait
-- for the relays to hold the new version.
CREATE TABLE pushes (
    tree TEXT PRIMARY KEY,
    upstream BIGINT NOT NULL,
    downstream BIGINT NOT NULL,
    waiting_since BIGINT
);

-- One row: `serial` rises with every change an agent's long-poll waits for (a network
-- applied, a push, a release), so every coordinator on the database wakes its own
-- long-polls; `epoch` names the space the push counters count in (random, set once).
CREATE TABLE changes (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    serial BIGINT NOT NULL,
    epoch BIGINT NOT NULL
);
INSERT INTO changes (id, serial, epoch) VALUES (1, 0, 0);

-- The last probe of each site's served copy of each tree.
CREATE TABLE probes (
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    version BIGINT,
    root TEXT,
    at BIGINT NOT NULL,
    error TEXT,
    etag TEXT,
    PRIMARY KEY (site, tree)
);

-- When each site's client certificate expires (from its last connection).
ALTER TABLE enrolment ADD COLUMN not_after BIGINT;
