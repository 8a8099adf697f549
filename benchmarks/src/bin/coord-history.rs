//! The coordinator's status against the size of its history (issue 19): 1,000 sites × 10
//! trees reporting, the reports table filled to 10,000, 100,000 and 1,000,000 rows (a
//! network of that size adds 14.4 million a day). At each size: the status's read of every
//! site and tree's last report and last success from the `latest` table (what the status,
//! the metrics and the events read since migration 0007), the same read as it was made
//! before (grouping the whole `reports` table), and one delivery of 10 reports.
//!
//!   coord-history [MAX_ROWS]
//!
//! Medians of 5 reads and 20 deliveries at each size, on SQLite in WAL mode with
//! `synchronous=FULL`, in a temporary directory.

use std::time::{Duration, Instant};

use pulpdist_coordinator::Db;
use pulpdist_network::{Outcome, Report};
use sqlx::Row;

fn report(tree: usize, version: u64, id: u64) -> Report {
    Report {
        id: format!("{id:016x}"),
        tree: format!("tree{tree:02}"),
        outcome: match id % 20 {
            0 => Outcome::Failed,
            1 => Outcome::Completed,
            _ => Outcome::UpToDate,
        },
        started: 0,
        from_version: Some(version),
        to_version: (!id.is_multiple_of(20)).then_some(version),
        root: Some(format!("{version:064x}")),
        head_store: Some("https://origin.example/pulpdist".into()),
        bytes_fetched: 1000 + id % 5000,
        bytes_reused: 0,
        requests: 2,
        duration_ms: 300,
        rsync_files: 0,
        error: id.is_multiple_of(20).then(|| "a failure".to_string()),
        agent_version: "0.1.0".into(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The read the coordinator makes now (`Db::latest_all`).
const NOW: &str = "SELECT site, tree, outcome, error, last_report, head_store, bytes_fetched, \
     held_version, held_root, last_success FROM latest";

/// The read of every (site, tree)'s last report and last success as the coordinator made
/// it before the `latest` table.
const BEFORE: [&str; 2] = [
    "SELECT r.site, r.tree, r.outcome, r.error, r.received, r.head_store, r.bytes_fetched \
     FROM reports r JOIN (SELECT MAX(id) AS id FROM reports GROUP BY site, tree) m ON r.id = m.id",
    "SELECT r.site, r.tree, r.to_version, r.root, r.received FROM reports r JOIN \
     (SELECT MAX(id) AS id FROM reports WHERE outcome IN ('completed', 'up_to_date') \
     AND to_version IS NOT NULL GROUP BY site, tree) m ON r.id = m.id",
];

fn main() {
    let max: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("coord-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("c.db").display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = Db::open(&path).await.expect("open");
        let raw = sqlx::sqlite::SqlitePoolOptions::new()
            .connect(&format!("sqlite://{path}?mode=ro"))
            .await
            .expect("read-only pool");
        let (sites, trees) = (1000usize, 10usize);
        let mut rows = 0u64;
        let mut next_id = 0u64;
        println!("| reports | status read now (the coordinator's call) | the same SQL, native driver | the read before 0007, native driver | a delivery of 10 reports |");
        println!("|---|---|---|---|---|");
        let mut size = 10_000u64;
        while size <= max {
            // Fill: each site delivers its trees' reports, 1,000 a transaction.
            while rows < size {
                for s in 0..sites {
                    let batch: Vec<Report> = (0..trees)
                        .map(|t| {
                            next_id += 1;
                            report(t, 1 + next_id / 100_000, next_id)
                        })
                        .collect();
                    db.add_reports(
                        &format!("site{s:04}"),
                        &batch,
                        1_800_000_000 + next_id as i64 / 1000,
                        None,
                    )
                    .await
                    .expect("fill");
                    rows += trees as u64;
                }
            }
            let mut now_reads = Vec::new();
            let mut n_rows = 0;
            for _ in 0..5 {
                let t = Instant::now();
                n_rows = db.latest_all().await.expect("latest").len();
                now_reads.push(t.elapsed());
            }
            let mut now_sql = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let n = sqlx::query(NOW).fetch_all(&raw).await.expect("now").len();
                assert_eq!(n, n_rows);
                now_sql.push(t.elapsed());
            }
            let mut before_reads = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let mut n = 0;
                for q in BEFORE {
                    n += sqlx::query(q).fetch_all(&raw).await.expect("before").len();
                }
                assert!(n > 0);
                before_reads.push(t.elapsed());
            }
            let mut deliveries = Vec::new();
            for i in 0..20 {
                let batch: Vec<Report> = (0..trees)
                    .map(|t| {
                        next_id += 1;
                        report(t, 1 + next_id / 100_000, next_id)
                    })
                    .collect();
                let t = Instant::now();
                db.add_reports(
                    &format!("site{:04}", i % sites),
                    &batch,
                    1_800_000_000,
                    None,
                )
                .await
                .expect("deliver");
                deliveries.push(t.elapsed());
                rows += trees as u64;
            }
            let count: i64 = sqlx::query("SELECT COUNT(*) FROM reports")
                .fetch_one(&raw)
                .await
                .expect("count")
                .get(0);
            println!(
                "| {count} | {:.1} ms ({n_rows} rows) | {:.1} ms | {:.1} ms | {:.1} ms |",
                median(now_reads).as_secs_f64() * 1e3,
                median(now_sql).as_secs_f64() * 1e3,
                median(before_reads).as_secs_f64() * 1e3,
                median(deliveries).as_secs_f64() * 1e3,
            );
            size *= 10;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
