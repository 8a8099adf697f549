//! The coordinator's database: SQLite in WAL mode (one file; migrations in
//! `coordinator/migrations/`). Every write is one statement or one transaction, so a
//! coordinator killed mid-write loses nothing it acknowledged.

use std::path::Path;

use pulpdist_network::{Outcome, Report};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::CoordError;

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
}

/// A verified head the coordinator recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSeen {
    /// The tree.
    pub tree: String,
    /// Its version.
    pub version: u64,
    /// Its root node id (hex).
    pub root: String,
    /// When it was made (its `created`).
    pub created: i64,
    /// When the coordinator first saw it.
    pub seen: i64,
}

/// The last reports of one site for one tree, summed up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latest {
    /// The version held and its root, from the last run that ended well.
    pub held: Option<(u64, String)>,
    /// When that run was received.
    pub last_success: Option<i64>,
    /// The last run's outcome.
    pub last_outcome: Option<String>,
    /// The error of the last run, if it failed.
    pub last_error: Option<String>,
    /// When the last report was received.
    pub last_report: Option<i64>,
    /// The store that served the head in the last run.
    pub head_store: Option<String>,
    /// Bytes fetched by the last run.
    pub bytes_fetched: u64,
}

fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::UpToDate => "up_to_date",
        Outcome::Completed => "completed",
        Outcome::Refused => "refused",
        Outcome::Busy => "busy",
        Outcome::Failed => "failed",
    }
}

