//! The job lifecycle outside the lease protocol: planning a submitted job, starting its workers,
//! expiring lost leases, assembling and publishing the output, and resuming all of it after a restart.
//!
//! Each step is idempotent, so that a control plane that dies anywhere can run it again on start:
//! planning replaces a half-written plan, assembly rewrites the same bytes, and publishing is one
//! atomic object write followed by one status transition.

pub mod assembly;
pub mod finalize;
pub mod logs;
pub mod metrics;
pub mod plan;
pub mod slurm;

pub use finalize::{copy_parts, finalize};

use cove_compute::{Backend, JobWorkers};
use cove_model::{AttemptOutcome, JobStatus};
use cove_store::{self as store, JobRow};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What the control plane runs jobs on: its state, its stores, its compute clusters, and the signals
/// between the tasks that serve requests and those that move jobs along.
pub struct Control {
    pub config: cove_workspace::ServerConfig,
    pub store: store::Store,
    pub datastores: cove_datastore::Datastores,
    /// Cove's own objects (manifests, parts, logs), apart from every user-addressable datastore.
    pub internal: Arc<dyn object_store::ObjectStore>,
    /// The output files of running jobs, assembled as their parts commit.
    pub assemblies: assembly::Assemblies,
    /// Woken whenever new work may be leasable, for long-polling workers.
    pub work_available: Notify,
    /// Notified when a job's status changes, for callers waiting on a job (`GET /api/v1/jobs/{job}?wait_ms`).
    pub job_events: Notify,
    /// Woken whenever a lease is granted, so the reaper can sleep until the earliest deadline.
    pub leases_changed: Notify,
    pub compute: cove_compute::LocalCompute,
    /// The named clusters on this host (`type: amlcompute`), started on their first job.
    pub clusters: Mutex<HashMap<String, cove_compute::LocalCompute>>,
    /// Jobs whose cluster-scheduler submission a tracker follows (so each has one tracker).
    pub followed: Mutex<HashSet<String>>,
    pub url: String,
    pub policy: cove_workspace::netpolicy::NetworkPolicy,
    /// The workspace CA, the listeners' certificate and their TLS configuration.
    pub tls: cove_workspace::tls::WorkspaceTls,
    pub shutdown: watch::Receiver<bool>,
    /// Set when a planned stop begins: no lease is granted from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// What `/metrics` reports of this process (the rest it reads from the store at each scrape).
    pub metrics: metrics::Metrics,
}

pub type ControlRef = Arc<Control>;

/// How long after `timeout` a lease outlives the worker's last sign of life, to cover staging and reporting.
pub const LEASE_GRACE_MS: i64 = 10_000;

/// Picks up every unfinished job after a start.
pub async fn resume_all(app: &ControlRef) -> anyhow::Result<()> {
    app.store.call(|c| store::release_ended_jobs(c)).await?;
    // Parts of jobs that ended just before the last stop, which it left no time to delete.
    for job in app.store.call(|c| store::jobs_with_parts_left(c)).await? {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(error) = collect_parts(&app, &job).await {
                tracing::warn!(%job, error = format!("{error:#}"), "failed to delete the job's result parts");
            }
        });
    }
    let jobs = app.store.call(|c| store::jobs_unfinished(c)).await?;
    for job in jobs {
        tracing::info!(job = %job.name, status = %job.status, "resuming job");
        advance(app.clone(), job.name);
    }
    Ok(())
}

/// Moves a job forward from whatever non-terminal state it is in, in the background.
pub fn advance(app: ControlRef, job: String) {
    tokio::spawn(async move {
        if let Err(error) = advance_now(&app, &job).await {
            tracing::error!(%job, error = format!("{error:#}"), "job step failed");
        }
    });
}

async fn advance_now(app: &ControlRef, name: &str) -> anyhow::Result<()> {
    let Some(job) = get(app, name).await? else {
        return Ok(());
    };
    match job.status {
        JobStatus::NotStarted | JobStatus::Preparing => {
            // Workers on this host start while the job is planned (they wait for its first mini-batch),
            // so their start-up overlaps planning; a job that fails planning stops them as it ends.
            if on_this_host(app, &job) {
                launch(app, &job).await;
            }
            if plan::plan(app, &job).await? {
                app.work_available.notify_waiters();
                log_step(app, name, "job planned").await;
                launch(app, &job).await;
            }
        }
        JobStatus::Queued | JobStatus::Running => launch(app, &job).await,
        JobStatus::Finalizing | JobStatus::CancelRequested => finalize(app, name).await?,
        JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled => {}
    }
    Ok(())
}

