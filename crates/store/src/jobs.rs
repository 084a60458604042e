//! Jobs, mini-batches, leases and attempts: the durable half of the job state machine.
//!
//! Every transition is one SQLite transaction that reads the current row, asks `cove_model`'s pure
//! policy what follows, and writes the result. Invariants kept here:
//! - a mini-batch is `leased` by exactly the lease in `batches.lease_id`; only that lease's report counts;
//! - a mini-batch is committed once: `succeeded` with `committed_part` set, never changed afterwards
//!   (once the job has ended and its parts are deleted, `committed_part` is cleared: nothing reads it then);
//! - the job's counters change in the same transaction as the mini-batch they count.

use super::{location_claim, locations_overlapping, now_ms, Cached, Location, StoreResult};
use cove_api::worker::RunSpec;
use cove_api::{AuditEntry, JobInput};
use cove_model::{
    after_attempt, job_verdict, AttemptOutcome, BatchNext, JobCounters, JobPolicy, JobStatus, JobVerdict,
};
use cove_spec::DeploymentSettings;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// What a job runs, fixed when it is submitted (a snapshot: later changes to the deployment do not apply).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub input: JobInput,
    /// The `score` output folder, as a datastore URI.
    pub output_uri: String,
    pub output_file_name: Option<String>,
    pub settings: DeploymentSettings,
    pub run: RunSpec,
    pub model_uri: String,
    pub code_uri: Option<String>,
    /// The exact files to score (datastore-relative, in the input's datastore), for a rerun of failed
    /// items; `None` scores the whole input.
    #[serde(default)]
    pub files: Option<Vec<String>>,
    /// The input datastore's folder, when the job's compute sees it: workers read inputs in place.
    #[serde(default)]
    pub inputs_in_place: Option<String>,
    /// The input is a network datastore the compute reaches through its private endpoint and that can
    /// sign URLs: workers read inputs straight from the store.
    #[serde(default)]
    pub inputs_direct: bool,
}

impl JobRecord {
    pub fn policy(&self) -> JobPolicy {
        let processes = u64::from(self.settings.instance_count) * u64::from(self.settings.max_concurrency_per_instance);
        JobPolicy { error_threshold: self.settings.error_threshold, init_failure_limit: 3 * processes.max(1) }
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub name: String,
    pub seq: i64,
    pub endpoint: String,
    pub deployment: String,
    pub compute: String,
    pub status: JobStatus,
    pub record: JobRecord,
    pub idempotency_key: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
    pub files_total: u64,
    pub counters: JobCounters,
    /// The compute backend's handle on the job's workers (a Slurm job id).
    pub compute_ref: Option<String>,
    pub compute_state: Option<String>,
    pub compute_submissions: u32,
}

const JOB_COLUMNS: &str = "name, seq, endpoint, deployment, compute, status, record, idempotency_key, created_ms, \
    started_ms, finished_ms, error, files_total, batches_total, batches_succeeded, batches_failed, items_ok, \
    items_failed, init_failures, compute_ref, compute_state, compute_submissions";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    let status: String = r.get(5)?;
    let record: String = r.get(6)?;
    let bad = |i, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
    };
    Ok(JobRow {
        name: r.get(0)?,
        seq: r.get(1)?,
        endpoint: r.get(2)?,
        deployment: r.get(3)?,
        compute: r.get(4)?,
        status: JobStatus::parse(&status).ok_or_else(|| bad(5, format!("unknown job status {status}").into()))?,
        record: serde_json::from_str(&record).map_err(|e| bad(6, e.into()))?,
        idempotency_key: r.get(7)?,
        created_ms: r.get(8)?,
        started_ms: r.get(9)?,
        finished_ms: r.get(10)?,
        error: r.get(11)?,
        files_total: r.get(12)?,
        counters: JobCounters {
            batches_total: r.get(13)?,
            batches_succeeded: r.get(14)?,
            batches_failed: r.get(15)?,
            items_ok: r.get(16)?,
            items_failed: r.get(17)?,
            init_failures: r.get(18)?,
        },
        compute_ref: r.get(19)?,
        compute_state: r.get(20)?,
        compute_submissions: r.get(21)?,
    })
}

pub struct NewJob {
    pub name: String,
    pub endpoint: String,
    pub deployment: String,
    pub compute: String,
    pub record: JobRecord,
    pub idempotency_key: Option<String>,
    /// The job's output location, reserved for it in the same transaction.
    pub output: Location,
}

pub enum JobInsert {
    Created(JobRow),
    /// The idempotency key was seen before: this is the job it created.
    Existing(JobRow),
    /// The job name is taken by another job.
    NameTaken,
    /// The output location is, holds or lies inside a location someone else holds.
    OutputTaken(Location),
}

pub fn job_insert(conn: &mut Connection, job: NewJob) -> StoreResult<JobInsert> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(key) = &job.idempotency_key {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE endpoint = ?1 AND idempotency_key = ?2");
        if let Some(existing) = tx.row(&sql, params![job.endpoint, key], job_from_row).optional()? {
            return Ok(JobInsert::Existing(existing));
        }
    }
    let taken: bool = tx.row("SELECT EXISTS (SELECT 1 FROM jobs WHERE name = ?1)", [&job.name], |r| r.get(0))?;
    if taken {
        return Ok(JobInsert::NameTaken);
    }
    if let Some(held) = locations_overlapping(&tx, &job.output.datastore, &job.output.path)?.into_iter().next() {
        return Ok(JobInsert::OutputTaken(held));
    }
    location_claim(&tx, &job.output)?;
    let seq: i64 = tx.row("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", [], |r| r.get(0))?;
    tx.exec(
        "INSERT INTO jobs (name, seq, endpoint, deployment, compute, status, record, idempotency_key, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            job.name,
            seq,
            job.endpoint,
            job.deployment,
            job.compute,
            JobStatus::NotStarted.as_str(),
            serde_json::to_string(&job.record)?,
            job.idempotency_key,
            now_ms()
        ],
    )?;
    let row = job_get_tx(&tx, &job.name)?.expect("the row was inserted in this transaction");
    tx.commit()?;
    Ok(JobInsert::Created(row))
}

fn job_get_tx(conn: &Connection, name: &str) -> StoreResult<Option<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?1");
    Ok(conn.row(&sql, [name], job_from_row).optional()?)
}

pub fn job_get(conn: &Connection, name: &str) -> StoreResult<Option<JobRow>> {
    job_get_tx(conn, name)
}

pub fn job_list(
    conn: &Connection,
    endpoint: Option<&str>,
    deployment: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<JobRow>> {
    job_page(conn, &JobFilter { endpoint, deployment, ..Default::default() }, limit)
}

/// Which jobs a listing takes, newest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobFilter<'a> {
    pub endpoint: Option<&'a str>,
    pub deployment: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Created at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only jobs created before this one: the continuation of a page that ended with it.
    pub before: Option<&'a str>,
}

