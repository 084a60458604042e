//! The Cove worker: dials the control plane, leases mini-batches, and runs the scoring script on them
//! in scorer processes. It never accepts a connection, so compute needs no inbound access.
//!
//! Entry point: [`run`]. One worker runs `concurrency` slots; each slot owns at most one scorer process
//! and works one lease at a time: fetch the model and code, stage the files, call `run()`, upload the
//! part and the logs, report the outcome. The worker does not decide anything about retries or the job's
//! fate: it reports what happened and the control plane's policy decides.

pub use cove_common::beneath;
pub mod children;
mod credential;
pub mod environment;
mod leftovers;
pub mod sandbox;
mod scorer;
mod slot;

use anyhow::Context;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

pub use scorer::DRIVER;

/// Cove's scoring script for MLflow models deployed with no scoring script.
pub const MLFLOW_SCRIPT: &str = include_str!("mlflow_score.py");
pub use cove_common::MLFLOW_SCRIPT_NAME;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub url: String,
    pub token: String,
    /// Lease only from this job, and exit when it has no more work.
    pub job: Option<String>,
    pub node: String,
    pub concurrency: u32,
    pub work_dir: PathBuf,
    /// The CA that verifies the control plane, and the compute's client certificate and key.
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Process groups of live scorer processes, so a stopping worker can end them all.
static SCORER_GROUPS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn register_group(pid: u32) {
    SCORER_GROUPS.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashSet::new).insert(pid);
}

fn unregister_group(pid: u32) {
    if let Some(set) = SCORER_GROUPS.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        set.remove(&pid);
    }
}

fn kill_all_scorers() {
    let groups: Vec<u32> = SCORER_GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    for pid in groups {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

pub use cove_common::trusting;

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its job has no more work.
    Finished,
    /// SIGTERM or SIGINT stopped it (a scheduler or the control plane did).
    Stopped,
}

/// Runs the worker until its job has no more work (or forever, when not bound to a job), or until
/// SIGTERM/SIGINT, which ends its scorer processes too.
pub async fn run(config: WorkerConfig) -> anyhow::Result<Ended> {
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("failed to create {}", config.work_dir.display()))?;
    let driver = config.work_dir.join("cove_driver.py");
    std::fs::write(&driver, DRIVER).context("failed to write the scorer driver")?;
    credential::finish_replacing(&config).context("finishing an interrupted certificate renewal")?;
    let tls = cove_tls::client_config_from_files(&config.ca_file, Some((&config.client_cert, &config.client_key)))?;
    let client = cove_api::Client::new(&config.url, &config.token, tls);
    let renewing = tokio::spawn(credential::keep_fresh(client.clone(), config.clone()));
    let mut slots = tokio::task::JoinSet::new();
    let hosts = slot::Hosts::default();
    for process in 0..config.concurrency.max(1) {
        let slot = slot::Slot::new(client.clone(), config.clone(), process, driver.clone(), hosts.clone());
        slots.spawn(slot.run());
    }
    let job = config.job.as_deref().unwrap_or("any");
    tracing::info!(job, node = %config.node, concurrency = config.concurrency, url = %config.url, "worker started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = loop {
        tokio::select! {
            done = slots.join_next() => match done {
                None => break Ok(Ended::Finished),
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("a worker slot panicked")),
            },
            _ = term.recv() => break Ok(Ended::Stopped),
            _ = tokio::signal::ctrl_c() => break Ok(Ended::Stopped),
        }
    };
    slots.abort_all();
    renewing.abort();
    kill_all_scorers();
    match &result {
        Ok(ended) => tracing::info!(job, node = %config.node, ?ended, "worker ended"),
        Err(error) => tracing::error!(job, node = %config.node, error = format!("{error:#}"), "worker failed"),
    }
    result
}
