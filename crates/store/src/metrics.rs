//! What the state store knows that an operator watches: jobs by status, attempts by outcome, the queue
//! and the workers holding leases, and how long mini-batches took. Read in one call per scrape; the
//! counts come from the rows themselves, so they hold across restarts.

use crate::StoreResult;
use rusqlite::Connection;

/// Upper bounds (seconds) of the mini-batch duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// (status, jobs)
    pub jobs_by_status: Vec<(String, i64)>,
    /// (compute, outcome, attempts that ended so)
    pub attempts_by_outcome: Vec<(String, String, i64)>,
    /// (compute, attempts after a mini-batch's first)
    pub retries: Vec<(String, i64)>,
    /// (compute, deployment, mini-batches waiting for a lease in running jobs)
    pub queue: Vec<(String, String, i64)>,
    /// (compute, workers holding a lease now)
    pub workers: Vec<(String, i64)>,
    /// Per compute: (cumulative count per bucket of [`DURATION_BUCKETS`], count, sum of seconds).
    pub durations: Vec<(String, Vec<u64>, u64, f64)>,
}

pub fn metrics_snapshot(conn: &Connection) -> StoreResult<MetricsSnapshot> {
    let mut s = MetricsSnapshot::default();
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
    s.jobs_by_status = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(a.compute, j.compute), a.outcome, COUNT(*) FROM attempts a JOIN jobs j ON j.name = a.job
         WHERE a.outcome IS NOT NULL GROUP BY 1, 2",
    )?;
    s.attempts_by_outcome = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(a.compute, j.compute), COUNT(*) FROM attempts a JOIN jobs j ON j.name = a.job
         WHERE a.attempt > 1 GROUP BY 1",
    )?;
    s.retries = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT j.compute, j.deployment, COUNT(*) FROM batches b JOIN jobs j ON j.name = b.job
         WHERE b.state = 'pending' AND j.status IN ('Queued', 'Running') GROUP BY 1, 2",
    )?;
    s.queue = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(a.compute, j.compute), COUNT(DISTINCT a.node) FROM batches b
         JOIN attempts a ON a.lease_id = b.lease_id JOIN jobs j ON j.name = b.job
         WHERE b.state = 'leased' GROUP BY 1",
    )?;
    s.workers = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let buckets: Vec<String> = DURATION_BUCKETS
        .iter()
        .map(|b| format!("SUM(a.finished_ms - a.started_ms <= {})", (b * 1000.0) as i64))
        .collect();
    let sql = format!(
        "SELECT COALESCE(a.compute, j.compute), COUNT(*), SUM(a.finished_ms - a.started_ms), {}
         FROM attempts a JOIN jobs j ON j.name = a.job WHERE a.finished_ms IS NOT NULL GROUP BY 1",
        buckets.join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    s.durations = stmt
        .query_map([], |r| {
            let counts: Vec<u64> = (0..DURATION_BUCKETS.len())
                .map(|i| r.get::<_, i64>(3 + i).map(|v| v as u64))
                .collect::<Result<_, _>>()?;
            Ok((r.get(0)?, counts, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as f64 / 1000.0))
        })?
        .collect::<Result<_, _>>()?;
    Ok(s)
}