impl Db {
    /// Opens (creating) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Db, CoordError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| CoordError::db(path.display().to_string(), e))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| CoordError::Db {
                what: format!("{}: migrating", path.display()),
                detail: e.to_string(),
            })?;
        Ok(Db { pool })
    }

    /// The network file held and its revision (none yet: `None`).
    pub async fn network(&self) -> Result<Option<(String, u64)>, CoordError> {
        let row = sqlx::query("SELECT text, revision FROM network WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading the network", e))?;
        Ok(row.map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64)))
    }

    /// Stores a network file as `revision`.
    pub async fn set_network(&self, text: &str, revision: u64) -> Result<(), CoordError> {
        sqlx::query(
            "INSERT INTO network (id, text, revision) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET text = ?1, revision = ?2",
        )
        .bind(text)
        .bind(revision as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("storing the network", e))?;
        Ok(())
    }

    /// Stores a site's reports (one transaction: all or none), received at `now`.
    pub async fn add_reports(
        &self,
        site: &str,
        reports: &[Report],
        now: i64,
    ) -> Result<(), CoordError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| CoordError::db("storing reports", e))?;
        for r in reports {
            sqlx::query(
                "INSERT OR IGNORE INTO reports (site, tree, received, started, outcome, from_version, to_version, root, \
                 head_store, bytes_fetched, bytes_reused, requests, duration_ms, rsync_files, error, agent_version, report_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )
            .bind(site)
            .bind(&r.tree)
            .bind(now)
            .bind(r.started)
            .bind(outcome_text(r.outcome))
            .bind(r.from_version.map(|v| v as i64))
            .bind(r.to_version.map(|v| v as i64))
            .bind(&r.root)
            .bind(&r.head_store)
            .bind(r.bytes_fetched as i64)
            .bind(r.bytes_reused as i64)
            .bind(r.requests as i64)
            .bind(r.duration_ms as i64)
            .bind(r.rsync_files as i64)
            .bind(&r.error)
            .bind(&r.agent_version)
            .bind((!r.id.is_empty()).then_some(&r.id))
            .execute(&mut *tx)
            .await
            .map_err(|e| CoordError::db("storing reports", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| CoordError::db("storing reports", e))?;
        Ok(())
    }

    /// The last reports of `site` for `tree`, summed up.
    pub async fn latest(&self, site: &str, tree: &str) -> Result<Latest, CoordError> {
        let err = |e| CoordError::db("reading reports", e);
        let mut out = Latest::default();
        let last = sqlx::query(
            "SELECT outcome, error, received, head_store, bytes_fetched FROM reports \
             WHERE site = ?1 AND tree = ?2 ORDER BY id DESC LIMIT 1",
        )
        .bind(site)
        .bind(tree)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        if let Some(r) = last {
            out.last_outcome = Some(r.get(0));
            out.last_error = r.get(1);
            out.last_report = Some(r.get(2));
            out.head_store = r.get(3);
            out.bytes_fetched = r.get::<i64, _>(4) as u64;
        }
        let ok = sqlx::query(
            "SELECT to_version, root, received FROM reports WHERE site = ?1 AND tree = ?2 \
             AND outcome IN ('completed', 'up_to_date') AND to_version IS NOT NULL \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(site)
        .bind(tree)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        if let Some(r) = ok {
            let v: i64 = r.get(0);
            let root: Option<String> = r.get(1);
            out.held = Some((v as u64, root.unwrap_or_default()));
            out.last_success = Some(r.get(2));
        }
        Ok(out)
    }

    /// Records a verified head; `true` if it was new.
    pub async fn add_head(&self, h: &HeadSeen) -> Result<bool, CoordError> {
        let done = sqlx::query(
            "INSERT INTO heads (tree, version, root, created, seen) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (tree, version) DO NOTHING",
        )
        .bind(&h.tree)
        .bind(h.version as i64)
        .bind(&h.root)
        .bind(h.created)
        .bind(h.seen)
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("storing a head", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// The verified heads of `tree`, newest first.
    pub async fn heads(&self, tree: &str) -> Result<Vec<HeadSeen>, CoordError> {
        let rows = sqlx::query(
            "SELECT version, root, created, seen FROM heads WHERE tree = ?1 ORDER BY version DESC",
        )
        .bind(tree)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading heads", e))?;
        Ok(rows
            .into_iter()
            .map(|r| HeadSeen {
                tree: tree.to_string(),
                version: r.get::<i64, _>(0) as u64,
                root: r.get(1),
                created: r.get(2),
                seen: r.get(3),
            })
            .collect())
    }
}

/// An event: a condition on one site (and tree) from when it was seen until it cleared.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Its id.
    pub id: i64,
    /// `behind`, `silent`, `failing`, `certificate`.
    pub kind: String,
    /// The site.
    pub site: String,
    /// The tree (empty for a site-wide event).
    pub tree: String,
    /// When it was raised.
    pub opened: i64,
    /// When it cleared (`None`: still open).
    pub closed: Option<i64>,
    /// What was seen.
    pub detail: String,
}

impl Db {
    /// The events still open.
    pub async fn open_events(&self) -> Result<Vec<Event>, CoordError> {
        self.events_where("closed IS NULL", 100_000).await
    }

    /// The most recent events, open or closed, newest first.
    pub async fn recent_events(&self, limit: i64) -> Result<Vec<Event>, CoordError> {
        self.events_where("1 = 1", limit).await
    }

    async fn events_where(&self, clause: &str, limit: i64) -> Result<Vec<Event>, CoordError> {
        let rows = sqlx::query(&format!(
            "SELECT id, kind, site, tree, opened, closed, detail FROM events WHERE {clause} \
             ORDER BY id DESC LIMIT ?1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading events", e))?;
        Ok(rows
            .into_iter()
            .map(|r| Event {
                id: r.get(0),
                kind: r.get(1),
                site: r.get(2),
                tree: r.get(3),
                opened: r.get(4),
                closed: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }

    /// Opens an event; its id.
    pub async fn open_event(
        &self,
        kind: &str,
        site: &str,
        tree: &str,
        detail: &str,
        now: i64,
    ) -> Result<i64, CoordError> {
        let done = sqlx::query(
            "INSERT INTO events (kind, site, tree, opened, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(kind)
        .bind(site)
        .bind(tree)
        .bind(now)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("storing an event", e))?;
        Ok(done.last_insert_rowid())
    }

    /// Closes an event.
    pub async fn close_event(&self, id: i64, now: i64) -> Result<(), CoordError> {
        sqlx::query("UPDATE events SET closed = ?1 WHERE id = ?2 AND closed IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| CoordError::db("closing an event", e))?;
        Ok(())
    }

    /// The outcomes of the last `n` runs of `site` for `tree`, newest first.
    pub async fn last_outcomes(
        &self,
        site: &str,
        tree: &str,
        n: i64,
    ) -> Result<Vec<String>, CoordError> {
        let rows = sqlx::query(
            "SELECT outcome FROM reports WHERE site = ?1 AND tree = ?2 ORDER BY id DESC LIMIT ?3",
        )
        .bind(site)
        .bind(tree)
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The last `n` reports of `site` (every tree), newest first, for its page.
    pub async fn site_history(&self, site: &str, n: i64) -> Result<Vec<ReportRow>, CoordError> {
        let rows = sqlx::query(
            "SELECT tree, received, outcome, to_version, bytes_fetched, duration_ms, error FROM reports \
             WHERE site = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(site)
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(rows
            .into_iter()
            .map(|r| ReportRow {
                tree: r.get(0),
                received: r.get(1),
                outcome: r.get(2),
                version: r.get::<Option<i64>, _>(3).map(|v| v as u64),
                bytes_fetched: r.get::<i64, _>(4) as u64,
                duration_ms: r.get::<i64, _>(5) as u64,
                error: r.get(6),
            })
            .collect())
    }

    /// When each site first reported holding `version` (or later) of `tree`: how fast the
    /// version reached the sites.
    pub async fn reached(
        &self,
        tree: &str,
        version: u64,
    ) -> Result<Vec<(String, i64)>, CoordError> {
        let rows = sqlx::query(
            "SELECT site, MIN(received) FROM reports WHERE tree = ?1 AND to_version >= ?2 \
             AND outcome IN ('completed', 'up_to_date') GROUP BY site ORDER BY site",
        )
        .bind(tree)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// One run, as a site's page shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    /// The tree.
    pub tree: String,
    /// When it was received.
    pub received: i64,
    /// How it ended.
    pub outcome: String,
    /// The version held after it.
    pub version: Option<u64>,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// One day of one site's runs of one tree, summed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rollup {
    /// The tree.
    pub tree: String,
    /// The day: Unix seconds of its start (UTC).
    pub day: i64,
    /// Runs.
    pub runs: u64,
    /// Runs that failed or were refused.
    pub failures: u64,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Wall time, summed.
    pub duration_ms: u64,
}

impl Db {
    /// Sums the reports received before `cutoff` into daily rollups and removes them, in
    /// one transaction; each (site, tree)'s last report and last successful one are kept
    /// (the status is computed from them). Returns the reports rolled up.
    pub async fn roll_up(&self, cutoff: i64) -> Result<u64, CoordError> {
        let err = |e| CoordError::db("rolling up reports", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let keep = "id NOT IN (SELECT MAX(id) FROM reports GROUP BY site, tree) \
                    AND id NOT IN (SELECT MAX(id) FROM reports WHERE outcome IN ('completed', 'up_to_date') \
                    AND to_version IS NOT NULL GROUP BY site, tree)";
        sqlx::query(&format!(
            "INSERT INTO rollups (site, tree, day, runs, failures, bytes_fetched, duration_ms) \
             SELECT site, tree, (received / 86400) * 86400, COUNT(*), \
             SUM(outcome IN ('failed', 'refused')), SUM(bytes_fetched), SUM(duration_ms) \
             FROM reports WHERE received < ?1 AND {keep} GROUP BY site, tree, received / 86400 \
             ON CONFLICT (site, tree, day) DO UPDATE SET runs = runs + excluded.runs, \
             failures = failures + excluded.failures, bytes_fetched = bytes_fetched + excluded.bytes_fetched, \
             duration_ms = duration_ms + excluded.duration_ms"
        ))
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let gone = sqlx::query(&format!(
            "DELETE FROM reports WHERE received < ?1 AND {keep}"
        ))
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(gone.rows_affected())
    }

    /// A site's daily rollups, newest first.
    pub async fn rollups(&self, site: &str, limit: i64) -> Result<Vec<Rollup>, CoordError> {
        let rows = sqlx::query(
            "SELECT tree, day, runs, failures, bytes_fetched, duration_ms FROM rollups \
             WHERE site = ?1 ORDER BY day DESC, tree LIMIT ?2",
        )
        .bind(site)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading rollups", e))?;
        Ok(rows
            .into_iter()
            .map(|r| Rollup {
                tree: r.get(0),
                day: r.get(1),
                runs: r.get::<i64, _>(2) as u64,
                failures: r.get::<i64, _>(3) as u64,
                bytes_fetched: r.get::<i64, _>(4) as u64,
                duration_ms: r.get::<i64, _>(5) as u64,
            })
            .collect())
    }
}

impl Db {
    /// The key `site` is enrolled with, enrolling `spki` if it has none: whether `spki`
    /// is the enrolled key.
    pub async fn enrol(&self, site: &str, spki: &str, now: i64) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("enrolling a site", e);
        // A read on every request; a write only the first time.
        let known = sqlx::query("SELECT spki FROM enrolment WHERE site = ?1")
            .bind(site)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        if let Some(row) = known {
            return Ok(row.get::<String, _>(0) == spki);
        }
        let row = sqlx::query(
            "INSERT INTO enrolment (site, spki, enrolled) VALUES (?1, ?2, ?3) \
             ON CONFLICT (site) DO UPDATE SET site = site RETURNING spki",
        )
        .bind(site)
        .bind(spki)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(row.get::<String, _>(0) == spki)
    }

    /// Forgets a site's enrolled key (its next certificate is enrolled); whether it had one.
    pub async fn unenrol(&self, site: &str) -> Result<bool, CoordError> {
        let done = sqlx::query("DELETE FROM enrolment WHERE site = ?1")
            .bind(site)
            .execute(&self.pool)
            .await
            .map_err(|e| CoordError::db("unenrolling a site", e))?;
        Ok(done.rows_affected() == 1)
    }
}

impl Db {
    /// [`Db::latest`] of every (site, tree) that reported, in two queries.
    pub async fn latest_all(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), Latest>, CoordError> {
        let err = |e| CoordError::db("reading reports", e);
        let mut out: std::collections::HashMap<(String, String), Latest> = Default::default();
        let last = sqlx::query(
            "SELECT r.site, r.tree, r.outcome, r.error, r.received, r.head_store, r.bytes_fetched \
             FROM reports r JOIN (SELECT MAX(id) AS id FROM reports GROUP BY site, tree) m ON r.id = m.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        for r in last {
            let e = out.entry((r.get(0), r.get(1))).or_default();
            e.last_outcome = Some(r.get(2));
            e.last_error = r.get(3);
            e.last_report = Some(r.get(4));
            e.head_store = r.get(5);
            e.bytes_fetched = r.get::<i64, _>(6) as u64;
        }
        let ok = sqlx::query(
            "SELECT r.site, r.tree, r.to_version, r.root, r.received FROM reports r JOIN \
             (SELECT MAX(id) AS id FROM reports WHERE outcome IN ('completed', 'up_to_date') \
             AND to_version IS NOT NULL GROUP BY site, tree) m ON r.id = m.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        for r in ok {
            let e = out.entry((r.get(0), r.get(1))).or_default();
            let root: Option<String> = r.get(3);
            e.held = Some((r.get::<i64, _>(2) as u64, root.unwrap_or_default()));
            e.last_success = Some(r.get(4));
        }
        Ok(out)
    }

    /// Every tree's verified heads, newest first.
    pub async fn heads_all(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<HeadSeen>>, CoordError> {
        let rows = sqlx::query(
            "SELECT tree, version, root, created, seen FROM heads ORDER BY tree, version DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading heads", e))?;
        let mut out: std::collections::HashMap<String, Vec<HeadSeen>> = Default::default();
        for r in rows {
            let tree: String = r.get(0);
            out.entry(tree.clone()).or_default().push(HeadSeen {
                tree,
                version: r.get::<i64, _>(1) as u64,
                root: r.get(2),
                created: r.get(3),
                seen: r.get(4),
            });
        }
        Ok(out)
    }
}
