-- The network file the coordinator holds, and its revision (one row).
CREATE TABLE network (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    text TEXT NOT NULL,
    revision INTEGER NOT NULL
);

-- Every report an agent sent: one sync run of one tree at one site.
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    received INTEGER NOT NULL,
    started INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    root TEXT,
    head_store TEXT,
    bytes_fetched INTEGER NOT NULL,
    bytes_reused INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    rsync_files INTEGER NOT NULL,
    error TEXT,
    agent_version TEXT NOT NULL
);
CREATE INDEX reports_site_tree ON reports (site, tree, id);

-- Each version of each tree the coordinator verified itself, and when it first saw it.
CREATE TABLE heads (
    tree TEXT NOT NULL,
    version INTEGER NOT NULL,
    root TEXT NOT NULL,
    created INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (tree, version)
);