/// Whether the job runs on the workspace's own compute on this host (`local`).
fn on_this_host(app: &ControlRef, job: &JobRow) -> bool {
    app.policy.computes.iter().any(|c| c.name == job.compute && c.kind == "local")
}

/// Starts the job's workers on its compute's backend: on this host at once (in order with any later
/// stop), elsewhere in the background.
async fn launch(app: &ControlRef, job: &JobRow) {
    let s = &job.record.settings;
    let (instances, concurrency) = (s.instance_count, s.max_concurrency_per_instance);
    tracing::info!(
        job = %job.name,
        deployment = %job.deployment,
        compute = %job.compute,
        instances,
        concurrency,
        "starting workers"
    );
    if on_this_host(app, job) {
        let workers = JobWorkers { job: &job.name, instances, concurrency };
        // Starting workers on this host does not fail: a worker that cannot start is reported lost.
        let _ = app.compute.start(workers).await;
        return;
    }
    let (app, name, compute) = (app.clone(), job.name.clone(), job.compute.clone());
    tokio::spawn(async move {
        let Ok(Some(c)) = app.store.call(move |conn| store::compute_get(conn, &compute)).await else { return };
        if c.kind == "amlcompute" {
            match named_cluster(&app, &c) {
                Ok(cluster) => {
                    let _ = cluster.start(JobWorkers { job: &name, instances, concurrency }).await;
                }
                Err(error) => {
                    fail_lost(&app, name, format!("compute `{}` could not start workers: {error:#}", c.name)).await
                }
            }
            return;
        }
        let Some(spec) = c.slurm else { return };
        let first = app.followed.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
        if first {
            crate::slurm::follow(app.clone(), name.clone(), c.name.clone(), spec).await;
            app.followed.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        }
    });
}

/// A named cluster on this host (`type: amlcompute`), started on its first job with its own worker
/// credential, node names and capacity.
fn named_cluster(app: &ControlRef, c: &cove_api::Compute) -> anyhow::Result<cove_compute::LocalCompute> {
    if let Some(cluster) = app.clusters.lock().unwrap_or_else(|e| e.into_inner()).get(&c.name) {
        return Ok(cluster.clone());
    }
    cove_workspace::ensure_worker_credential(&app.store, &app.tls.authority, &app.config.dir, &c.name)?;
    let credential = cove_workspace::credential_source(&app.store, &app.tls.authority, &app.config.dir, &c.name);
    let (cluster, mut lost) = cove_compute::LocalCompute::new(
        app.config.worker_exe.clone(),
        app.url.clone(),
        credential,
        cove_workspace::layout::compute_dir(&app.config.dir, &c.name),
        &c.name,
        c.max_instances,
    );
    let mut clusters = app.clusters.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = clusters.entry(c.name.clone()).or_insert(cluster).clone();
    drop(clusters);
    let lost_app = app.clone();
    tokio::spawn(async move {
        while let Some((job, reason)) = lost.recv().await {
            fail_lost(&lost_app, job, reason).await;
        }
    });
    Ok(cluster)
}

pub async fn get(app: &ControlRef, name: &str) -> anyhow::Result<Option<JobRow>> {
    let name = name.to_string();
    Ok(app.store.call(move |c| store::job_get(c, &name)).await?)
}

/// Reacts to a status that a lease report or the reaper produced.
pub fn on_status(app: &ControlRef, job: &str, status: JobStatus) {
    app.job_events.notify_waiters();
    match status {
        JobStatus::Finalizing => {
            let (logging, name) = (app.clone(), job.to_string());
            tokio::spawn(async move { log_step(&logging, &name, "job finalizing").await });
            advance(app.clone(), job.to_string())
        }
        s if s.is_terminal() => ended(app.clone(), job.to_string()),
        _ => {}
    }
}

/// Logs a job's lifecycle step with the fields an operator filters on.
pub async fn log_step(app: &ControlRef, job: &str, step: &str) {
    if let Ok(Some(row)) = get(app, job).await {
        tracing::info!(
            job = %row.name,
            endpoint = %row.endpoint,
            deployment = %row.deployment,
            compute = %row.compute,
            status = %row.status,
            "{step}"
        );
    }
}

