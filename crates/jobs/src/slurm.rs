//! Follows a Cove job's Slurm array job: it records what Slurm says (pending reasons, nodes, exits),
//! expires the leases of tasks Slurm lost, submits again when every task ended while work remains,
//! and fails the job honestly when that does not help.

use crate::ControlRef;
use cove_api::ComputeSpec;
use cove_compute::slurm::{describe, tasks, Task};
use cove_compute::{Backend, JobWorkers, Slurm};
use cove_model::AttemptOutcome;
use cove_store as store;
use std::time::Duration;

/// Submissions of one job before it is failed for lack of capacity.
const MAX_SUBMISSIONS: u32 = 3;

/// Submits (unless already submitted) and follows a job's array job until the Cove job ends.
pub async fn follow(app: ControlRef, job: String, compute: String, spec: ComputeSpec) {
    let backend = Slurm {
        spec: spec.clone(),
        exe: app.config.worker_exe.clone(),
        url: app.url.clone(),
        credential: cove_workspace::credential_source(&app.store, &app.tls.authority, &app.config.dir, &compute),
        dir: cove_workspace::layout::compute_dir(&app.config.dir, &compute),
    };
    let mut lost_handled: Vec<String> = Vec::new();
    // Since when every live task has been waiting for nodes that are not there.
    let mut without_nodes: Option<std::time::Instant> = None;
    loop {
        let Ok(Some(row)) = crate::get(&app, &job).await else { return };
        if row.status.is_terminal() || row.status == cove_model::JobStatus::CancelRequested {
            if let Some(id) = &row.compute_ref {
                backend.stop(&job, Some(id)).await;
                // Record how the tasks ended, once Slurm has finished ending them.
                for _ in 0..30 {
                    let Ok(t) = tasks(&spec, id).await else { break };
                    let state = describe(id, &t);
                    let name = job.clone();
                    let _ = app.store.call(move |c| store::job_set_compute_state(c, &name, &state)).await;
                    if !t.iter().any(Task::is_live) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            return;
        }
        let id = match &row.compute_ref {
            Some(id) => id.clone(),
            None => match submit_for(&app, &row, &backend).await {
                Ok(id) => id,
                Err(reason) => {
                    crate::fail_lost(&app, job.clone(), format!("the Slurm compute could not start workers: {reason}"))
                        .await;
                    return;
                }
            },
        };
        match tasks(&spec, &id).await {
            Ok(t) => {
                let state = describe(&id, &t);
                if row.compute_state.as_deref() != Some(state.as_str()) {
                    let name = job.clone();
                    let _ = app.store.call(move |c| store::job_set_compute_state(c, &name, &state)).await;
                }
                for task in t.iter().filter(|t| t.was_lost()) {
                    let key = format!("{id}_{}", task.index);
                    if !lost_handled.contains(&key) {
                        lost_handled.push(key);
                        expire_node(&app, &job, &format!("slurm-{}", task.index)).await;
                    }
                }
                let accepting = row.status.accepts_leases();
                let live: Vec<&Task> = t.iter().filter(|t| t.is_live()).collect();
                if !live.is_empty() && live.iter().all(|t| t.lacks_nodes()) {
                    let since = *without_nodes.get_or_insert_with(std::time::Instant::now);
                    if accepting && since.elapsed().as_secs() >= spec.capacity_wait {
                        backend.stop(&job, Some(&id)).await;
                        let states: Vec<String> =
                            live.iter().map(|t| format!("task {} {} ({})", t.index, t.state, t.reason)).collect();
                        crate::fail_lost(
                            &app,
                            job.clone(),
                            format!(
                                "no Slurm capacity: the workers waited {} s (capacity_wait) for nodes that are down, \
                                 drained or reserved: {}",
                                spec.capacity_wait,
                                states.join(", ")
                            ),
                        )
                        .await;
                        return;
                    }
                } else {
                    without_nodes = None;
                }
                if accepting && !t.iter().any(Task::is_live) {
                    if row.compute_submissions >= MAX_SUBMISSIONS {
                        let states: Vec<String> = t.iter().map(|t| format!("task {} {}", t.index, t.state)).collect();
                        crate::fail_lost(
                            &app,
                            job.clone(),
                            format!(
                                "no Slurm capacity remains: every worker task ended ({}) and {} submissions did not finish the job",
                                states.join(", "),
                                row.compute_submissions
                            ),
                        )
                        .await;
                        return;
                    }
                    if let Err(reason) = submit_for(&app, &row, &backend).await {
                        crate::fail_lost(
                            &app,
                            job.clone(),
                            format!("the Slurm compute could not start workers again: {reason}"),
                        )
                        .await;
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(%job, error = %e, "cannot read the Slurm job's state"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Submits the job's array job and records its id; the error is the reason a job failed for it.
async fn submit_for(app: &ControlRef, row: &store::JobRow, backend: &Slurm) -> Result<String, String> {
    let s = &row.record.settings;
    let workers =
        JobWorkers { job: &row.name, instances: s.instance_count, concurrency: s.max_concurrency_per_instance };
    let id = backend.start(workers).await.map_err(|e| e.to_string())?.unwrap_or_default();
    let (name, reference) = (row.name.clone(), id.clone());
    app.store.call(move |c| store::job_set_compute_ref(c, &name, &reference)).await.map_err(|e| e.to_string())?;
    Ok(id)
}

/// Expires the leases a lost node held, so other workers take their mini-batches now.
async fn expire_node(app: &ControlRef, job: &str, node: &str) {
    let (j, n) = (job.to_string(), node.to_string());
    let Ok(leases) = app.store.call(move |c| store::leases_on_node(c, &j, &n)).await else { return };
    for lease in leases {
        tracing::warn!(%job, %node, %lease, "the node was lost; its lease is given back");
        let id = lease.clone();
        if let Ok(r) = app.store.call(move |c| store::lease_complete(c, &id, &AttemptOutcome::LeaseExpired, None)).await
        {
            app.work_available.notify_waiters();
            if let (Some(status), Some(job)) = (r.job_status, r.job) {
                crate::on_status(app, &job, status);
            }
        }
    }
}
