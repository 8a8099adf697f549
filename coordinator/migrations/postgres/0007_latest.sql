-- Each (site, tree)'s last report and last successful run (and since when it reports
-- holding that version and root), kept as reports arrive: the
-- status, the metrics and the events read this, never the whole history (1,000 sites
-- with 10 trees each, reporting every minute, add 14.4 million reports a day).
CREATE TABLE latest (
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    last_id BIGINT NOT NULL,
    last_report BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    head_store TEXT,
    bytes_fetched BIGINT NOT NULL,
    success_id BIGINT,
    held_version BIGINT,
    held_root TEXT,
    last_success BIGINT,
    held_since BIGINT,
    max_held BIGINT,
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
    version BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (tree, version, site)
);
INSERT INTO reached (site, tree, version, at)
    SELECT site, tree, to_version, MIN(received) FROM reports
    WHERE outcome IN ('completed', 'up_to_date') AND to_version IS NOT NULL
    GROUP BY site, tree, to_version;

-- A site's page: its last runs over every tree.
CREATE INDEX reports_site ON reports (site, id);