/// Cleans up after a job reached a terminal state: its workers stop and its logs are written.
pub fn ended(app: ControlRef, job: String) {
    app.job_events.notify_waiters();
    app.assemblies.forget(&job);
    tokio::spawn(async move {
        log_step(&app, &job, "job ended").await;
        Backend::stop(&app.compute, &job, None).await;
        let clusters: Vec<cove_compute::LocalCompute> =
            app.clusters.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for cluster in clusters {
            Backend::stop(&cluster, &job, None).await;
        }
        if let Err(error) = crate::logs::write_job_logs(&app, &job, None).await {
            tracing::error!(%job, error = format!("{error:#}"), "failed to write job logs");
        }
        if let Some(pause) = cove_api::pause::pause_at("collecting") {
            tokio::time::sleep(pause).await;
        }
        if let Err(error) = collect_parts(&app, &job).await {
            tracing::warn!(%job, error = format!("{error:#}"), "failed to delete the job's result parts");
        }
        // Workers waiting on this job learn that it ended.
        app.work_available.notify_waiters();
    });
}

/// Deletes a job's result parts, as objects and in the state store, and the files its attempts' scripts
/// wrote, as staged: only finalizing reads them, and an ended job's output is published or never will
/// be. The staged files go first, so a stop in between leaves parts, which the next start collects
/// with them (`store::jobs_with_parts_left`).
async fn collect_parts(app: &ControlRef, job: &str) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    for prefix in [store::staged_outputs_root(job), store::parts_prefix(job)] {
        let prefix = object_store::path::Path::from(prefix);
        let objects = app.internal.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
        app.internal.delete_stream(objects).try_collect::<Vec<_>>().await?;
    }
    let j = job.to_string();
    app.store.call(move |c| store::parts_forget(c, &j)).await?;
    Ok(())
}

/// Fails a job whose compute lost every worker it had; running attempts' leases become moot.
pub async fn fail_lost(app: &ControlRef, job: String, reason: String) {
    let name = job.clone();
    let from = [JobStatus::Queued, JobStatus::Running];
    match app.store.call(move |c| store::job_transition(c, &name, &from, JobStatus::Failed, Some(&reason))).await {
        Ok(true) => ended(app.clone(), job),
        Ok(false) => {}
        Err(error) => tracing::error!(%job, %error, "failed to fail a job that lost its workers"),
    }
}

/// A planned stop: grants no more leases, waits up to `grace` for the workers to report every
/// mini-batch they hold, then ends the leases still open as interrupted, which spends no attempt of
/// their mini-batches (they go back to the queue for the next start).
pub async fn drain(app: &ControlRef, grace: Duration) {
    app.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    // Lease requests waiting for work learn that none will come.
    app.work_available.notify_waiters();
    let until = tokio::time::Instant::now() + grace;
    let open = loop {
        let open = app.store.call(|c| store::leases_open(c)).await.unwrap_or_default();
        if open.is_empty() || tokio::time::Instant::now() >= until {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tracing::info!(interrupted = open.len(), grace_secs = grace.as_secs(), "stopping: workers drained");
    for lease in open {
        let id = lease.clone();
        match app.store.call(move |c| store::lease_complete(c, &id, &AttemptOutcome::Interrupted, None)).await {
            Ok(r) => {
                tracing::info!(%lease, job = r.job.as_deref().unwrap_or_default(), "lease interrupted by the stop");
                if let (Some(status), Some(job)) = (r.job_status, r.job) {
                    on_status(app, &job, status);
                }
            }
            Err(error) => tracing::error!(%lease, %error, "failed to interrupt a lease"),
        }
    }
}

/// Expires leases whose deadline passed, as failed attempts of their mini-batches.
pub async fn reap_expired_leases(app: ControlRef) {
    let mut shutdown = app.shutdown.clone();
    loop {
        let now = store::now_ms();
        match app.store.call(move |c| store::leases_expired(c, now)).await {
            Ok(expired) => {
                for lease in expired {
                    let id = lease.clone();
                    let result = app
                        .store
                        .call(move |c| store::lease_complete(c, &id, &AttemptOutcome::LeaseExpired, None))
                        .await;
                    match result {
                        Ok(r) => {
                            tracing::warn!(lease = %lease, job = r.job.as_deref().unwrap_or_default(), "lease expired");
                            app.work_available.notify_waiters();
                            if let (Some(status), Some(job)) = (r.job_status, r.job) {
                                on_status(&app, &job, status);
                            }
                        }
                        Err(error) => tracing::error!(error = %error, "failed to expire a lease"),
                    }
                }
            }
            Err(error) => tracing::error!(error = %error, "failed to look for expired leases"),
        }
        let next = app.store.call(|c| store::next_lease_deadline(c)).await.ok().flatten();
        let wait = next.map_or(Duration::from_secs(5), |t| {
            Duration::from_millis((t - store::now_ms() + 5).clamp(5, 5_000) as u64)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.leases_changed.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
