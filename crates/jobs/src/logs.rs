//! The job's log tree, laid out as the reference system lays it out (`logs/job_result.txt`,
//! `logs/sys/job_report/processed_mini-batches.csv`, `logs/user/...`), so its users find things where
//! they look. Workers upload the per-process files under `logs/user/` when they change; the control
//! plane writes the job-level files and `logs/sys/node/` (from the attempt records) when the job ends.

use crate::ControlRef;
use chrono::{TimeZone, Utc};
use cove_store::{self as store, AttemptRow};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use std::fmt::Write;

pub fn log_key(job: &str, rel: &str) -> ObjectPath {
    ObjectPath::from(format!("jobs/{job}/logs/{rel}"))
}

pub fn logs_prefix(job: &str) -> ObjectPath {
    ObjectPath::from(format!("jobs/{job}/logs"))
}

pub use cove_store::timestamp;

const README: &str = "\
This folder holds the logs of one Cove batch job, laid out like those of an Azure ML batch job.

job_result.txt                              the job's final status and counts
job_error.txt                               why the job failed (only when it failed)
job_progress_overview.<YYYYMMDDHH>.txt      mini-batches created, processed, succeeded and failed
sys/job_report/processed_mini-batches.csv   one line per attempt: mini-batch, result, node, process, time, error
sys/node/<node>/<processNNN>.txt            per scorer process: pid, items, time spent in run()
user/error.txt                              a summary of the errors raised by the scoring script
user/error/<node>/<processNNN>.txt          full tracebacks from init() and run()
user/stdout/<node>/<processNNN>.stdout.txt  what the scoring script printed
user/stderr/<node>/<processNNN>.stderr.txt  what the scoring script wrote to stderr
";

/// Writes the job-level log files of a job that reached a terminal state.
///
/// `ending_as` writes them for a status the job is about to take, so that they exist before anyone can
/// see that status.
pub async fn write_job_logs(
    app: &ControlRef,
    job: &str,
    ending_as: Option<cove_model::JobStatus>,
) -> anyhow::Result<()> {
    let name = job.to_string();
    let (row, attempts, failed) = app
        .store
        .call(move |c| {
            let row = store::job_get(c, &name)?;
            Ok((row, store::attempts_of(c, &name, None)?, store::batches_in_state(c, &name, "failed")?))
        })
        .await?;
    let Some(mut row) = row else { return Ok(()) };
    if let Some(status) = ending_as {
        row.status = status;
    }
    let c = row.counters;
    let finished = row.finished_ms.unwrap_or_else(store::now_ms);
    let mut result = String::new();
    writeln!(result, "Job: {}", row.name)?;
    writeln!(result, "Status: {}", row.status)?;
    if let Some(e) = &row.error {
        writeln!(result, "Reason: {e}")?;
    }
    writeln!(result, "Files: {}", row.files_total)?;
    writeln!(
        result,
        "Mini-batches: {} total, {} succeeded, {} failed",
        c.batches_total, c.batches_succeeded, c.batches_failed
    )?;
    writeln!(result, "Items: {} succeeded, {} failed", c.items_ok, c.items_failed)?;
    writeln!(result, "Started: {}", row.started_ms.map(timestamp).unwrap_or_default())?;
    writeln!(result, "Finished: {}", timestamp(finished))?;
    put(app, job, "job_result.txt", result).await?;

    if row.status == cove_model::JobStatus::Failed || !failed.is_empty() {
        let mut err = String::new();
        if let Some(e) = &row.error {
            writeln!(err, "{}: {e}", row.status)?;
        }
        for b in &failed {
            writeln!(
                err,
                "mini-batch {} ({} files) failed after {} attempts: {}",
                b.idx,
                b.files,
                b.attempts,
                b.error.as_deref().unwrap_or("")
            )?;
        }
        put(app, job, "job_error.txt", err).await?;
    }

    let hour =
        Utc.timestamp_millis_opt(row.created_ms).single().map(|t| t.format("%Y%m%d%H").to_string()).unwrap_or_default();
    let mut overview = String::new();
    writeln!(overview, "{} job created", timestamp(row.created_ms))?;
    writeln!(
        overview,
        "{} {} mini-batches created over {} files",
        timestamp(row.created_ms),
        c.batches_total,
        row.files_total
    )?;
    writeln!(
        overview,
        "{} {} mini-batches processed: {} succeeded, {} failed; {} items succeeded, {} failed",
        timestamp(finished),
        c.batches_succeeded + c.batches_failed,
        c.batches_succeeded,
        c.batches_failed,
        c.items_ok,
        c.items_failed
    )?;
    writeln!(overview, "{} job {}", timestamp(finished), row.status)?;
    put(app, job, &format!("job_progress_overview.{hour}.txt"), overview).await?;

    put(app, job, "sys/job_report/processed_mini-batches.csv", report_csv(&attempts)).await?;
    for (path, text) in node_logs(&attempts) {
        put(app, job, &path, text).await?;
    }

    let mut user_errors = String::new();
    for a in attempts.iter().filter(|a| a.outcome.as_deref().is_some_and(|o| o != "succeeded")) {
        writeln!(
            user_errors,
            "mini-batch {} attempt {} on {}/process{:03}: {}: {}",
            a.idx,
            a.attempt,
            a.node,
            a.process,
            a.outcome.as_deref().unwrap_or(""),
            a.reason.as_deref().unwrap_or("").lines().last().unwrap_or("")
        )?;
    }
    put(app, job, "user/error.txt", user_errors).await?;
    put(app, job, "readme.txt", README.to_string()).await?;
    Ok(())
}

