//! The state store: SQLite in WAL mode, the only module of Cove that contains SQL.
//!
//! One connection behind a mutex serialises every transaction, which is what SQLite does anyway and
//! makes each store function atomic with respect to the others. Async callers go through
//! [`Store::call`], which runs the closure on the blocking pool so no query ever stalls the runtime.

mod audit;
pub mod auth;
mod jobs;
mod locations;
mod metrics;
mod migrations;
mod resources;

pub use audit::*;
pub use jobs::*;
pub use locations::*;
pub use metrics::*;
pub use resources::*;

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("state store holds a record that does not decode")]
    Corrupt(#[from] serde_json::Error),
    #[error("state store task was lost")]
    Join(#[from] tokio::task::JoinError),
    /// A store a newer Cove wrote: opened by this one, it is left as it is.
    #[error(
        "the state store has schema version {found}, newer than this Cove knows ({known}): a newer Cove wrote it; run that version (or restore a backup this version made), this one changes nothing in it"
    )]
    NewerSchema { found: usize, known: usize },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the state database and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await?
    }

    /// Runs `f` with the connection on the current thread (start-up and tests).
    pub fn call_now<T>(&self, f: impl FnOnce(&mut Connection) -> StoreResult<T>) -> StoreResult<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// `execute` and `query_row` through the connection's statement cache: the store's SQL is a fixed set
/// of strings, so each is parsed once rather than on every call (parsing was a tenth of the control
/// plane's time per mini-batch).
pub(crate) trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

pub fn meta_get(conn: &Connection, key: &str) -> StoreResult<Option<String>> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

pub fn meta_set(conn: &Connection, key: &str, value: &str) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Writes to the store as any change does (taking its write lock), for a readiness probe: fails when
/// another writer holds the lock past the busy timeout, or the file cannot be written.
pub fn probe_writable(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    meta_set(&tx, "ready_probe_ms", &now_ms().to_string())?;
    tx.commit()?;
    Ok(())
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time in milliseconds since the epoch as the logs and messages show it (UTC, to the millisecond).
pub fn timestamp(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Records a client certificate as one of `compute`'s workers' (mutual TLS).
pub fn worker_certificate_add(
    conn: &Connection,
    fingerprint: &str,
    compute: &str,
    not_after_ms: i64,
) -> StoreResult<()> {
    // Expired certificates can do nothing; their rows go as new ones come.
    conn.execute("DELETE FROM worker_certificates WHERE not_after_ms <= ?1", [now_ms()])?;
    conn.execute(
        "INSERT OR REPLACE INTO worker_certificates (fingerprint, compute, not_after_ms, created_ms) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![fingerprint, compute, not_after_ms, now_ms()],
    )?;
    Ok(())
}

/// The compute a client certificate belongs to, if it is current at `now_ms`.
pub fn worker_certificate_compute(conn: &Connection, fingerprint: &str, now_ms: i64) -> StoreResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT compute FROM worker_certificates WHERE fingerprint = ?1 AND not_after_ms > ?2")?
        .query_row(rusqlite::params![fingerprint, now_ms], |r| r.get(0))
        .optional()?)
}

/// Marks a worker certificate renewed, if it may be: a certificate is renewed once, and only once it
/// is `min_age_ms` old, so a worker holding one cannot mint certificates without bound. The reason
/// when it may not.
pub fn worker_certificate_renewing(
    conn: &Connection,
    fingerprint: &str,
    now_ms: i64,
    min_age_ms: i64,
) -> StoreResult<Result<(), String>> {
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            "SELECT created_ms, renewed_ms FROM worker_certificates WHERE fingerprint = ?1 AND not_after_ms > ?2",
            rusqlite::params![fingerprint, now_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((created, renewed)) = row else {
        return Ok(Err("the certificate presented is not a current worker certificate".into()));
    };
    if let Some(renewed) = renewed {
        return Ok(Err(format!(
            "this certificate was renewed already, at {}: use the renewed one (the files the renewing worker wrote)",
            timestamp(renewed)
        )));
    }
    let renewable_from = created + min_age_ms;
    if now_ms < renewable_from {
        return Ok(Err(format!(
            "this certificate is renewable from {} on, once a third of its life has passed",
            timestamp(renewable_from)
        )));
    }
    conn.execute(
        "UPDATE worker_certificates SET renewed_ms = ?2 WHERE fingerprint = ?1",
        rusqlite::params![fingerprint, now_ms],
    )?;
    Ok(Ok(()))
}

/// Undoes [`worker_certificate_renewing`] when no certificate could be issued after all.
pub fn worker_certificate_not_renewed(conn: &Connection, fingerprint: &str) -> StoreResult<()> {
    conn.execute("UPDATE worker_certificates SET renewed_ms = NULL WHERE fingerprint = ?1", [fingerprint])?;
    Ok(())
}

/// Revokes every client certificate of a compute's workers; returns how many there were.
pub fn worker_certificates_revoke(conn: &Connection, compute: &str) -> StoreResult<usize> {
    Ok(conn.execute("DELETE FROM worker_certificates WHERE compute = ?1", [compute])?)
}

/// Every current worker certificate: (compute, not_after_ms), soonest expiry first.
pub fn worker_certificates_current(conn: &Connection, now_ms: i64) -> StoreResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT compute, MAX(not_after_ms) FROM worker_certificates WHERE not_after_ms > ?1 GROUP BY compute ORDER BY 2",
    )?;
    let rows = stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