/// A page of jobs, newest first. A page continues from its predecessor's last job by `seq` (no
/// OFFSET), so the rows of earlier pages are not read again.
pub fn job_page(conn: &Connection, f: &JobFilter<'_>, limit: u32) -> StoreResult<Vec<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR endpoint = ?1) AND (?2 IS NULL OR deployment = ?2)
         AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR created_ms >= ?4)
         AND (?5 IS NULL OR seq < (SELECT seq FROM jobs WHERE name = ?5))
         ORDER BY seq DESC LIMIT ?6"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows =
        stmt.query_map(params![f.endpoint, f.deployment, f.status, f.since_ms, f.before, limit], job_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Jobs that a control plane must pick up again after a restart.
pub fn jobs_unfinished(conn: &Connection) -> StoreResult<Vec<JobRow>> {
    let sql =
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status NOT IN ('Completed', 'Failed', 'Canceled') ORDER BY seq");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], job_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves a job from one of `from` to `to`; returns false (and changes nothing) from any other status.
pub fn job_transition(
    conn: &Connection,
    name: &str,
    from: &[JobStatus],
    to: JobStatus,
    error: Option<&str>,
) -> StoreResult<bool> {
    let current: Option<String> =
        conn.row("SELECT status FROM jobs WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    let Some(current) = current.and_then(|s| JobStatus::parse(&s)) else {
        return Ok(false);
    };
    if !from.contains(&current) {
        return Ok(false);
    }
    let finished = to.is_terminal().then(now_ms);
    atomically(conn, || {
        conn.exec(
            "UPDATE jobs SET status = ?2, error = COALESCE(?3, error), finished_ms = COALESCE(?4, finished_ms) WHERE name = ?1",
            params![name, to.as_str(), error, finished],
        )?;
        if to.is_terminal() {
            release_unfinished(conn, name)?;
        }
        Ok(true)
    })
}

/// Runs `f` as one unit, so a job's status and what it releases change together or not at all: within
/// the caller's transaction when it holds one, else in a transaction of its own (a savepoint is both).
fn atomically<T>(conn: &Connection, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    conn.execute_batch("SAVEPOINT cove_atomically")?;
    match f() {
        Ok(value) => {
            conn.execute_batch("RELEASE cove_atomically")?;
            Ok(value)
        }
        Err(error) => {
            conn.execute_batch("ROLLBACK TO cove_atomically; RELEASE cove_atomically")?;
            Err(error)
        }
    }
}

/// When a job ends, its mini-batches that did not run to the end are `not_run` and their leases are
/// gone: nothing expires later, and a late report of one of them is recorded and discarded.
fn release_unfinished(conn: &Connection, job: &str) -> StoreResult<()> {
    conn.exec(
        "UPDATE attempts SET outcome = 'discarded:job_ended', finished_ms = ?2
         WHERE job = ?1 AND outcome IS NULL",
        params![job, now_ms()],
    )?;
    conn.exec(
        "UPDATE batches SET state = 'not_run', lease_id = NULL, lease_deadline_ms = NULL
         WHERE job = ?1 AND state IN ('pending', 'leased')",
        [job],
    )?;
    Ok(())
}

/// Releases what jobs that ended before this rule existed (or in a crash between) still hold.
pub fn release_ended_jobs(conn: &Connection) -> StoreResult<()> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT b.job FROM batches b JOIN jobs j ON j.name = b.job
         WHERE b.state IN ('pending', 'leased') AND j.status IN ('Completed', 'Failed', 'Canceled')",
    )?;
    let jobs: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for job in jobs {
        release_unfinished(conn, &job)?;
    }
    Ok(())
}

/// One mini-batch of a plan: its slice of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBatch {
    pub manifest_offset: u64,
    pub manifest_len: u64,
    pub files: u64,
}

/// Records a job's plan and queues it. Re-planning (after a crash while Preparing) replaces the old plan.
pub fn job_plan(conn: &mut Connection, name: &str, files_total: u64, batches: &[PlannedBatch]) -> StoreResult<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let status: Option<String> = tx.row("SELECT status FROM jobs WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    if status.as_deref() != Some(JobStatus::Preparing.as_str()) {
        return Ok(false);
    }
    tx.exec("DELETE FROM batches WHERE job = ?1", [name])?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO batches (job, idx, state, manifest_offset, manifest_len, files) VALUES (?1, ?2, 'pending', ?3, ?4, ?5)",
        )?;
        for (idx, b) in batches.iter().enumerate() {
            stmt.execute(params![name, idx as i64, b.manifest_offset as i64, b.manifest_len as i64, b.files as i64])?;
        }
    }
    tx.exec(
        "UPDATE jobs SET files_total = ?2, batches_total = ?3, status = 'Queued' WHERE name = ?1",
        params![name, files_total as i64, batches.len() as i64],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Leases granted in one answer: one or more mini-batches of one job.
#[derive(Debug, Clone)]
pub struct LeaseGrant {
    pub job: String,
    pub record: JobRecord,
    /// In index order; never empty.
    pub batches: Vec<GrantedBatch>,
}

/// One leased mini-batch.
#[derive(Debug, Clone)]
pub struct GrantedBatch {
    pub lease_id: String,
    pub idx: u64,
    pub attempt: u32,
    pub manifest_offset: u64,
    pub manifest_len: u64,
}

pub enum LeaseAnswer {
    Granted(LeaseGrant),
    /// Nothing to lease now; `job_done` when the requested job will never have work again.
    Nothing {
        job_done: bool,
    },
}

/// Leases the lowest pending mini-batch of the oldest job that accepts leases (optionally one job, and
/// only jobs on `compute`). The lease lasts `timeout + grace` from now and is renewed by heartbeats.
pub fn lease_next(
    conn: &mut Connection,
    job: Option<&str>,
    compute: Option<&str>,
    node: &str,
    process: u32,
    grace_ms: i64,
    host_can_sandbox: bool,
) -> StoreResult<LeaseAnswer> {
    lease_several(conn, &LeaseAsk { job, compute, node, process, grace_ms, host_can_sandbox, want: 1, holding: 0 })
}

/// Who asks for leases, and how many.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    pub job: Option<&'a str>,
    pub compute: Option<&'a str>,
    pub node: &'a str,
    pub process: u32,
    pub grace_ms: i64,
    pub host_can_sandbox: bool,
    /// How many mini-batches the worker slot would take at once.
    pub want: u32,
    /// How many it still holds (see `LeaseRequest::holding`).
    pub holding: u32,
}

