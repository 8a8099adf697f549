-- Runs older than the retention period, summed per site, tree and day (UTC).
CREATE TABLE rollups (
    site TEXT NOT NULL,
    tree TEXT NOT NULL,
    day INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    bytes_fetched INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (site, tree, day)
);
CREATE INDEX reports_received ON reports (received);
