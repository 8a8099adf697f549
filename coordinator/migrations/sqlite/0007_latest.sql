-- Each (site, tree)'s last report and last successful run (and since when it reports
-- holding that version and root), kept as reports arrive: the
-- status, the metrics and the events read this, never the whole history (1,000 sites
-- with 10 trees each, reporting every minute, add 14.4 million reports a day).
CREATE TABLE latest (
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    last_report INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    head_store TEXT,
    bytes_fetched INTEGER NOT NULL,
    success_id INTEGER,
    held_version INTEGER,
    held_root TEXT,
    last_success INTEGER,
    held_since INTEGER,
    max_held INTEGER,
    PRIMARY KEY (site, tree)
);
INSERT INTO latest (site, tree, last_id, last_report, outcome, error, head_store, bytes_fetched)
    SELECT r.site, r.tree, r.id, r.received, r.outcome, r.error, r.head_store, r.bytes_fetched
    FROM reports r JOIN (SELECT MAX(id) AS id FROM reports GROUP BY site, tree) m ON r.id = m.id;
UPDATE latest SET (success_id, held_version, held_root, last_success, held_since, max_held) = (
    SELECT r.id, r.to_version, r.root, r.received, r.received, r.to_version FROM reports r
    WHERE r.site = latest.site AND r.tree = latest.tree
    AND r.outcome IN ('completed', 'up_to_date') AND r.to_version IS NOT NULL
    ORDER BY r.id DESC LIMIT 1);

-- When each site first held each version of each tree: how fast a version reached the
-- sites, without reading the runs that only found it up to date.
CREATE TABLE reached (
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    version INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (tree, version, site)
);
INSERT INTO reached (site, tree, version, at)
    SELECT site, tree, to_version, MIN(received) FROM reports
    WHERE outcome IN ('completed', 'up_to_date') AND to_version IS NOT NULL
    GROUP BY site, tree, to_version;

-- A site's page: its last runs over every tree.
CREATE INDEX reports_site ON reports (site, id);