/// Leases up to `ask.want` of the lowest pending mini-batches of the oldest job that accepts leases, in
/// one transaction (see [`lease_next`]). A grant never holds more than a share of the job's remaining
/// mini-batches (half of them spread over the job's worker slots), so that at the end of a job no slot
/// sits on work another one could be doing; a slot that still holds some is granted more only out of
/// the job's pending mini-batches, the same share of them, and otherwise nothing.
pub fn lease_several(conn: &mut Connection, ask: &LeaseAsk<'_>) -> StoreResult<LeaseAnswer> {
    let LeaseAsk { job, compute, node, process, grace_ms, host_can_sandbox, want, holding } = *ask;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The job first (few run at once), then its lowest pending mini-batches straight off the
    // (job, state, idx) index: a single join ordered by (seq, idx) would sort every pending
    // mini-batch on every lease.
    let candidate_job: Option<String> = tx
        .row(
            "SELECT j.name FROM jobs j
             WHERE j.status IN ('Queued', 'Running') AND (?1 IS NULL OR j.name = ?1) AND (?2 IS NULL OR j.compute = ?2)
               AND (?3 OR json_extract(j.record, '$.run.onnx_model') IS NOT NULL
                    OR json_extract(j.record, '$.run.sandbox') = 'none')
               AND EXISTS (SELECT 1 FROM batches b WHERE b.job = j.name AND b.state = 'pending')
             ORDER BY j.seq LIMIT 1",
            params![job, compute, host_can_sandbox],
            |r| r.get(0),
        )
        .optional()?;
    let Some(job_name) = candidate_job else {
        let job_done = match job {
            Some(name) => {
                let status: Option<String> =
                    tx.row("SELECT status FROM jobs WHERE name = ?1", [name], |r| r.get(0)).optional()?;
                match status.and_then(|s| JobStatus::parse(&s)) {
                    None => true,
                    Some(s) if !s.accepts_leases() && s != JobStatus::NotStarted && s != JobStatus::Preparing => true,
                    Some(_) => {
                        let open: i64 = tx.row(
                            "SELECT COUNT(*) FROM batches WHERE job = ?1 AND state IN ('pending', 'leased')",
                            [name],
                            |r| r.get(0),
                        )?;
                        let planned: i64 =
                            tx.row("SELECT batches_total FROM jobs WHERE name = ?1", [name], |r| r.get(0))?;
                        planned > 0 && open == 0
                    }
                }
            }
            None => false,
        };
        return Ok(LeaseAnswer::Nothing { job_done });
    };
    let row = job_get_tx(&tx, &job_name)?.expect("the job was just selected");
    let c = &row.counters;
    let remaining = c.batches_total.saturating_sub(c.batches_succeeded + c.batches_failed);
    let slots =
        u64::from(row.record.settings.instance_count) * u64::from(row.record.settings.max_concurrency_per_instance);
    let spread = 2 * slots.max(1);
    let want = u64::from(want.clamp(1, cove_api::worker::MAX_BATCHES_PER_GRANT));
    let count = if holding == 0 {
        want.min((remaining / spread).max(1))
    } else {
        // Counted only as far as it can matter, so a job of many mini-batches costs no more to ask.
        let pending: i64 = tx.row(
            "SELECT COUNT(*) FROM (SELECT 1 FROM batches WHERE job = ?1 AND state = 'pending' LIMIT ?2)",
            params![job_name, (spread * want) as i64],
            |r| r.get(0),
        )?;
        want.min(pending as u64 / spread)
    };
    if count == 0 {
        return Ok(LeaseAnswer::Nothing { job_done: false });
    }
    let pending: Vec<(i64, u32, i64, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT idx, attempts, manifest_offset, manifest_len FROM batches
             WHERE job = ?1 AND state = 'pending' ORDER BY idx LIMIT ?2",
        )?;
        let rows =
            stmt.query_map(params![job_name, count as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let now = now_ms();
    let deadline = now + row.record.settings.retry_settings.timeout_secs as i64 * 1000 + grace_ms;
    let mut grants = Vec::with_capacity(pending.len());
    for (idx, attempts, offset, len) in pending {
        let attempt = attempts + 1;
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        tx.exec(
            "UPDATE batches SET state = 'leased', attempts = ?3, lease_id = ?4, lease_deadline_ms = ?5
             WHERE job = ?1 AND idx = ?2",
            params![job_name, idx, attempt, lease_id, deadline],
        )?;
        tx.exec(
            "INSERT INTO attempts (lease_id, job, idx, attempt, node, process, started_ms, compute)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![lease_id, job_name, idx, attempt, node, process, now, compute],
        )?;
        grants.push(GrantedBatch {
            lease_id,
            idx: idx as u64,
            attempt,
            manifest_offset: offset as u64,
            manifest_len: len as u64,
        });
    }
    tx.exec(
        "UPDATE jobs SET status = 'Running', started_ms = COALESCE(started_ms, ?2) WHERE name = ?1 AND status = 'Queued'",
        params![job_name, now],
    )?;
    tx.commit()?;
    Ok(LeaseAnswer::Granted(LeaseGrant { job: job_name, record: row.record, batches: grants }))
}

/// The current lease of a mini-batch, looked up by lease id.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub job: String,
    /// The compute cluster the job runs on: only its workers may use the lease.
    pub compute: String,
    pub idx: u64,
    pub attempt: u32,
    pub manifest_offset: u64,
    pub manifest_len: u64,
    pub record: JobRecord,
}

/// Returns the lease if it is still the mini-batch's current one and its job still runs.
pub fn lease_current(conn: &Connection, lease_id: &str) -> StoreResult<Option<LeaseInfo>> {
    let found: Option<(String, i64, u32, i64, i64)> = conn
        .row(
            "SELECT b.job, b.idx, b.attempts, b.manifest_offset, b.manifest_len FROM batches b
             JOIN jobs j ON j.name = b.job
             WHERE b.lease_id = ?1 AND b.state = 'leased' AND j.status IN ('Queued', 'Running')",
            [lease_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((job, idx, attempt, offset, len)) = found else {
        return Ok(None);
    };
    let row = job_get_tx(conn, &job)?.expect("joined above");
    let (compute, record) = (row.compute, row.record);
    Ok(Some(LeaseInfo {
        job,
        compute,
        idx: idx as u64,
        attempt,
        manifest_offset: offset as u64,
        manifest_len: len as u64,
        record,
    }))
}

/// The worker node and process a lease was granted to.
pub fn lease_holder(conn: &Connection, lease_id: &str) -> StoreResult<Option<(String, u32)>> {
    Ok(conn
        .row("SELECT node, process FROM attempts WHERE lease_id = ?1", [lease_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The compute cluster of the job a lease (current or not) was granted for.
pub fn lease_compute(conn: &Connection, lease_id: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .row("SELECT j.compute FROM attempts a JOIN jobs j ON j.name = a.job WHERE a.lease_id = ?1", [lease_id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Extends a current lease to `timeout + grace` from now; returns false for a lease that is no longer
/// current or not one of `compute`'s.
pub fn lease_heartbeat(conn: &Connection, lease_id: &str, compute: &str, grace_ms: i64) -> StoreResult<bool> {
    let Some(info) = lease_current(conn, lease_id)? else {
        return Ok(false);
    };
    if info.compute != compute {
        return Ok(false);
    }
    let deadline = now_ms() + info.record.settings.retry_settings.timeout_secs as i64 * 1000 + grace_ms;
    conn.exec(
        "UPDATE batches SET lease_deadline_ms = ?2 WHERE lease_id = ?1 AND state = 'leased'",
        params![lease_id, deadline],
    )?;
    Ok(true)
}

/// Records that the attempt's part was stored, while the attempt is still open: a part that arrives
/// after its attempt ended changes nothing.
pub fn attempt_mark_part(conn: &Connection, lease_id: &str) -> StoreResult<()> {
    conn.exec("UPDATE attempts SET part_uploaded = 1 WHERE lease_id = ?1 AND outcome IS NULL", [lease_id])?;
    Ok(())
}

/// Whether the attempt of `lease_id` is still open: no outcome recorded, its mini-batch still leased by
/// it, and its job still taking leases. Only an open attempt's report may store a part.
fn attempt_open(conn: &Connection, lease_id: &str) -> StoreResult<bool> {
    Ok(conn.row(
        "SELECT EXISTS (SELECT 1 FROM attempts a JOIN batches b ON b.job = a.job AND b.idx = a.idx
                        JOIN jobs j ON j.name = a.job
                        WHERE a.lease_id = ?1 AND a.outcome IS NULL AND b.state = 'leased' AND b.lease_id = ?1
                          AND j.status IN ('Queued', 'Running'))",
        [lease_id],
        |r| r.get(0),
    )?)
}

/// Counts a file the attempt's script wrote to `AZUREML_BI_OUTPUT_PATH`, staged with the attempt.
pub fn attempt_add_output(conn: &Connection, lease_id: &str, bytes: u64) -> StoreResult<()> {
    conn.exec(
        "UPDATE attempts SET outputs = outputs + 1, output_bytes = output_bytes + ?2 WHERE lease_id = ?1",
        rusqlite::params![lease_id, bytes as i64],
    )?;
    Ok(())
}

/// How many script-written files an attempt has staged, and their bytes.
pub fn attempt_outputs(conn: &Connection, lease_id: &str) -> StoreResult<(u64, u64)> {
    let (files, bytes): (i64, i64) = conn
        .row("SELECT outputs, output_bytes FROM attempts WHERE lease_id = ?1", [lease_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, 0));
    Ok((files as u64, bytes as u64))
}

/// Where an attempt's script-written files are staged in Cove's own store until the job completes.
pub fn staged_outputs_prefix(job: &str, lease_id: &str) -> String {
    format!("{}/{lease_id}", staged_outputs_root(job))
}

/// Where all of a job's script-written files are staged.
pub fn staged_outputs_root(job: &str) -> String {
    format!("jobs/{job}/outputs")
}

/// The committed attempts that staged script-written files: (mini-batch index, lease), in index order.
pub fn committed_outputs(conn: &Connection, job: &str) -> StoreResult<Vec<(u64, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, lease_id FROM attempts WHERE job = ?1 AND outcome = 'succeeded' AND outputs > 0 ORDER BY idx",
    )?;
    let rows = stmt.query_map([job], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Turns a finalizing job Completed and records what it published, in one transaction; returns false
/// (recording nothing) when the job is no longer finalizing.
pub fn job_complete(conn: &mut Connection, name: &str, published: &[(String, u64)]) -> StoreResult<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !job_transition(&tx, name, &[JobStatus::Finalizing], JobStatus::Completed, None)? {
        return Ok(false);
    }
    tx.exec("DELETE FROM published WHERE job = ?1", [name])?;
    for (path, size) in published {
        tx.exec("INSERT INTO published (job, path, size) VALUES (?1, ?2, ?3)", params![name, path, *size as i64])?;
    }
    tx.commit()?;
    Ok(true)
}

/// The key of the part object an attempt uploads.
pub fn part_key(job: &str, idx: u64, lease_id: &str) -> String {
    format!("{}/{idx:09}.{lease_id}", parts_prefix(job))
}

/// Where a job's result parts are kept as objects.
pub fn parts_prefix(job: &str) -> String {
    format!("jobs/{job}/parts")
}

/// Forgets the result parts of an ended `job`: deletes those kept in the state store, and clears what its
/// mini-batches committed (its part objects are deleted just before).
pub fn parts_forget(conn: &mut Connection, job: &str) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM part_bodies WHERE lease_id IN (SELECT lease_id FROM attempts WHERE job = ?1)", [job])?;
    tx.execute("UPDATE batches SET committed_part = NULL WHERE job = ?1 AND committed_part IS NOT NULL", [job])?;
    tx.commit()?;
    Ok(())
}

/// Ended jobs whose result parts were not forgotten (the control plane stopped before it got to them).
pub fn jobs_with_parts_left(conn: &Connection) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT b.job FROM batches b JOIN jobs j ON j.name = b.job
         WHERE b.committed_part IS NOT NULL AND j.status IN ('Completed', 'Failed', 'Canceled')",
    )?;
    let jobs = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(jobs)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteResult {
    pub committed: bool,
    pub job_active: bool,
    /// The job's new status when this report ended or finalized it.
    pub job_status: Option<JobStatus>,
    /// The job the lease belonged to, when the lease exists.
    pub job: Option<String>,
}

/// Applies the outcome of an attempt. Only the mini-batch's current lease counts; a report for any
/// other lease (expired, superseded, or of a job that no longer runs) is recorded and discarded.
pub fn lease_complete(
    conn: &mut Connection,
    lease_id: &str,
    outcome: &AttemptOutcome,
    pid: Option<u32>,
) -> StoreResult<CompleteResult> {
    lease_complete_with(conn, lease_id, outcome, pid, None)
}

/// [`lease_complete`], also recording what the attempt ran under.
pub fn lease_complete_with(
    conn: &mut Connection,
    lease_id: &str,
    outcome: &AttemptOutcome,
    pid: Option<u32>,
    isolation: Option<&str>,
) -> StoreResult<CompleteResult> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let result = complete_in(&tx, lease_id, outcome, pid, isolation)?;
    tx.commit()?;
    Ok(result)
}

/// One attempt of a worker's report (see [`reports_apply`]).
#[derive(Debug, Clone)]
pub struct AttemptReported {
    pub lease_id: String,
    pub outcome: AttemptOutcome,
    pub pid: u32,
    pub isolation: Option<String>,
    /// The part was stored under the lease's key before the report, with its audit entry.
    pub part_audit: Option<cove_api::AuditEntry>,
    /// A small part, stored with the report in the same transaction (see [`INLINE_PART_LIMIT`]).
    pub inline_part: Option<bytes::Bytes>,
}

/// Parts up to this size are kept in the state store with their attempt (`part_bodies`) rather than as
/// an object each: creating a file per mini-batch cost more than everything else the control plane
/// does for a mini-batch of a few small files.
pub const INLINE_PART_LIMIT: usize = 64 * 1024;

/// The prefix of a committed part kept in the state store; the lease id follows.
pub const INLINE_PART: &str = "inline:";

/// Who holds a lease (current or not), and whether it is still current.
#[derive(Debug, Clone)]
pub struct LeaseOwner {
    pub job: String,
    pub idx: u64,
    pub compute: String,
    pub current: bool,
}

/// The job, mini-batch and compute of a lease ever granted, and whether it is still current.
pub fn lease_owner(conn: &Connection, lease_id: &str) -> StoreResult<Option<LeaseOwner>> {
    Ok(conn
        .row(
            "SELECT a.job, a.idx, j.compute,
                    b.lease_id IS a.lease_id AND b.state = 'leased' AND j.status IN ('Queued', 'Running')
             FROM attempts a JOIN jobs j ON j.name = a.job JOIN batches b ON b.job = a.job AND b.idx = a.idx
             WHERE a.lease_id = ?1",
            [lease_id],
            |r| {
                Ok(LeaseOwner {
                    job: r.get(0)?,
                    idx: r.get::<_, i64>(1)? as u64,
                    compute: r.get(2)?,
                    current: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Applies the reports of a worker's attempts in one transaction, in order: each as
/// [`lease_complete_with`] does, after marking its stored part and appending that upload's audit entry.
pub fn reports_apply(conn: &mut Connection, reports: &[AttemptReported]) -> StoreResult<Vec<CompleteResult>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(reports.len());
    for r in reports {
        if let Some(entry) = &r.part_audit {
            // Checked first, then written: a report of an attempt that already ended (a replay, a
            // duplicate, one that lost a race) never touches the part its attempt committed.
            if attempt_open(&tx, &r.lease_id)? {
                if let Some(body) = &r.inline_part {
                    tx.exec(
                        "INSERT INTO part_bodies (lease_id, body) VALUES (?1, ?2)",
                        params![r.lease_id, &body[..]],
                    )?;
                }
                attempt_mark_part(&tx, &r.lease_id)?;
                super::audit_append(&tx, entry)?;
            } else {
                let refused = AuditEntry { outcome: format!("refused: {}", late_report(&r.lease_id)), ..entry.clone() };
                super::audit_append(&tx, &refused)?;
            }
        }
        results.push(complete_in(&tx, &r.lease_id, &r.outcome, Some(r.pid), r.isolation.as_deref())?);
    }
    tx.commit()?;
    Ok(results)
}

/// Why the part of a report was not stored.
pub fn late_report(lease_id: &str) -> String {
    format!("lease `{lease_id}` is not current (its attempt ended, or its job did); the part it brought was not stored")
}

/// [`lease_complete_with`] within the caller's transaction.
fn complete_in(
    tx: &Connection,
    lease_id: &str,
    outcome: &AttemptOutcome,
    pid: Option<u32>,
    isolation: Option<&str>,
) -> StoreResult<CompleteResult> {
    let now = now_ms();
    if let Some(iso) = isolation {
        tx.exec("UPDATE attempts SET isolation = ?2 WHERE lease_id = ?1 AND outcome IS NULL", params![lease_id, iso])?;
    }
    let attempt: Option<(String, i64, u32, Option<String>, bool)> = tx
        .row("SELECT job, idx, attempt, outcome, part_uploaded FROM attempts WHERE lease_id = ?1", [lease_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((job, idx, attempt_no, previous, part_uploaded)) = attempt else {
        return Ok(CompleteResult { committed: false, job_active: false, job_status: None, job: None });
    };
    let row = job_get_tx(&tx, &job)?.expect("attempts reference existing jobs");
    let job_active = row.status.accepts_leases();
    let current: bool = tx.row(
        "SELECT EXISTS (SELECT 1 FROM batches WHERE job = ?1 AND idx = ?2 AND state = 'leased' AND lease_id = ?3)",
        params![job, idx, lease_id],
        |r| r.get(0),
    )?;
    let (outcome_name, reason, _, _) = describe(outcome);
    if previous.is_some() || !current || !job_active {
        if previous.is_none() {
            tx.exec(
                "UPDATE attempts SET finished_ms = ?2, outcome = ?3, reason = ?4, pid = ?5 WHERE lease_id = ?1",
                params![lease_id, now, format!("discarded:{outcome_name}"), reason, pid],
            )?;
        }
        return Ok(CompleteResult { committed: false, job_active, job_status: None, job: Some(job) });
    }
    // A success without its part cannot be committed: treat it as the failure it is.
    let needs_part = row.record.output_file_name.is_some();
    let outcome = match outcome {
        AttemptOutcome::Succeeded { .. } if needs_part && !part_uploaded => {
            AttemptOutcome::Failed { reason: "the worker reported success but uploaded no output part".into() }
        }
        other => other.clone(),
    };
    let outcome = &outcome;
    let (outcome_name, reason, items_ok, items_failed) = describe(outcome);
    tx.exec(
        "UPDATE attempts SET finished_ms = ?2, outcome = ?3, reason = ?4, pid = ?5, items_ok = ?6, items_failed = ?7
         WHERE lease_id = ?1",
        params![lease_id, now, outcome_name, reason, pid, items_ok as i64, items_failed as i64],
    )?;
    let files: i64 =
        tx.row("SELECT files FROM batches WHERE job = ?1 AND idx = ?2", params![job, idx], |r| r.get(0))?;
    let mut committed = false;
    match after_attempt(attempt_no, row.record.settings.retry_settings.max_retries, outcome) {
        BatchNext::Commit => {
            let inline: bool =
                tx.row("SELECT EXISTS (SELECT 1 FROM part_bodies WHERE lease_id = ?1)", [lease_id], |r| r.get(0))?;
            let part = needs_part.then(|| match inline {
                true => format!("{INLINE_PART}{lease_id}"),
                false => part_key(&job, idx as u64, lease_id),
            });
            tx.exec(
                "UPDATE batches SET state = 'succeeded', lease_id = NULL, lease_deadline_ms = NULL, committed_part = ?3,
                 items_ok = ?4, items_failed = ?5, error = NULL WHERE job = ?1 AND idx = ?2",
                params![job, idx, part, items_ok as i64, items_failed as i64],
            )?;
            tx.exec(
                "UPDATE jobs SET batches_succeeded = batches_succeeded + 1, items_ok = items_ok + ?2,
                 items_failed = items_failed + ?3 WHERE name = ?1",
                params![job, items_ok as i64, items_failed as i64],
            )?;
            committed = true;
        }
        BatchNext::Retry => {
            tx.exec(
                "UPDATE batches SET state = 'pending', lease_id = NULL, lease_deadline_ms = NULL, error = ?3
                 WHERE job = ?1 AND idx = ?2",
                params![job, idx, reason],
            )?;
        }
        next @ (BatchNext::Release | BatchNext::Requeue) => {
            tx.exec(
                "UPDATE batches SET state = 'pending', lease_id = NULL, lease_deadline_ms = NULL, attempts = attempts - 1
                 WHERE job = ?1 AND idx = ?2",
                params![job, idx],
            )?;
            if next == BatchNext::Release {
                tx.exec(
                    "UPDATE jobs SET init_failures = init_failures + 1, error = ?2 WHERE name = ?1",
                    params![job, reason],
                )?;
            }
        }
        BatchNext::GiveUp { reason } => {
            tx.exec(
                "UPDATE batches SET state = 'failed', lease_id = NULL, lease_deadline_ms = NULL, items_failed = ?3, error = ?4
                 WHERE job = ?1 AND idx = ?2",
                params![job, idx, files, reason],
            )?;
            tx.exec(
                "UPDATE jobs SET batches_failed = batches_failed + 1, items_failed = items_failed + ?2 WHERE name = ?1",
                params![job, files],
            )?;
        }
    }
    let job_status = apply_verdict(tx, &job)?;
    Ok(CompleteResult {
        committed,
        job_active: job_status.is_none_or(|s| s.accepts_leases()),
        job_status,
        job: Some(job),
    })
}

/// Moves a running job to Finalizing or Failed when its counters say so.
fn apply_verdict(conn: &Connection, job: &str) -> StoreResult<Option<JobStatus>> {
    let row = job_get_tx(conn, job)?.expect("caller holds the job");
    if !row.status.accepts_leases() {
        return Ok(None);
    }
    match job_verdict(&row.counters, &row.record.policy()) {
        JobVerdict::Continue => Ok(None),
        JobVerdict::Finalize => {
            conn.exec("UPDATE jobs SET status = 'Finalizing' WHERE name = ?1", [job])?;
            Ok(Some(JobStatus::Finalizing))
        }
        JobVerdict::Fail { reason } => {
            let reason = match (&row.error, reason.starts_with("init()")) {
                (Some(last), true) => format!("{reason}; the last failure: {last}"),
                _ => reason,
            };
            conn.exec(
                "UPDATE jobs SET status = 'Failed', error = ?2, finished_ms = ?3 WHERE name = ?1",
                params![job, reason, now_ms()],
            )?;
            release_unfinished(conn, job)?;
            Ok(Some(JobStatus::Failed))
        }
    }
}

fn describe(outcome: &AttemptOutcome) -> (&'static str, Option<String>, u64, u64) {
    match outcome {
        AttemptOutcome::Succeeded { items_ok, items_failed } => ("succeeded", None, *items_ok, *items_failed),
        AttemptOutcome::Failed { reason } => ("failed", Some(reason.clone()), 0, 0),
        AttemptOutcome::TimedOut => ("timed_out", Some("run() timed out".into()), 0, 0),
        AttemptOutcome::LeaseExpired => ("lease_expired", Some("lease expired".into()), 0, 0),
        AttemptOutcome::InitFailed { reason } => ("init_failed", Some(reason.clone()), 0, 0),
        AttemptOutcome::Interrupted => {
            ("interrupted", Some("a planned stop of the control plane ended the lease; not counted".into()), 0, 0)
        }
    }
}

/// Every lease still open, of any job.
pub fn leases_open(conn: &Connection) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT lease_id FROM batches WHERE state = 'leased'")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Leases whose deadline has passed.
pub fn leases_expired(conn: &Connection, now: i64) -> StoreResult<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT lease_id FROM batches WHERE state = 'leased' AND lease_deadline_ms < ?1")?;
    let rows = stmt.query_map([now], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The earliest lease deadline, so the reaper sleeps exactly until it.
pub fn next_lease_deadline(conn: &Connection) -> StoreResult<Option<i64>> {
    Ok(conn.row("SELECT MIN(lease_deadline_ms) FROM batches WHERE state = 'leased'", [], |r| r.get(0))?)
}

/// Cancels a job. A finalizing job is only asked to stop, so that the finalizer never publishes it.
pub fn job_cancel(conn: &Connection, name: &str) -> StoreResult<Option<JobStatus>> {
    let Some(row) = job_get_tx(conn, name)? else {
        return Ok(None);
    };
    if row.status.is_terminal() {
        return Ok(Some(row.status));
    }
    let to = if row.status == JobStatus::Finalizing { JobStatus::CancelRequested } else { JobStatus::Canceled };
    let finished = to.is_terminal().then(now_ms);
    atomically(conn, || {
        conn.exec(
            "UPDATE jobs SET status = ?2, error = 'canceled by user', finished_ms = ?3 WHERE name = ?1",
            params![name, to.as_str(), finished],
        )?;
        if to.is_terminal() {
            release_unfinished(conn, name)?;
        }
        Ok(Some(to))
    })
}

/// The committed part of every succeeded mini-batch, in mini-batch order.
pub fn committed_parts(conn: &Connection, job: &str) -> StoreResult<Vec<(u64, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, committed_part FROM batches WHERE job = ?1 AND state = 'succeeded' AND committed_part IS NOT NULL ORDER BY idx",
    )?;
    let rows = stmt.query_map([job], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the output's assembly needs from mini-batch `from` on (at most `limit` of them, in index
/// order): the job's status and mini-batch count, and each mini-batch's state and committed part.
pub fn assembly_batches(
    conn: &Connection,
    job: &str,
    from: u64,
    limit: u64,
) -> StoreResult<Option<(String, u64, Vec<(u64, String, Option<String>)>)>> {
    let Some((status, total)) = conn
        .row("SELECT status, batches_total FROM jobs WHERE name = ?1", [job], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT idx, state, committed_part FROM batches WHERE job = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![job, from as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })?;
    Ok(Some((status, total, rows.collect::<Result<_, _>>()?)))
}

/// The bodies of parts kept in the state store, by lease id (those of `leases` that have one).
pub fn part_bodies(conn: &Connection, leases: &[&str]) -> StoreResult<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached("SELECT lease_id, body FROM part_bodies WHERE lease_id = ?1")?;
    let mut out = Vec::with_capacity(leases.len());
    for lease in leases {
        if let Some(found) = stmt.query_row([lease], |r| Ok((r.get(0)?, r.get(1)?))).optional()? {
            out.push(found);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct BatchRow {
    pub idx: u64,
    pub state: String,
    pub attempts: u32,
    pub manifest_offset: u64,
    pub manifest_len: u64,
    pub files: u64,
    pub error: Option<String>,
}

pub fn batches_in_state(conn: &Connection, job: &str, state: &str) -> StoreResult<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, state, attempts, manifest_offset, manifest_len, files, error FROM batches
         WHERE job = ?1 AND state = ?2 ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![job, state], |r| {
        Ok(BatchRow {
            idx: r.get::<_, i64>(0)? as u64,
            state: r.get(1)?,
            attempts: r.get(2)?,
            manifest_offset: r.get::<_, i64>(3)? as u64,
            manifest_len: r.get::<_, i64>(4)? as u64,
            files: r.get::<_, i64>(5)? as u64,
            error: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts a job's mini-batches by state. Only the leased ones are counted (few, off the index); the
/// others follow from the job's counters, which change in the same transactions as the states, so
/// polling a job costs the same whatever its size.
pub fn batch_state_counts(conn: &Connection, job: &str) -> StoreResult<Vec<(String, u64)>> {
    let leased: i64 =
        conn.row("SELECT COUNT(*) FROM batches WHERE job = ?1 AND state = 'leased'", [job], |r| r.get(0))?;
    let (total, succeeded, failed, status): (i64, i64, i64, String) = conn
        .row("SELECT batches_total, batches_succeeded, batches_failed, status FROM jobs WHERE name = ?1", [job], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?
        .unwrap_or_default();
    // An ended job has nothing pending or running: what did not run to the end never will.
    let ended = JobStatus::parse(&status).is_some_and(JobStatus::is_terminal);
    let unfinished = (total - succeeded - failed - leased).max(0);
    let (pending, not_run) = if ended { (0, unfinished + leased) } else { (unfinished, 0) };
    let leased = if ended { 0 } else { leased };
    Ok([("pending", pending), ("leased", leased), ("succeeded", succeeded), ("failed", failed), ("not_run", not_run)]
        .into_iter()
        .map(|(s, n)| (s.to_string(), n as u64))
        .collect())
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub idx: u64,
    pub attempt: u32,
    pub node: String,
    pub process: u32,
    pub pid: Option<u32>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub items_ok: u64,
    pub items_failed: u64,
    pub isolation: Option<String>,
}

/// A job's attempts in mini-batch order, at most `limit` of them (all with `None`).
pub fn attempts_of(conn: &Connection, job: &str, limit: Option<u32>) -> StoreResult<Vec<AttemptRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, attempt, node, process, pid, started_ms, finished_ms, outcome, reason, items_ok, items_failed, isolation
         FROM attempts WHERE job = ?1 ORDER BY idx, attempt, started_ms LIMIT ?2",
    )?;
    let limit = limit.map_or(-1, i64::from);
    let rows = stmt.query_map(params![job, limit], |r| {
        Ok(AttemptRow {
            idx: r.get::<_, i64>(0)? as u64,
            attempt: r.get(1)?,
            node: r.get(2)?,
            process: r.get(3)?,
            pid: r.get(4)?,
            started_ms: r.get(5)?,
            finished_ms: r.get(6)?,
            outcome: r.get(7)?,
            reason: r.get(8)?,
            items_ok: r.get::<_, i64>(9)? as u64,
            items_failed: r.get::<_, i64>(10)? as u64,
            isolation: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records that the compute backend submitted the job's workers as `reference`.
pub fn job_set_compute_ref(conn: &Connection, name: &str, reference: &str) -> StoreResult<()> {
    conn.exec(
        "UPDATE jobs SET compute_ref = ?2, compute_submissions = compute_submissions + 1 WHERE name = ?1",
        params![name, reference],
    )?;
    Ok(())
}

pub fn job_set_compute_state(conn: &Connection, name: &str, state: &str) -> StoreResult<()> {
    conn.exec("UPDATE jobs SET compute_state = ?2 WHERE name = ?1", params![name, state])?;
    Ok(())
}

/// The current leases of a job held by workers on `node` (to expire when the node is lost).
pub fn leases_on_node(conn: &Connection, job: &str, node: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT b.lease_id FROM batches b JOIN attempts a ON a.lease_id = b.lease_id
         WHERE b.job = ?1 AND b.state = 'leased' AND a.node = ?2",
    )?;
    let rows = stmt.query_map(params![job, node], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cove_api::worker::RunSpec;
    use cove_api::{InputType, JobInput};
    use cove_spec::{DeploymentSettings, LoggingLevel, OutputAction};

    fn conn() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::migrations::migrate(&mut c).unwrap();
        c
    }

    fn record(max_retries: u32) -> JobRecord {
        let mut settings = DeploymentSettings::default();
        settings.retry_settings.max_retries = max_retries;
        JobRecord {
            input: JobInput { uri: "cove://ws/in".into(), input_type: InputType::UriFolder },
            output_uri: "cove://ws/out".into(),
            output_file_name: Some("predictions.csv".into()),
            run: RunSpec {
                snapshot: "s".into(),
                scoring_script: Some("score.py".into()),
                onnx_model: None,
                model_dir_name: "model".into(),
                python: "python3".into(),
                environment_variables: Default::default(),
                logging_level: LoggingLevel::Info,
                output_action: OutputAction::AppendRow,
                timeout_secs: 30,
                limits: Default::default(),
                sandbox: Default::default(),
                egress: Vec::new(),
                environment: None,
                builtin_script: None,
            },
            settings,
            model_uri: "cove://ws/model".into(),
            code_uri: None,
            inputs_in_place: None,
            inputs_direct: false,
            files: None,
        }
    }

    fn output_at(job: &str) -> Location {
        Location {
            datastore: "ds".into(),
            path: format!("azureml/{job}/score"),
            kind: crate::LocationKind::Output,
            owner: job.into(),
            endpoint: Some("ep".into()),
        }
    }

    /// Two jobs can never be given one output location, nor one inside the other's.
    #[test]
    fn an_output_location_belongs_to_one_job() {
        let mut c = conn();
        let job = |name: &str, path: &str| NewJob {
            name: name.into(),
            endpoint: "ep".into(),
            deployment: "blue".into(),
            compute: "local".into(),
            record: record(3),
            idempotency_key: None,
            output: Location { path: path.into(), ..output_at(name) },
        };
        assert!(matches!(job_insert(&mut c, job("a", "out/a")).unwrap(), JobInsert::Created(_)));
        for path in ["out/a", "out/a/inner", "out", ""] {
            match job_insert(&mut c, job("b", path)).unwrap() {
                JobInsert::OutputTaken(held) => assert_eq!(held.owner, "a"),
                _ => panic!("{path}: expected the location to be taken"),
            }
        }
        assert!(matches!(job_insert(&mut c, job("b", "out/ab")).unwrap(), JobInsert::Created(_)));
    }

    /// A job with `batches` planned mini-batches of one file each.
    fn planned_job(c: &mut Connection, name: &str, batches: u64, max_retries: u32) {
        let job = NewJob {
            name: name.into(),
            endpoint: "ep".into(),
            deployment: "blue".into(),
            compute: "local".into(),
            record: record(max_retries),
            idempotency_key: None,
            output: output_at(name),
        };
        assert!(matches!(job_insert(c, job).unwrap(), JobInsert::Created(_)));
        assert!(job_transition(c, name, &[JobStatus::NotStarted], JobStatus::Preparing, None).unwrap());
        let plan: Vec<PlannedBatch> =
            (0..batches).map(|i| PlannedBatch { manifest_offset: i * 2, manifest_len: 2, files: 1 }).collect();
        assert!(job_plan(c, name, batches, &plan).unwrap());
    }

    fn lease(c: &mut Connection, job: &str) -> GrantedBatch {
        match lease_next(c, Some(job), None, "n", 0, 0, true).unwrap() {
            LeaseAnswer::Granted(g) => {
                assert_eq!(g.batches.len(), 1);
                g.batches.into_iter().next().unwrap()
            }
            LeaseAnswer::Nothing { .. } => panic!("expected a lease"),
        }
    }

    fn lease_up_to(c: &mut Connection, job: &str, want: u32) -> Vec<GrantedBatch> {
        lease_holding(c, job, want, 0)
    }

    fn lease_holding(c: &mut Connection, job: &str, want: u32, holding: u32) -> Vec<GrantedBatch> {
        let ask = LeaseAsk {
            job: Some(job),
            compute: None,
            node: "n",
            process: 0,
            grace_ms: 0,
            host_can_sandbox: true,
            want,
            holding,
        };
        match lease_several(c, &ask).unwrap() {
            LeaseAnswer::Granted(g) => g.batches,
            LeaseAnswer::Nothing { .. } => Vec::new(),
        }
    }

    #[test]
    fn several_mini_batches_are_leased_at_once_but_never_more_than_a_share_of_what_remains() {
        let mut c = conn();
        planned_job(&mut c, "j", 40, 3);
        let slots = {
            let r = record(3).settings;
            u64::from(r.instance_count) * u64::from(r.max_concurrency_per_instance)
        };
        // A share is half of the remaining mini-batches spread over the job's slots.
        let share = (40 / (2 * slots)).max(1) as usize;
        let first = lease_up_to(&mut c, "j", 1000);
        assert_eq!(first.len(), share.min(cove_api::worker::MAX_BATCHES_PER_GRANT as usize));
        assert_eq!(first.iter().map(|b| b.idx).collect::<Vec<_>>(), (0..first.len() as u64).collect::<Vec<_>>());
        let three = lease_up_to(&mut c, "j", 3);
        assert_eq!(
            three.iter().map(|b| b.idx).collect::<Vec<_>>(),
            (first.len() as u64..first.len() as u64 + 3).collect::<Vec<_>>()
        );
        // Reported together, in one transaction: each mini-batch committed once, counted once.
        let reports: Vec<AttemptReported> = first
            .iter()
            .chain(&three)
            .map(|b| reported(&b.lease_id, (b.idx % 2 == 0).then(|| format!("row of {}\n", b.idx))))
            .collect();
        let results = reports_apply(&mut c, &reports).unwrap();
        assert!(results.iter().all(|r| r.committed && r.job_active), "{results:?}");
        let done = (first.len() + 3) as u64;
        assert_eq!(job_get(&c, "j").unwrap().unwrap().counters.batches_succeeded, done);
        // A report of a lease already reported changes nothing: not its counters, and not the part its
        // attempt committed, whatever bytes the replay brings; the replay is audited as refused.
        let mut replay = reports[0].clone();
        replay.inline_part = Some(bytes::Bytes::from_static(b"forged rows\n"));
        let again = reports_apply(&mut c, &[replay]).unwrap();
        assert!(!again[0].committed);
        assert_eq!(job_get(&c, "j").unwrap().unwrap().counters.batches_succeeded, done);
        let kept = part_bodies(&c, &[&reports[0].lease_id]).unwrap();
        assert_eq!(kept, vec![(reports[0].lease_id.clone(), b"row of 0\n".to_vec())]);
        let refused: String = c
            .query_row("SELECT outcome FROM audit WHERE outcome LIKE 'refused:%' ORDER BY id DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(refused, format!("refused: {}", late_report(&reports[0].lease_id)));
        // A slot that still holds work gets more only out of plenty pending: never at the job's end.
        let pending = 40 - done;
        let reserve = lease_holding(&mut c, "j", 2, 1);
        assert_eq!(reserve.len() as u64, 2.min(pending / (2 * slots)), "{pending} pending");
        for b in &reserve {
            assert!(succeed(&mut c, &b.lease_id).committed);
        }
        let done = done + reserve.len() as u64;
        // Near the end of the job, grants shrink to one mini-batch.
        let mut rest = 40 - done;
        while rest > 0 {
            let got = lease_up_to(&mut c, "j", 1000);
            let expected = (rest / (2 * slots)).clamp(1, u64::from(cove_api::worker::MAX_BATCHES_PER_GRANT));
            assert_eq!(got.len() as u64, expected.min(rest), "with {rest} left");
            for b in &got {
                assert!(succeed(&mut c, &b.lease_id).committed);
            }
            rest -= got.len() as u64;
            if rest > 0 && rest < 2 * slots {
                assert!(lease_holding(&mut c, "j", 1, 1).is_empty(), "no work in hand at the end, with {rest} left");
            }
        }
        assert!(lease_up_to(&mut c, "j", 1000).is_empty());
    }

    /// A worker's report that the attempt of `lease` succeeded, with its part (kept in the state store
    /// when `inline` is given) and the part's audit entry.
    fn reported(lease: &str, inline: Option<String>) -> AttemptReported {
        AttemptReported {
            lease_id: lease.to_string(),
            outcome: AttemptOutcome::Succeeded { items_ok: 1, items_failed: 0 },
            pid: 1,
            isolation: None,
            part_audit: Some(cove_api::AuditEntry {
                time: String::new(),
                principal: "w".into(),
                source: "127.0.0.1".into(),
                action: "PUT part".into(),
                resource: format!("lease {lease}"),
                outcome: "ok".into(),
                detail: None,
            }),
            inline_part: inline.map(bytes::Bytes::from),
        }
    }

    fn succeed(c: &mut Connection, lease: &str) -> CompleteResult {
        attempt_mark_part(c, lease).unwrap();
        lease_complete(c, lease, &AttemptOutcome::Succeeded { items_ok: 1, items_failed: 0 }, Some(1)).unwrap()
    }

    #[test]
    fn mini_batches_are_leased_in_order_and_the_last_commit_finalizes() {
        let mut c = conn();
        planned_job(&mut c, "j", 2, 3);
        let a = lease(&mut c, "j");
        let b = lease(&mut c, "j");
        assert_eq!((a.idx, b.idx), (0, 1));
        assert!(matches!(
            lease_next(&mut c, Some("j"), None, "n", 0, 0, true).unwrap(),
            LeaseAnswer::Nothing { job_done: false }
        ));
        assert_eq!(job_get(&c, "j").unwrap().unwrap().status, JobStatus::Running);
        assert!(succeed(&mut c, &b.lease_id).committed);
        let last = succeed(&mut c, &a.lease_id);
        assert_eq!(last.job_status, Some(JobStatus::Finalizing));
        let parts = committed_parts(&c, "j").unwrap();
        assert_eq!(parts.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1]);
        assert!(matches!(
            lease_next(&mut c, Some("j"), None, "n", 0, 0, true).unwrap(),
            LeaseAnswer::Nothing { job_done: true }
        ));
    }

    #[test]
    fn a_stale_lease_can_never_commit_after_its_mini_batch_was_leased_again() {
        let mut c = conn();
        planned_job(&mut c, "j", 1, 3);
        let first = lease(&mut c, "j");
        let expired = lease_complete(&mut c, &first.lease_id, &AttemptOutcome::LeaseExpired, None).unwrap();
        assert!(!expired.committed);
        let second = lease(&mut c, "j");
        assert_eq!(second.attempt, 2);
        // The lost worker comes back and reports success: discarded.
        assert!(!succeed(&mut c, &first.lease_id).committed);
        assert!(succeed(&mut c, &second.lease_id).committed);
        // A duplicate report of the committed lease changes nothing.
        assert!(!succeed(&mut c, &second.lease_id).committed);
        let row = job_get(&c, "j").unwrap().unwrap();
        assert_eq!((row.counters.batches_succeeded, row.counters.items_ok), (1, 1));
        let parts = committed_parts(&c, "j").unwrap();
        assert_eq!(parts, vec![(0, part_key("j", 0, &second.lease_id))]);
    }

    #[test]
    fn a_success_without_its_part_is_a_failed_attempt() {
        let mut c = conn();
        planned_job(&mut c, "j", 1, 2);
        let a = lease(&mut c, "j");
        let r = lease_complete(&mut c, &a.lease_id, &AttemptOutcome::Succeeded { items_ok: 1, items_failed: 0 }, None)
            .unwrap();
        assert!(!r.committed);
        assert_eq!(lease(&mut c, "j").attempt, 2);
    }

    #[test]
    fn exhausted_retries_fail_the_mini_batch_and_init_failures_spend_no_attempt() {
        let mut c = conn();
        planned_job(&mut c, "j", 2, 2);
        let a = lease(&mut c, "j");
        let init = AttemptOutcome::InitFailed { reason: "boom".into() };
        lease_complete(&mut c, &a.lease_id, &init, None).unwrap();
        let again = lease(&mut c, "j");
        assert_eq!((again.idx, again.attempt), (0, 1), "an init failure does not spend the attempt");
        let fail = AttemptOutcome::Failed { reason: "bad row".into() };
        lease_complete(&mut c, &again.lease_id, &fail, None).unwrap();
        let retry = lease(&mut c, "j");
        assert_eq!((retry.idx, retry.attempt), (0, 2));
        lease_complete(&mut c, &retry.lease_id, &fail, None).unwrap();
        let failed = batches_in_state(&c, "j", "failed").unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.as_deref(), Some("bad row (attempt 2 of 2)"));
        let b = lease(&mut c, "j");
        assert_eq!(succeed(&mut c, &b.lease_id).job_status, Some(JobStatus::Finalizing), "-1 ignores the failed items");
    }

    #[test]
    fn canceled_jobs_lease_nothing_and_discard_reports() {
        let mut c = conn();
        planned_job(&mut c, "j", 2, 3);
        let a = lease(&mut c, "j");
        assert_eq!(job_cancel(&c, "j").unwrap(), Some(JobStatus::Canceled));
        assert!(matches!(
            lease_next(&mut c, Some("j"), None, "n", 0, 0, true).unwrap(),
            LeaseAnswer::Nothing { job_done: true }
        ));
        let r = succeed(&mut c, &a.lease_id);
        assert!(!r.committed && !r.job_active);
        assert!(committed_parts(&c, "j").unwrap().is_empty());
    }

    /// The reports of one request are applied all or not at all: when one of them cannot be applied,
    /// the ones before it in the same request are undone too (their parts, attempts and counters).
    #[test]
    fn a_request_s_reports_are_applied_together_or_not_at_all() {
        let mut c = conn();
        planned_job(&mut c, "j", 4, 3);
        let (a, b) = (lease(&mut c, "j"), lease(&mut c, "j"));
        let report = |lease: &str| reported(lease, Some(format!("rows of {lease}\n")));
        c.execute_batch(&format!(
            "CREATE TRIGGER refuse_second BEFORE UPDATE OF outcome ON attempts WHEN OLD.lease_id = '{}'
             BEGIN SELECT RAISE(ABORT, 'second report refused'); END;",
            b.lease_id
        ))
        .unwrap();
        assert!(reports_apply(&mut c, &[report(&a.lease_id), report(&b.lease_id)]).is_err());
        let counters = job_get(&c, "j").unwrap().unwrap().counters;
        assert_eq!(counters.batches_succeeded, 0, "the first report was undone with the second");
        assert!(part_bodies(&c, &[&a.lease_id]).unwrap().is_empty(), "and its part");
        c.execute_batch("DROP TRIGGER refuse_second").unwrap();
        let applied = reports_apply(&mut c, &[report(&a.lease_id), report(&b.lease_id)]).unwrap();
        assert!(applied.iter().all(|r| r.committed), "{applied:?}");
        assert_eq!(job_get(&c, "j").unwrap().unwrap().counters.batches_succeeded, 2);
    }

    /// A job's end and the release of what it holds are one change: when releasing fails, the job has
    /// not ended either (with or without a transaction of the caller's).
    #[test]
    fn a_job_ends_and_releases_its_mini_batches_in_one_change() {
        let mut c = conn();
        planned_job(&mut c, "j", 2, 3);
        let held = lease(&mut c, "j");
        c.execute_batch(
            "CREATE TRIGGER refuse_release BEFORE UPDATE OF state ON batches WHEN NEW.state = 'not_run'
             BEGIN SELECT RAISE(ABORT, 'release refused'); END;",
        )
        .unwrap();
        let status = |c: &Connection| job_get(c, "j").unwrap().unwrap().status;
        let before = status(&c);
        assert!(job_transition(&c, "j", &[before], JobStatus::Failed, Some("x")).is_err());
        assert_eq!(status(&c), before, "the job did not end without releasing");
        assert!(job_cancel(&c, "j").is_err());
        assert_eq!(status(&c), before);
        let tx = c.transaction().unwrap();
        assert!(job_cancel(&tx, "j").is_err());
        assert_eq!(status(&tx), before, "nor within the caller's transaction");
        tx.commit().unwrap();
        c.execute_batch("DROP TRIGGER refuse_release").unwrap();
        assert_eq!(job_cancel(&c, "j").unwrap(), Some(JobStatus::Canceled));
        let state: String = c
            .query_row(
                "SELECT state FROM batches WHERE lease_id IS NULL AND job = 'j' AND idx = ?1",
                [held.idx as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(state, "not_run");
    }

    #[test]
    fn an_idempotency_key_returns_the_first_job() {
        let mut c = conn();
        let job = |name: &str| NewJob {
            name: name.into(),
            endpoint: "ep".into(),
            deployment: "blue".into(),
            compute: "local".into(),
            record: record(3),
            idempotency_key: Some("k".into()),
            output: output_at(name),
        };
        assert!(matches!(job_insert(&mut c, job("a")).unwrap(), JobInsert::Created(_)));
        match job_insert(&mut c, job("b")).unwrap() {
            JobInsert::Existing(row) => assert_eq!(row.name, "a"),
            _ => panic!("expected the existing job"),
        }
        assert_eq!(job_list(&c, None, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn jobs_are_leased_in_submission_order() {
        let mut c = conn();
        planned_job(&mut c, "first", 1, 3);
        planned_job(&mut c, "second", 1, 3);
        let LeaseAnswer::Granted(g) = lease_next(&mut c, None, Some("local"), "n", 0, 0, true).unwrap() else {
            panic!()
        };
        assert_eq!(g.job, "first");
        let LeaseAnswer::Granted(g) = lease_next(&mut c, None, Some("local"), "n", 0, 0, true).unwrap() else {
            panic!()
        };
        assert_eq!(g.job, "second");
        assert!(matches!(
            lease_next(&mut c, None, Some("slurm"), "n", 0, 0, true).unwrap(),
            LeaseAnswer::Nothing { .. }
        ));
    }
}