/// `sys/node/<node>/<processNNN>.txt`: each worker process's attempts in the order they started. They
/// are written from the attempt records, so workers need not upload a file that grows with every
/// mini-batch.
fn node_logs(attempts: &[AttemptRow]) -> std::collections::BTreeMap<String, String> {
    let mut by_process: std::collections::BTreeMap<String, Vec<&AttemptRow>> = Default::default();
    for a in attempts {
        by_process.entry(format!("sys/node/{}/process{:03}.txt", a.node, a.process)).or_default().push(a);
    }
    by_process
        .into_iter()
        .map(|(path, mut rows)| {
            rows.sort_by_key(|a| (a.started_ms, a.idx, a.attempt));
            let mut text = String::new();
            for a in rows {
                let _ = writeln!(
                    text,
                    "{} pid={} mini_batch={} attempt={} outcome={} items_succeeded={} items_failed={} elapsed_ms={}",
                    timestamp(a.started_ms),
                    a.pid.map(|p| p.to_string()).unwrap_or_default(),
                    a.idx,
                    a.attempt,
                    a.outcome.as_deref().unwrap_or("running"),
                    a.items_ok,
                    a.items_failed,
                    a.finished_ms.map(|f| (f - a.started_ms).to_string()).unwrap_or_default()
                );
            }
            (path, text)
        })
        .collect()
}

/// One CSV line per attempt; fields with commas or quotes are quoted.
fn report_csv(attempts: &[AttemptRow]) -> String {
    let mut out = String::from(
        "mini_batch,attempt,result,node,process,pid,start,elapsed_ms,items_succeeded,items_failed,error\n",
    );
    for a in attempts {
        let elapsed = a.finished_ms.map(|f| (f - a.started_ms).to_string()).unwrap_or_default();
        let fields = [
            a.idx.to_string(),
            a.attempt.to_string(),
            a.outcome.clone().unwrap_or_else(|| "running".into()),
            a.node.clone(),
            format!("process{:03}", a.process),
            a.pid.map(|p| p.to_string()).unwrap_or_default(),
            timestamp(a.started_ms),
            elapsed,
            a.items_ok.to_string(),
            a.items_failed.to_string(),
            a.reason.as_deref().unwrap_or("").lines().last().unwrap_or("").to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

async fn put(app: &ControlRef, job: &str, rel: &str, text: String) -> anyhow::Result<()> {
    app.internal.put(&log_key(job, rel), text.into()).await?;
    Ok(())
}
