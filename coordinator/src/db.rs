//! The coordinator's database: SQLite in WAL mode (one file, the embedded default) or
//! PostgreSQL (`postgres://…`, for two coordinators sharing one database), with the same
//! tables (migrations in `coordinator/migrations/sqlite` and `…/postgres`). Every
//! statement is written once, in the SQL both accept, through sqlx's `Any` driver. Every
//! write is one statement or one transaction, so a coordinator killed mid-write loses
//! nothing it acknowledged.
//!
//! On PostgreSQL the coordinators' singleton duties (the head watcher, the probes, the
//! events and their webhook, the rollups) go to the one holding an advisory lock
//! ([`Db::lead`]); the lock is a session's, so a coordinator that dies releases it with
//! its connection.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection, Row};

use pulpdist_network::{Outcome, Report};

use crate::CoordError;

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// What it is, for messages: a file's path, or the PostgreSQL URL without its password.
    name: String,
    /// PostgreSQL (several coordinators may share it) rather than SQLite.
    shared: bool,
    /// On SQLite, the lock beside the file that keeps a second coordinator off it, held
    /// as long as the database is open.
    _one_coordinator: Option<std::sync::Arc<std::fs::File>>,
}

/// The advisory lock key that makes a coordinator the one doing the singleton duties
/// ("pulpdist" in ASCII).
const LEAD_KEY: i64 = 0x7075_6c70_6469_7374;

/// How long the connection holding the lock has to answer a ping.
const LEAD_PING: std::time::Duration = std::time::Duration::from_secs(5);

/// A coordinator's hold on the singleton duties: on PostgreSQL, the connection whose
/// session holds the advisory lock.
#[derive(Debug, Default)]
pub struct Lead {
    conn: Option<sqlx::AnyConnection>,
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
    /// Bytes of the packs it added to the store (from its signed list of recent packs).
    pub added_bytes: Option<u64>,
    /// Bytes of its delta from the version before, if its head lists one.
    pub delta_bytes: Option<u64>,
}

/// The last reports of one site for one tree, summed up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latest {
    /// The version held and its root, from the last run that ended well.
    pub held: Option<(u64, String)>,
    /// When that run was received.
    pub last_success: Option<i64>,
    /// When the first report of holding that version and root was received (a probe
    /// before it says nothing about what the site holds now).
    pub held_since: Option<i64>,
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
        Outcome::Partial => "partial",
        Outcome::Failed => "failed",
    }
}

impl Db {
    /// Opens the database and brings its schema up to date: a `postgres://` (or
    /// `postgresql://`) URL, the database created if missing and the role may; anything
    /// else is a SQLite file, created if missing.
    pub async fn open(target: &str) -> Result<Db, CoordError> {
        sqlx::any::install_default_drivers();
        let shared = target.starts_with("postgres://") || target.starts_with("postgresql://");
        let name = match shared {
            true => without_password(target),
            false => target.to_string(),
        };
        let fail = |what: &str, e: String| CoordError::Db {
            what: format!("{name}: {what}"),
            detail: e,
        };
        // A SQLite file is for one coordinator: a second would do the singleton duties
        // (probes, head checks, webhook deliveries) twice and contend for the write lock.
        let one_coordinator = match shared {
            true => None,
            false => Some(std::sync::Arc::new(
                lock_beside(target).map_err(|e| fail("locking", e))?,
            )),
        };
        let url = match shared {
            true => target.to_string(),
            false => format!("sqlite://{}?mode=rwc", encode_path(target)),
        };
        let opts: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| fail("not a database URL", e.to_string()))?;
        if shared {
            use sqlx::migrate::MigrateDatabase;
            if !Any::database_exists(&url).await.unwrap_or(true) {
                if let Err(e) = Any::create_database(&url).await {
                    // Another coordinator starting at the same time may have made it.
                    if !Any::database_exists(&url).await.unwrap_or(false) {
                        return Err(fail("creating the database", e.to_string()));
                    }
                }
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if shared { 8 } else { 4 })
            .acquire_timeout(std::time::Duration::from_secs(15))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !shared {
                        // Each connection: wait for a writer up to 10 s; every commit on disk.
                        for pragma in [
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA journal_mode = WAL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| fail("connecting", e.to_string()))?;
        let migrator = match shared {
            true => sqlx::migrate!("./migrations/postgres"),
            false => sqlx::migrate!("./migrations/sqlite"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| fail("migrating", e.to_string()))?;
        let db = Db {
            pool,
            name,
            shared,
            _one_coordinator: one_coordinator,
        };
        // The push counters' space, named once for this database.
        sqlx::query("UPDATE changes SET epoch = $1 WHERE id = 1 AND epoch = 0")
            .bind((crate::random_u64() >> 2) as i64 | 1)
            .execute(&db.pool)
            .await
            .map_err(|e| CoordError::db("naming the push counters", e))?;
        Ok(db)
    }

    /// What the database is, for messages (a PostgreSQL URL without its password).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is PostgreSQL, which several coordinators may share.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Takes or keeps the singleton duties: on SQLite always (one coordinator per file);
    /// on PostgreSQL, whether this coordinator holds the advisory lock, taking it if it is
    /// free. A held lock whose connection broke is given up (the server released it).
    pub async fn lead(&self, lead: &mut Lead) -> bool {
        if !self.shared {
            return true;
        }
        if let Some(conn) = lead.conn.as_mut() {
            // A server that does not answer within the deadline (a half-open connection)
            // counts as lost: this coordinator stops leading rather than wait on it.
            match tokio::time::timeout(LEAD_PING, conn.ping()).await {
                Ok(Ok(())) => return true,
                Ok(Err(e)) => {
                    tracing::warn!(db = %self.name, "the connection holding the coordinator lock broke: {e}")
                }
                Err(_) => tracing::warn!(
                    db = %self.name,
                    "the connection holding the coordinator lock did not answer within {} s",
                    LEAD_PING.as_secs()
                ),
            }
            lead.conn = None;
        }
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(db = %self.name, "{e}");
                return false;
            }
        };
        // The server drops the session, and with it the lock, within about 25 s of losing
        // this coordinator (a dead host, a cut link), not the system's default two hours:
        // the other coordinator then takes over. (Ignored over a Unix socket.)
        for set in [
            "SET tcp_keepalives_idle = 10",
            "SET tcp_keepalives_interval = 5",
            "SET tcp_keepalives_count = 3",
            "SET tcp_user_timeout = 25000",
        ] {
            if let Err(e) = sqlx::query(set).execute(&mut *conn).await {
                tracing::warn!(db = %self.name, "{set}: {e}");
            }
        }
        let got = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(LEAD_KEY)
            .fetch_one(&mut *conn)
            .await
            .map(|r| r.get::<bool, _>(0));
        match got {
            // The connection leaves the pool: the lock lives as long as it does.
            Ok(true) => {
                lead.conn = Some(PoolConnection::detach(conn));
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(db = %self.name, "{e}");
                false
            }
        }
    }

