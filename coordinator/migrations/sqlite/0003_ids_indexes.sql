-- A report delivered twice (its acknowledgement lost) is stored once.
ALTER TABLE reports ADD COLUMN report_id TEXT;
CREATE UNIQUE INDEX reports_id ON reports (site, report_id) WHERE report_id IS NOT NULL;
-- How fast a version reached the sites: by tree.
CREATE INDEX reports_tree ON reports (tree, to_version);
-- At most one open event per kind, site and tree.
CREATE UNIQUE INDEX events_one_open ON events (kind, site, tree) WHERE closed IS NULL;