    /// The network file held and its revision (none yet: `None`).
    pub async fn network(&self) -> Result<Option<(String, u64)>, CoordError> {
        let row = sqlx::query("SELECT text, revision FROM network WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading the network", e))?;
        Ok(row.map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64)))
    }

    /// Stores a network file as `revision`, if the revision held is still
    /// `revision - 1` (another coordinator on the database did not apply one meanwhile):
    /// whether it was stored.
    pub async fn set_network(&self, text: &str, revision: u64) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("storing the network", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let done = sqlx::query(
            "INSERT INTO network (id, text, revision) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET text = $1, revision = $2 WHERE network.revision = $3",
        )
        .bind(text)
        .bind(revision as i64)
        .bind(revision as i64 - 1)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_changed(tx).await.map_err(err)?;
        Ok(true)
    }

    /// Stores a site's reports (one transaction: all or none), received at `now`; `skew`
    /// is how far the site's clock is off (its clock minus ours, in seconds), if it said
    /// what its clock read: each run's end is then placed on our clock.
    pub async fn add_reports(
        &self,
        site: &str,
        reports: &[Report],
        now: i64,
        skew: Option<i64>,
    ) -> Result<(), CoordError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| CoordError::db("storing reports", e))?;
        if let Some(skew) = skew {
            sqlx::query("UPDATE enrolment SET clock_offset = $1 WHERE site = $2")
                .bind(skew)
                .bind(site)
                .execute(&mut *tx)
                .await
                .map_err(|e| CoordError::db("storing reports", e))?;
        }
        for r in reports {
            let ran = ran_at(r, now, skew);
            let id = sqlx::query(
                "INSERT INTO reports (site, tree, received, started, outcome, from_version, to_version, root, \
                 head_store, bytes_fetched, bytes_reused, requests, duration_ms, rsync_files, error, agent_version, report_id, ran) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                 ON CONFLICT DO NOTHING RETURNING id",
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
            .bind(ran)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| CoordError::db("storing reports", e))?;
            // A report stored before (delivered twice) changes nothing.
            let Some(id) = id.map(|row| row.get::<i64, _>(0)) else {
                continue;
            };
            keep_latest(&mut tx, site, r, id, now, ran)
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
        let row = sqlx::query(&format!("{LATEST} WHERE site = $1 AND tree = $2"))
            .bind(site)
            .bind(tree)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(row.map(|r| latest_of(&r)).unwrap_or_default())
    }

    /// Records a verified head; `true` if it was new.
    pub async fn add_head(&self, h: &HeadSeen) -> Result<bool, CoordError> {
        let done = sqlx::query(
            "INSERT INTO heads (tree, version, root, created, seen, added_bytes, delta_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tree, version) DO NOTHING",
        )
        .bind(&h.tree)
        .bind(h.version as i64)
        .bind(&h.root)
        .bind(h.created)
        .bind(h.seen)
        .bind(h.added_bytes.map(|b| b.min(i64::MAX as u64) as i64))
        .bind(h.delta_bytes.map(|b| b.min(i64::MAX as u64) as i64))
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("storing a head", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest `limit` verified heads of `tree`, newest first.
    pub async fn heads(&self, tree: &str, limit: i64) -> Result<Vec<HeadSeen>, CoordError> {
        let rows = sqlx::query(
            "SELECT version, root, created, seen, added_bytes, delta_bytes FROM heads WHERE tree = $1 \
             ORDER BY version DESC LIMIT $2",
        )
        .bind(tree)
        .bind(limit)
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
                added_bytes: r.get::<Option<i64>, _>(4).map(|b| b as u64),
                delta_bytes: r.get::<Option<i64>, _>(5).map(|b| b as u64),
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
             ORDER BY id DESC LIMIT $1"
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

    /// Opens an event, and with `send` queues its webhook delivery (the body made from
    /// its id) in the same transaction; its id (`None`: it is open already, opened by
    /// another coordinator on the database).
    pub async fn open_event(
        &self,
        kind: &str,
        site: &str,
        tree: &str,
        detail: &str,
        now: i64,
        send: Option<&(dyn Fn(i64) -> String + Sync)>,
    ) -> Result<Option<i64>, CoordError> {
        let err = |e| CoordError::db("storing an event", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let done = sqlx::query(
            "INSERT INTO events (kind, site, tree, opened, detail) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(kind)
        .bind(site)
        .bind(tree)
        .bind(now)
        .bind(detail)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some(id) = done.map(|r| r.get::<i64, _>(0)) else {
            return Ok(None);
        };
        if let Some(body) = send {
            queue(&mut tx, &body(id), now).await.map_err(err)?;
            sqlx::query("UPDATE events SET sent = 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(Some(id))
    }

    /// Closes an event, and with `send` queues its webhook delivery in the same
    /// transaction: whether it was open (not closed by another coordinator).
    pub async fn close_event(
        &self,
        id: i64,
        now: i64,
        send: Option<String>,
    ) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("closing an event", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let done = sqlx::query(
            "UPDATE events SET closed = $1 WHERE id = $2 AND closed IS NULL RETURNING sent",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some(sent) = done.map(|r| r.get::<i64, _>(0)) else {
            return Ok(false);
        };
        // Its resolution goes only where its opening went.
        if let Some(body) = send.filter(|_| sent != 0) {
            queue(&mut tx, &body, now).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(true)
    }

    /// The first webhook delivery waiting (the oldest: deliveries go in order), if its
    /// time has come by `now`: `(id, body, tries)`; and how many wait in all.
    pub async fn next_delivery(
        &self,
        now: i64,
    ) -> Result<(Option<(i64, String, i64)>, i64), CoordError> {
        let err = |e| CoordError::db("reading the webhook's queue", e);
        let first = sqlx::query("SELECT id, body, tries, next_try FROM outbox ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        let waiting: i64 = sqlx::query("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?
            .get(0);
        let due = first
            .filter(|r| r.get::<i64, _>(3) <= now)
            .map(|r| (r.get(0), r.get(1), r.get(2)));
        Ok((due, waiting))
    }

    /// A delivery made (or given up): removed from the queue.
    pub async fn delivered(&self, id: i64) -> Result<(), CoordError> {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| CoordError::db("trimming the webhook's queue", e))?;
        Ok(())
    }

    /// A delivery that failed: tried again at `next_try`.
    pub async fn delivery_failed(
        &self,
        id: i64,
        next_try: i64,
        error: &str,
    ) -> Result<(), CoordError> {
        sqlx::query(
            "UPDATE outbox SET tries = tries + 1, next_try = $1, last_error = $2 WHERE id = $3",
        )
        .bind(next_try)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("updating the webhook's queue", e))?;
        Ok(())
    }

    /// Drops every waiting delivery (the network names no webhook any more).
    pub async fn drop_deliveries(&self) -> Result<u64, CoordError> {
        let done = sqlx::query("DELETE FROM outbox")
            .execute(&self.pool)
            .await
            .map_err(|e| CoordError::db("emptying the webhook's queue", e))?;
        Ok(done.rows_affected())
    }

    /// The outcomes of the last `n` runs of `site` for `tree`, newest first.
    pub async fn last_outcomes(
        &self,
        site: &str,
        tree: &str,
        n: i64,
    ) -> Result<Vec<String>, CoordError> {
        let rows = sqlx::query(
            "SELECT outcome FROM reports WHERE site = $1 AND tree = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(site)
        .bind(tree)
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The last `n` reports of `site` (every tree), newest first, and its last `days`
    /// daily rollups, newest first, for its page. Both are read in one snapshot, so a
    /// rollup committed meanwhile shows its runs in one of the two lists, never both or
    /// neither.
    pub async fn site_record(
        &self,
        site: &str,
        n: i64,
        days: i64,
    ) -> Result<(Vec<ReportRow>, Vec<Rollup>), CoordError> {
        let err = |e| CoordError::db("reading reports", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        if self.shared {
            // PostgreSQL's default (read committed) takes a snapshot per statement.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let reports = sqlx::query(
            "SELECT tree, received, outcome, to_version, bytes_fetched, duration_ms, error, \
             COALESCE(ran, received) FROM reports WHERE site = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(site)
        .bind(n)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let rollups = sqlx::query(
            "SELECT tree, day, runs, failures, bytes_fetched, duration_ms FROM rollups \
             WHERE site = $1 ORDER BY day DESC, tree LIMIT $2",
        )
        .bind(site)
        .bind(days)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        let reports = reports
            .into_iter()
            .map(|r| ReportRow {
                tree: r.get(0),
                received: r.get(1),
                outcome: r.get(2),
                version: r.get::<Option<i64>, _>(3).map(|v| v as u64),
                bytes_fetched: r.get::<i64, _>(4) as u64,
                duration_ms: r.get::<i64, _>(5) as u64,
                error: r.get(6),
                ran: r.get(7),
            })
            .collect();
        let rollups = rollups
            .into_iter()
            .map(|r| Rollup {
                tree: r.get(0),
                day: r.get(1),
                runs: r.get::<i64, _>(2) as u64,
                failures: r.get::<i64, _>(3) as u64,
                bytes_fetched: r.get::<i64, _>(4) as u64,
                duration_ms: r.get::<i64, _>(5) as u64,
            })
            .collect();
        Ok((reports, rollups))
    }

    /// When each site first reported holding `version` (or later) of `tree`: how fast the
    /// version reached the sites.
    pub async fn reached(
        &self,
        tree: &str,
        version: u64,
    ) -> Result<Vec<(String, i64)>, CoordError> {
        let rows = sqlx::query(
            "SELECT site, MIN(at) FROM reached WHERE tree = $1 AND version >= $2 \
             GROUP BY site ORDER BY site",
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
    /// When the run ended, on the coordinator's clock (the agent's times corrected by its
    /// clock's offset; for an agent that does not say its clock, when it was received).
    pub ran: i64,
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
    /// Sums the reports received before `cutoff` into daily rollups and removes them;
    /// each (site, tree)'s last report and last successful one are kept (a site's page
    /// shows them). Events closed before `cutoff` are removed too. Returns the reports
    /// rolled up.
    ///
    /// It works in batches of [`ROLLUP_BATCH`] reports, each one transaction, so a large
    /// backlog never holds the database's write lock (SQLite's only one) for long. Each
    /// batch's reports are chosen and removed by one statement, and summed from what it
    /// removed: reports arriving meanwhile, or a second coordinator rolling up at the same
    /// time, neither lose a run nor count one twice.
    pub async fn roll_up(&self, cutoff: i64) -> Result<u64, CoordError> {
        let err = |e| CoordError::db("rolling up reports", e);
        let mut total = 0;
        loop {
            let n = self.roll_up_batch(cutoff).await.map_err(err)?;
            total += n;
            if n < ROLLUP_BATCH {
                break;
            }
        }
        sqlx::query("DELETE FROM events WHERE closed IS NOT NULL AND closed < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        // Heads seen before the cutoff and when each site reached them go too, but for
        // each tree's newest [`KEEP_VERSIONS`] (a site far behind still counts from them).
        for table in ["reached", "heads"] {
            let at = match table {
                "reached" => "at",
                _ => "seen",
            };
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE {at} < $1 AND version < \
                 (SELECT MAX(h.version) FROM heads h WHERE h.tree = {table}.tree) - $2"
            ))
            .bind(cutoff)
            .bind(KEEP_VERSIONS)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        }
        Ok(total)
    }

    async fn roll_up_batch(&self, cutoff: i64) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM reports WHERE id IN (SELECT id FROM reports WHERE received < $1 \
             AND id NOT IN (SELECT last_id FROM latest) \
             AND id NOT IN (SELECT success_id FROM latest WHERE success_id IS NOT NULL) \
             ORDER BY received LIMIT $2) \
             RETURNING site, tree, COALESCE(ran, received), outcome, bytes_fetched, duration_ms",
        )
        .bind(cutoff)
        .bind(ROLLUP_BATCH as i64)
        .fetch_all(&mut *tx)
        .await?;
        // (site, tree, day) → (runs, failures, bytes fetched, duration).
        let mut days: std::collections::BTreeMap<(String, String, i64), [i64; 4]> =
            Default::default();
        for r in &gone {
            let received: i64 = r.get(2);
            let outcome: String = r.get(3);
            let sum = days
                .entry((r.get(0), r.get(1), received.div_euclid(86_400) * 86_400))
                .or_default();
            sum[0] += 1;
            sum[1] += i64::from(outcome == "failed" || outcome == "refused");
            sum[2] = sum[2].saturating_add(r.get(4));
            sum[3] = sum[3].saturating_add(r.get(5));
        }
        for ((site, tree, day), [runs, failures, bytes, ms]) in days {
            sqlx::query(
                "INSERT INTO rollups (site, tree, day, runs, failures, bytes_fetched, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (site, tree, day) DO UPDATE SET runs = rollups.runs + excluded.runs, \
                 failures = rollups.failures + excluded.failures, \
                 bytes_fetched = rollups.bytes_fetched + excluded.bytes_fetched, \
                 duration_ms = rollups.duration_ms + excluded.duration_ms",
            )
            .bind(site)
            .bind(tree)
            .bind(day)
            .bind(runs)
            .bind(failures)
            .bind(bytes)
            .bind(ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }
}

/// Seconds within which a site's `held_since` moves at most once.
const HELD_GRACE: i64 = 120;

/// Versions of each tree kept in `heads` and `reached` past the retention period.
const KEEP_VERSIONS: i64 = 100;

/// Reports rolled up in one transaction.
const ROLLUP_BATCH: u64 = 10_000;

impl Db {
    /// The key `site` is enrolled with, enrolling `spki` if it has none (or if an admin
    /// asked for a new one and `spki` is not the old one): whether `spki` is the enrolled
    /// key.
    pub async fn enrol(&self, site: &str, spki: &str, now: i64) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("enrolling a site", e);
        let known: Option<String> = sqlx::query("SELECT spki FROM enrolment WHERE site = $1")
            .bind(site)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        let Some(known) = known else {
            let row = sqlx::query(
                "INSERT INTO enrolment (site, spki, enrolled) VALUES ($1, $2, $3) \
                 ON CONFLICT (site) DO UPDATE SET site = excluded.site RETURNING spki",
            )
            .bind(site)
            .bind(spki)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
            return Ok(row.get::<String, _>(0) == spki);
        };
        match known.strip_prefix(REENROL) {
            None => Ok(known == spki),
            // The old key stays refused: only another one is the site's new key.
            Some(old) if old == spki => Ok(false),
            Some(_) => {
                sqlx::query(
                    "UPDATE enrolment SET spki = $1, enrolled = $2 WHERE site = $3 AND spki = $4",
                )
                .bind(spki)
                .bind(now)
                .bind(site)
                .bind(&known)
                .execute(&self.pool)
                .await
                .map_err(err)?;
                // Whoever won a race, the row says which key is the site's.
                let now_known: Option<String> =
                    sqlx::query("SELECT spki FROM enrolment WHERE site = $1")
                        .bind(site)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(err)?
                        .map(|r| r.get(0));
                Ok(now_known.as_deref() == Some(spki))
            }
        }
    }

    /// Asks for a new key for `site`: the next certificate with another key than the one
    /// enrolled becomes the site's (the old one is refused from then on, even on a
    /// connection already open); whether the site had a key.
    pub async fn unenrol(&self, site: &str) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("unenrolling a site", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let done = sqlx::query(
            "UPDATE enrolment SET spki = $1 || spki WHERE site = $2 AND spki NOT LIKE $3",
        )
        .bind(REENROL)
        .bind(site)
        .bind(format!("{REENROL}%"))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // Every coordinator on the database forgets the keys it had checked.
        commit_changed(tx).await.map_err(err)?;
        Ok(done.rows_affected() == 1)
    }
}

/// Marks an enrolled key an admin asked to replace (`network reenrol`).
const REENROL: &str = "reenrol:";

impl Db {
    /// [`Db::latest`] of every (site, tree) that reported.
    pub async fn latest_all(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), Latest>, CoordError> {
        let rows = sqlx::query(LATEST)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading reports", e))?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), latest_of(r)))
            .collect())
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
                added_bytes: None,
                delta_bytes: None,
            });
        }
        Ok(out)
    }
}

/// Each (site, tree)'s summed-up status, as [`latest_of`] reads it.
const LATEST: &str = "SELECT site, tree, outcome, error, last_report, head_store, bytes_fetched, \
     held_version, held_root, last_success, held_since FROM latest";

fn latest_of(r: &sqlx::any::AnyRow) -> Latest {
    let held: Option<i64> = r.get(7);
    let root: Option<String> = r.get(8);
    Latest {
        held: held.map(|v| (v as u64, root.unwrap_or_default())),
        last_success: r.get(9),
        held_since: r.get(10),
        last_outcome: Some(r.get(2)),
        last_error: r.get(3),
        last_report: Some(r.get(4)),
        head_store: r.get(5),
        bytes_fetched: r.get::<i64, _>(6) as u64,
    }
}

/// Queues a webhook delivery in `tx`.
async fn queue(
    tx: &mut sqlx::Transaction<'_, Any>,
    body: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (body, created, tries, next_try) VALUES ($1, $2, 0, $2)")
        .bind(body)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    // A webhook that fails for good holds at most the newest [`MAX_OUTBOX`] calls.
    let dropped = sqlx::query(
        "DELETE FROM outbox WHERE id <= (SELECT id FROM outbox ORDER BY id DESC LIMIT 1 OFFSET $1)",
    )
    .bind(MAX_OUTBOX)
    .execute(&mut **tx)
    .await?;
    if dropped.rows_affected() > 0 {
        tracing::warn!(
            dropped = dropped.rows_affected(),
            "the webhook's queue is full ({MAX_OUTBOX}): its oldest calls are dropped"
        );
    }
    Ok(())
}

/// The most webhook calls waiting.
const MAX_OUTBOX: i64 = 10_000;

/// Keeps the `latest` and `reached` tables up to date with report `id` (just stored), in
/// the transaction that stored it.
async fn keep_latest(
    tx: &mut sqlx::Transaction<'_, Any>,
    site: &str,
    r: &Report,
    id: i64,
    now: i64,
    ran: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO latest (site, tree, last_id, last_report, outcome, error, head_store, bytes_fetched) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (site, tree) DO UPDATE SET \
         last_id = excluded.last_id, last_report = excluded.last_report, outcome = excluded.outcome, \
         error = excluded.error, head_store = excluded.head_store, bytes_fetched = excluded.bytes_fetched \
         WHERE latest.last_id < excluded.last_id",
    )
    .bind(site)
    .bind(&r.tree)
    .bind(id)
    .bind(now)
    .bind(outcome_text(r.outcome))
    .bind(&r.error)
    .bind(&r.head_store)
    .bind(r.bytes_fetched as i64)
    .execute(&mut **tx)
    .await?;
    let Some(version) = r.to_version.filter(|_| r.outcome.is_success()) else {
        return Ok(());
    };
    sqlx::query(
        // Reports of one site committed out of order (two coordinators on PostgreSQL)
        // never move it back. `held_since` moves at once to a version higher than any the
        // site reported holding (and at most the newest verified + 1); any other change
        // (an older version, another root) moves it at most once in [`HELD_GRACE`]
        // seconds: a site that flips what it reports cannot keep every probe too old to
        // judge it.
        "UPDATE latest SET held_since = CASE \
         WHEN held_version = $2 AND held_root = $3 THEN held_since \
         WHEN $2 > COALESCE(max_held, -1) \
         AND $2 <= COALESCE((SELECT MAX(version) FROM heads WHERE tree = $6), 0) + 1 THEN $4 \
         WHEN held_since > $4 - $7 THEN held_since ELSE $4 END, \
         max_held = CASE WHEN $2 > COALESCE(max_held, -1) \
         AND $2 <= COALESCE((SELECT MAX(version) FROM heads WHERE tree = $6), 0) + 1 \
         THEN $2 ELSE max_held END, \
         success_id = $1, held_version = $2, held_root = $3, \
         last_success = $4 WHERE site = $5 AND tree = $6 AND (success_id IS NULL OR success_id < $1)",
    )
    .bind(id)
    .bind(version as i64)
    .bind(r.root.as_deref().unwrap_or_default())
    .bind(now)
    .bind(site)
    .bind(&r.tree)
    .bind(HELD_GRACE)
    .execute(&mut **tx)
    .await?;
    // Only versions the coordinator verified (or the next: its watcher may lag the
    // site): a site cannot fill the table with versions that do not exist.
    sqlx::query(
        "INSERT INTO reached (site, tree, version, at) SELECT $1, $2, $3, $4 \
         WHERE $3 <= COALESCE((SELECT MAX(version) FROM heads WHERE tree = $2), 0) + 1 \
         ON CONFLICT (tree, version, site) DO NOTHING",
    )
    .bind(site)
    .bind(&r.tree)
    .bind(version as i64)
    .bind(ran)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// When report `r`'s run ended, on the coordinator's clock: the agent's start plus the
/// run's length, corrected by the agent's clock `skew`; never later than `now` (when it
/// arrived) nor more than a year before. Without a skew (an agent that does not say what
/// its clock reads), when it arrived.
fn ran_at(r: &Report, now: i64, skew: Option<i64>) -> i64 {
    let Some(skew) = skew else {
        return now;
    };
    let ended = r
        .started
        .saturating_add((r.duration_ms / 1000).min(i64::MAX as u64) as i64)
        .saturating_sub(skew);
    ended.clamp(now.saturating_sub(365 * 86_400), now)
}

/// Takes the lock `<file>.lock` beside a SQLite database (created if missing, never
/// through a symlink), or says which file another coordinator holds.
fn lock_beside(file: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("{file}.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another coordinator has this database open (it holds {path}); a SQLite file is \
             for one coordinator (two share a PostgreSQL database: --db postgres://…)"
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{path}: {e}")),
    }
}

/// A URL without its password, for messages.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// A file path as the path of a `sqlite://` URL: bytes outside a safe set percent-encoded
/// (sqlx decodes them), so a name with `?`, `#` or `%` names that file.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A tree's push counters (see the `pushes` table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushes {
    /// Pushes for the sites that sync from the tree's own stores (and the relays).
    pub upstream: u64,
    /// Pushes released to the sites below a relay.
    pub downstream: u64,
    /// Since when a push waits for the relays to hold the new version.
    pub waiting_since: Option<i64>,
}

impl Db {
    /// The change serial and the push counters' epoch.
    pub async fn changes(&self) -> Result<(i64, u64), CoordError> {
        let r = sqlx::query("SELECT serial, epoch FROM changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading the change serial", e))?;
        Ok((r.get(0), r.get::<i64, _>(1) as u64))
    }

    /// Every tree's push counters.
    pub async fn pushes(&self) -> Result<std::collections::BTreeMap<String, Pushes>, CoordError> {
        let rows = sqlx::query("SELECT tree, upstream, downstream, waiting_since FROM pushes")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading the pushes", e))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    Pushes {
                        upstream: r.get::<i64, _>(1) as u64,
                        downstream: r.get::<i64, _>(2) as u64,
                        waiting_since: r.get(3),
                    },
                )
            })
            .collect())
    }

    /// Counts a push of `tree`; with `wait` (the tree has relays), the sites below them
    /// wait from then for the relays.
    pub async fn push(&self, tree: &str, wait: Option<i64>) -> Result<(), CoordError> {
        let err = |e| CoordError::db("counting a push", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query(
            "INSERT INTO pushes (tree, upstream, downstream, waiting_since) VALUES ($1, 1, 0, $2) \
             ON CONFLICT (tree) DO UPDATE SET upstream = pushes.upstream + 1, \
             waiting_since = COALESCE(excluded.waiting_since, pushes.waiting_since)",
        )
        .bind(tree)
        .bind(wait)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        commit_changed(tx).await.map_err(err)
    }

    /// Releases the push of `tree` that waits since `since` to the sites below its
    /// relays: whether it still waited (a newer push, or another coordinator, did not
    /// take its place).
    pub async fn release(&self, tree: &str, since: i64) -> Result<bool, CoordError> {
        let err = |e| CoordError::db("releasing a push", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let done = sqlx::query(
            "UPDATE pushes SET downstream = downstream + 1, waiting_since = NULL \
             WHERE tree = $1 AND waiting_since = $2",
        )
        .bind(tree)
        .bind(since)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_changed(tx).await.map_err(err)?;
        Ok(true)
    }

    /// Records a probe of `site`'s copy of `tree`.
    pub async fn set_probe(
        &self,
        site: &str,
        tree: &str,
        p: &crate::Probe,
    ) -> Result<(), CoordError> {
        sqlx::query(
            "INSERT INTO probes (site, tree, version, root, at, error, etag) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (site, tree) DO UPDATE SET \
             version = excluded.version, root = excluded.root, at = excluded.at, \
             error = excluded.error, etag = excluded.etag",
        )
        .bind(site)
        .bind(tree)
        .bind(p.version.map(|v| v as i64))
        .bind(p.root.as_deref())
        .bind(p.at)
        .bind(p.error.as_deref())
        .bind(p.etag.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| CoordError::db("storing a probe", e))?;
        Ok(())
    }

    /// The last probe of every (site, tree).
    pub async fn probes(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), crate::Probe>, CoordError> {
        let rows = sqlx::query("SELECT site, tree, version, root, at, error, etag FROM probes")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading probes", e))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    (r.get(0), r.get(1)),
                    crate::Probe {
                        version: r.get::<Option<i64>, _>(2).map(|v| v as u64),
                        root: r.get(3),
                        at: r.get(4),
                        error: r.get(5),
                        etag: r.get(6),
                    },
                )
            })
            .collect())
    }

    /// Records when `site`'s client certificate expires.
    pub async fn set_not_after(&self, site: &str, not_after: i64) -> Result<(), CoordError> {
        sqlx::query("UPDATE enrolment SET not_after = $1 WHERE site = $2")
            .bind(not_after)
            .bind(site)
            .execute(&self.pool)
            .await
            .map_err(|e| CoordError::db("recording a certificate's expiry", e))?;
        Ok(())
    }

    /// How far each site's clock is off (its clock minus the coordinator's, in seconds), as
    /// measured on its last delivery of reports.
    pub async fn clock_offsets(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, CoordError> {
        let rows =
            sqlx::query("SELECT site, clock_offset FROM enrolment WHERE clock_offset IS NOT NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| CoordError::db("reading the sites' clocks", e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// When each site's client certificate expires (sites that connected).
    pub async fn not_afters(&self) -> Result<std::collections::BTreeMap<String, i64>, CoordError> {
        let rows = sqlx::query("SELECT site, not_after FROM enrolment WHERE not_after IS NOT NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| CoordError::db("reading certificates' expiry", e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Raises the change serial in `tx` and commits it: every coordinator on the database
/// wakes its long-polls once the change it announces is committed with it.
async fn commit_changed(mut tx: sqlx::Transaction<'_, Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE changes SET serial = serial + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tree: &str, outcome: Outcome, version: Option<u64>, id: &str) -> Report {
        Report {
            id: id.into(),
            tree: tree.into(),
            outcome,
            started: 0,
            from_version: None,
            to_version: version,
            root: version.map(|v| format!("root{v}")),
            head_store: None,
            bytes_fetched: 10,
            bytes_reused: 0,
            requests: 1,
            duration_ms: 5,
            rsync_files: 0,
            error: None,
            agent_version: "t".into(),
        }
    }

    /// Runs `f` on a runtime of its own with the path of a database in a new directory.
    fn run<F: std::future::Future<Output = ()>>(f: impl FnOnce(String) -> F) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f(dir.path().join("c.db").display().to_string()));
    }

    #[test]
    fn the_latest_table_is_filled_from_the_reports_stored_before_it() {
        run(|path| async move {
            // A database as migrations 1 to 6 left it, with reports in it.
            let url = format!("sqlite://{}?mode=rwc", encode_path(&path));
            let pool = AnyPoolOptions::new().connect(&url).await.expect("connect");
            let mut old = sqlx::migrate!("./migrations/sqlite");
            let before: Vec<_> = old
                .migrations
                .iter()
                .filter(|m| m.version < 7)
                .cloned()
                .collect();
            old.migrations = std::borrow::Cow::Owned(before);
            old.run(&pool).await.expect("migrate to 6");
            let rows = [
                ("a", "t", "completed", Some(1), 100),
                ("a", "t", "up_to_date", Some(1), 200),
                ("a", "t", "failed", None, 300),
                ("a", "u", "failed", None, 150),
                ("b", "t", "completed", Some(2), 400),
            ];
            for (site, tree, outcome, version, at) in rows {
                sqlx::query(
                    "INSERT INTO reports (site, tree, received, started, outcome, to_version, root, \
                     bytes_fetched, bytes_reused, requests, duration_ms, rsync_files, agent_version) \
                     VALUES ($1, $2, $3, 0, $4, $5, $6, 1, 0, 1, 1, 0, 't')",
                )
                .bind(site)
                .bind(tree)
                .bind(at as i64)
                .bind(outcome)
                .bind(version.map(|v: i64| v))
                .bind(version.map(|v| format!("root{v}")))
                .execute(&pool)
                .await
                .expect("insert");
            }
            pool.close().await;
            let db = Db::open(&path).await.expect("open and migrate");
            let all = db.latest_all().await.expect("latest");
            let a_t = &all[&("a".to_string(), "t".to_string())];
            assert_eq!(a_t.held, Some((1, "root1".into())));
            assert_eq!((a_t.last_success, a_t.last_report), (Some(200), Some(300)));
            assert_eq!(a_t.last_outcome.as_deref(), Some("failed"));
            let a_u = &all[&("a".to_string(), "u".to_string())];
            assert_eq!((a_u.held.clone(), a_u.last_report), (None, Some(150)));
            assert_eq!(
                all[&("b".to_string(), "t".to_string())].held,
                Some((2, "root2".into()))
            );
            assert_eq!(all.len(), 3);
            assert_eq!(
                db.reached("t", 1).await.expect("reached"),
                vec![("a".into(), 100), ("b".into(), 400)]
            );
            assert_eq!(
                db.reached("t", 2).await.expect("reached"),
                vec![("b".into(), 400)]
            );
        });
    }

    #[test]
    fn a_rollup_in_batches_counts_every_run_once_and_keeps_the_status() {
        run(|path| async move {
            let db = Db::open(&path).await.expect("open");
            // More than two batches of one site's runs on two days, then one failure.
            let n = 2 * ROLLUP_BATCH + 7;
            let reports: Vec<Report> = (0..n)
                .map(|i| report("t", Outcome::UpToDate, Some(3), &format!("r{i}")))
                .collect();
            for (i, chunk) in reports.chunks(1000).enumerate() {
                db.add_reports("a", chunk, 86_400 * (1 + i as i64 % 2), None)
                    .await
                    .expect("add");
            }
            db.add_reports(
                "a",
                &[report("t", Outcome::Failed, None, "last")],
                3 * 86_400,
                None,
            )
            .await
            .expect("add");
            // The same report again changes nothing.
            db.add_reports(
                "a",
                &[report("t", Outcome::Failed, None, "last")],
                4 * 86_400,
                None,
            )
            .await
            .expect("add");
            let before = db.latest("a", "t").await.expect("latest");
            assert_eq!(before.last_report, Some(3 * 86_400));
            // Held since its first report of version 3, however many followed.
            assert_eq!(before.held_since, Some(86_400));
            let gone = db.roll_up(10 * 86_400).await.expect("roll up");
            // The last report and the last success stay.
            assert_eq!(gone, n - 1);
            assert_eq!(db.latest("a", "t").await.expect("latest"), before);
            let (kept, days) = db.site_record("a", 10, 10).await.expect("record");
            assert_eq!(kept.len(), 2);
            let runs: u64 = days.iter().map(|d| d.runs).sum();
            let bytes: u64 = days.iter().map(|d| d.bytes_fetched).sum();
            assert_eq!((runs, bytes, days.len()), (n - 1, 10 * (n - 1), 2));
            assert_eq!(db.roll_up(10 * 86_400).await.expect("again"), 0);
        });
    }

    #[test]
    fn runs_are_placed_on_the_coordinators_clock_however_late_and_wrong_the_agents() {
        run(|path| async move {
            let db = Db::open(&path).await.expect("open");
            db.enrol("a", "key", 0).await.expect("enrol");
            for version in [4, 5] {
                let h = HeadSeen {
                    tree: "t".into(),
                    version,
                    root: format!("root{version}"),
                    created: 0,
                    seen: 0,
                    added_bytes: None,
                    delta_bytes: None,
                };
                db.add_head(&h).await.expect("head");
            }
            // An agent whose clock is an hour ahead ran at its 10,000 + 3,600 for 20 s;
            // the report arrived (queued) at our 50,000.
            let mut r = report("t", Outcome::Completed, Some(4), "x");
            r.started = 13_600;
            r.duration_ms = 20_000;
            db.add_reports("a", &[r], 50_000, Some(3_600))
                .await
                .expect("add");
            let (runs, _) = db.site_record("a", 10, 10).await.expect("record");
            assert_eq!((runs[0].ran, runs[0].received), (10_020, 50_000));
            assert_eq!(
                db.reached("t", 4).await.expect("reached"),
                vec![("a".into(), 10_020)]
            );
            assert_eq!(db.clock_offsets().await.expect("clocks")["a"], 3_600);
            // A version far past any the coordinator verified leaves no row.
            db.add_reports(
                "a",
                &[report("t", Outcome::Completed, Some(100), "far")],
                50_001,
                None,
            )
            .await
            .expect("add");
            assert!(db.reached("t", 100).await.expect("reached").is_empty());
            // A clock so wrong the run would be in the future, or years back: clamped.
            let mut r = report("t", Outcome::Completed, Some(5), "y");
            r.started = 10;
            db.add_reports("a", &[r], 50_000 + 400 * 86_400, Some(-3_600))
                .await
                .expect("add");
            let (runs, _) = db.site_record("a", 10, 10).await.expect("record");
            assert_eq!(runs[0].ran, 50_000 + 35 * 86_400);
            // An agent that does not say its clock: when it arrived.
            let mut r = report("t", Outcome::Completed, Some(6), "z");
            r.started = 1;
            db.add_reports("a", &[r], 60_000_000, None)
                .await
                .expect("add");
            let (runs, _) = db.site_record("a", 10, 10).await.expect("record");
            assert_eq!(runs[0].ran, 60_000_000);
        });
    }

    #[test]
    fn a_site_flipping_what_it_reports_moves_held_since_once_in_its_grace() {
        run(|path| async move {
            let db = Db::open(&path).await.expect("open");
            let at = |v: u64, root: &str, id: &str| {
                let mut r = report("t", Outcome::UpToDate, Some(v), id);
                r.root = Some(root.into());
                r
            };
            for version in 1..=4 {
                let h = HeadSeen {
                    tree: "t".into(),
                    version,
                    root: format!("root{version}"),
                    created: 0,
                    seen: 0,
                    added_bytes: None,
                    delta_bytes: None,
                };
                db.add_head(&h).await.expect("head");
            }
            // Each report in turn, and `held_since` after it: another root, an older
            // version, then back, all within the grace, leave it at 1000; a version newer
            // than any it held (and verified) moves it at once; the same version again
            // does not; an older one moves it only past the grace; one past the newest
            // verified + 1 (a version that does not exist) not within it.
            let steps = [
                (2, "x", 1000, 1000),
                (2, "y", 1001, 1000),
                (1, "x", 1002, 1000),
                (2, "x", 1003, 1000),
                (3, "z", 1010, 1010),
                (3, "z", 1100, 1010),
                (2, "x", 1120, 1010),
                (2, "x", 1200, 1010),
                (3, "z", 1300, 1300),
                (9, "q", 1310, 1300),
                // A version that does not exist did not raise the bar: the real next one,
                // once verified, still moves it at once.
                (4, "w", 1320, 1320),
            ];
            for (i, (v, root, now, since)) in steps.into_iter().enumerate() {
                let r = at(v, root, &format!("r{i}"));
                db.add_reports("a", &[r], now, None).await.expect("add");
                let held = db.latest("a", "t").await.expect("latest").held_since;
                assert_eq!(held, Some(since), "after report {i}");
            }
        });
    }
}
