//! The worker protocol's handlers. Every file a worker reads or writes is reached through a lease that
//! is still current, so a worker can touch only the mini-batch it holds, and only while it holds it.

use super::{parse_json, ApiError, ApiResult, JsonResult, Worker};
use crate::datastore::{normalise, parse_uri, DataPath};
use crate::jobs::plan::batch_files;
use crate::jobs::{self, LEASE_GRACE_MS};
use crate::store::{self, LeaseAnswer, LeaseInfo};
use crate::{logs, AppRef};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cove_api::worker::{AssetListing, Completion, CompletionAck, Lease, LeaseRequest, LeaseResponse, ReportedOutcome};
use cove_api::FileEntry;
use cove_model::AttemptOutcome;
use futures::TryStreamExt;
use object_store::ObjectStore;
use std::time::Duration;

/// The longest a lease request waits for work before answering "nothing".
const MAX_WAIT: Duration = Duration::from_secs(20);

pub async fn lease(State(app): State<AppRef>, Worker(w): Worker, body: Bytes) -> JsonResult<LeaseResponse> {
    let req: LeaseRequest = parse_json(&body)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    loop {
        // Register interest before looking, so a notification between the look and the wait is not lost.
        let notified = app.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (job, compute, node, process) = (req.job.clone(), w.compute.clone(), req.node.clone(), req.process);
        let answer = app
            .store
            .call(move |c| store::lease_next(c, job.as_deref(), compute.as_deref(), &node, process, LEASE_GRACE_MS))
            .await?;
        match answer {
            LeaseAnswer::Granted(g) => {
                app.leases_changed.notify_one();
                let files = batch_files(&app, &g.job, g.manifest_offset, g.manifest_len)
                    .await
                    .map_err(|e| ApiError::internal("read the manifest", format!("{e:#}")))?;
                let files = files.iter().map(|f| f.rsplit('/').next().unwrap_or(f).to_string()).collect();
                let lease = Lease {
                    lease_id: g.lease_id,
                    job: g.job,
                    batch_index: g.idx,
                    attempt: g.attempt,
                    expires_in_ms: g.record.settings.retry_settings.timeout_secs * 1000 + LEASE_GRACE_MS as u64,
                    files,
                    run: g.record.run,
                };
                return Ok(Json(LeaseResponse { lease: Some(lease), job_done: false }));
            }
            LeaseAnswer::Nothing { job_done } => {
                let shutting_down = *app.shutdown.borrow();
                if job_done || tokio::time::Instant::now() >= deadline || shutting_down {
                    return Ok(Json(LeaseResponse { lease: None, job_done }));
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
    }
}

async fn current(app: &AppRef, lease: &str) -> ApiResult<LeaseInfo> {
    let id = lease.to_string();
    app.store.call(move |c| store::lease_current(c, &id)).await?.ok_or_else(|| {
        ApiError::conflict(format!("lease `{lease}` is not current (expired, completed, or its job ended)"))
    })
}

pub async fn heartbeat(
    State(app): State<AppRef>,
    _w: Worker,
    Path(lease): Path<String>,
) -> JsonResult<serde_json::Value> {
    let id = lease.clone();
    if !app.store.call(move |c| store::lease_heartbeat(c, &id, LEASE_GRACE_MS)).await? {
        return Err(ApiError::conflict(format!("lease `{lease}` is not current")));
    }
    Ok(Json(serde_json::json!({ "lease": lease })))
}

/// All of a lease's files in one bundle (see `cove_api::worker::bundle`); a file that cannot be read
/// travels as its reason, so the worker fails that item and scores the others.
pub async fn get_files(State(app): State<AppRef>, _w: Worker, Path(lease): Path<String>) -> ApiResult<Body> {
    let info = current(&app, &lease).await?;
    let files = batch_files(&app, &info.job, info.manifest_offset, info.manifest_len)
        .await
        .map_err(|e| ApiError::internal("read the manifest", format!("{e:#}")))?;
    let input = parse_uri(&info.record.input.uri).map_err(ApiError::invalid)?;
    let store = app.datastores.get(&input.datastore).map_err(ApiError::invalid)?;
    let reads = files.into_iter().map(|file| {
        let store = store.clone();
        async move {
            let got = store.get(&object_store::path::Path::from(file.as_str())).await;
            match got {
                Ok(r) => r.bytes().await.map_err(|e| format!("cannot read input file `{file}`: {e}")),
                Err(e) => Err(format!("cannot read input file `{file}`: {e}")),
            }
        }
    });
    use futures::StreamExt;
    let contents: Vec<Result<Bytes, String>> = futures::stream::iter(reads).buffered(8).collect().await;
    let mut out = Vec::with_capacity(contents.iter().map(|c| c.as_ref().map_or(64, |b| b.len()) + 9).sum());
    for item in &contents {
        cove_api::worker::bundle::push(&mut out, item.as_ref().map(|b| &b[..]).map_err(String::as_str));
    }
    Ok(Body::from(out))
}

/// The asset's root, and the prefix its listing is relative to. A model keeps its own folder (or file)
/// name, as the reference mounts it under `AZUREML_MODEL_DIR`; code is listed from inside its folder.
fn asset_root(info: &LeaseInfo, kind: &str) -> ApiResult<(DataPath, String)> {
    let uri = match kind {
        "model" => &info.record.model_uri,
        "code" => info.record.code_uri.as_ref().ok_or_else(|| ApiError::not_found("the deployment has no code"))?,
        other => return Err(ApiError::not_found(format!("no asset kind `{other}` (model, code)"))),
    };
    let path = parse_uri(uri).map_err(ApiError::invalid)?;
    let base = if kind == "model" {
        path.path.rsplit_once('/').map_or(String::new(), |(p, _)| p.to_string())
    } else {
        path.path.clone()
    };
    Ok((path, base))
}

pub async fn list_asset(
    State(app): State<AppRef>,
    _w: Worker,
    Path((lease, kind)): Path<(String, String)>,
) -> JsonResult<AssetListing> {
    let info = current(&app, &lease).await?;
    let (root, base) = asset_root(&info, &kind)?;
    let store = app.datastores.get(&root.datastore).map_err(ApiError::invalid)?;
    let relative = |p: &str| p.strip_prefix(base.as_str()).unwrap_or(p).trim_start_matches('/').to_string();
    let mut files: Vec<FileEntry> = store
        .list(Some(&root.object_path()))
        .map_ok(|m| FileEntry { path: relative(m.location.as_ref()), size: m.size })
        .try_collect()
        .await
        .map_err(|e| ApiError::internal("list the asset", e))?;
    if files.is_empty() {
        if let Ok(meta) = store.head(&root.object_path()).await {
            files.push(FileEntry { path: relative(meta.location.as_ref()), size: meta.size });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Json(AssetListing { files }))
}

pub async fn get_asset(
    State(app): State<AppRef>,
    _w: Worker,
    Path((lease, kind, path)): Path<(String, String, String)>,
) -> ApiResult<Body> {
    let info = current(&app, &lease).await?;
    let (root, base) = asset_root(&info, &kind)?;
    let rel = normalise(&path).map_err(ApiError::invalid)?;
    let location = if base.is_empty() { rel.clone() } else { format!("{base}/{rel}") };
    if !(location == root.path || location.starts_with(&format!("{}/", root.path))) {
        return Err(ApiError::not_found(format!("`{rel}` is not part of the {kind}")));
    }
    let store = app.datastores.get(&root.datastore).map_err(ApiError::invalid)?;
    let got = store
        .get(&object_store::path::Path::from(location))
        .await
        .map_err(|_| ApiError::not_found(format!("`{rel}` is not part of the {kind}")))?;
    Ok(Body::from_stream(got.into_stream()))
}

pub async fn put_part(
    State(app): State<AppRef>,
    _w: Worker,
    Path(lease): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let info = current(&app, &lease).await?;
    let key = store::part_key(&info.job, info.idx, &lease);
    app.internal
        .put(&object_store::path::Path::from(key), body.into())
        .await
        .map_err(|e| ApiError::new(super::ErrorCode::Unavailable, format!("cannot store the part: {e}")))?;
    let id = lease.clone();
    app.store.call(move |c| store::attempt_mark_part(c, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file the scoring script wrote to `AZUREML_BI_OUTPUT_PATH`: it lands in the job's `score` folder.
pub async fn put_output(
    State(app): State<AppRef>,
    _w: Worker,
    Path((lease, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let info = current(&app, &lease).await?;
    let dest = parse_uri(&info.record.output_uri).map_err(ApiError::invalid)?.join(&name).map_err(ApiError::invalid)?;
    if info.record.output_file_name.as_deref() == Some(dest.path.rsplit('/').next().unwrap_or_default()) {
        return Err(ApiError::conflict(format!(
            "`{name}` is the job's output file name; the scorer cannot write it directly"
        )));
    }
    let store = app.datastores.get(&dest.datastore).map_err(ApiError::invalid)?;
    store.put(&dest.object_path(), body.into()).await.map_err(|e| {
        ApiError::new(super::ErrorCode::Unavailable, format!("cannot write `{name}` to the output: {e}"))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// A worker's per-process log file. Only `user/...` and `sys/node/...` paths are the worker's to write.
pub async fn put_log(
    State(app): State<AppRef>,
    _w: Worker,
    Path((job, path)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let rel = normalise(&path).map_err(ApiError::invalid)?;
    if !(rel.starts_with("user/") || rel.starts_with("sys/node/")) || rel == "user/error.txt" {
        return Err(ApiError::invalid(format!("log path `{rel}` is not a worker's to write")));
    }
    let key = job.clone();
    if app.store.call(move |c| store::job_get(c, &key)).await?.is_none() {
        return Err(ApiError::not_found(format!("job `{job}` does not exist")));
    }
    app.internal
        .put(&logs::log_key(&job, &rel), body.into())
        .await
        .map_err(|e| ApiError::new(super::ErrorCode::Unavailable, format!("cannot store the log: {e}")))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn complete(
    State(app): State<AppRef>,
    _w: Worker,
    Path(lease): Path<String>,
    body: Bytes,
) -> JsonResult<CompletionAck> {
    let report: Completion = parse_json(&body)?;
    let reason = || report.reason.clone().unwrap_or_else(|| "no reason given".to_string());
    let outcome = match report.outcome {
        ReportedOutcome::Succeeded => {
            AttemptOutcome::Succeeded { items_ok: report.items_ok, items_failed: report.items_failed }
        }
        ReportedOutcome::Failed => AttemptOutcome::Failed { reason: reason() },
        ReportedOutcome::TimedOut => AttemptOutcome::TimedOut,
        ReportedOutcome::InitFailed => AttemptOutcome::InitFailed { reason: reason() },
    };
    let id = lease.clone();
    let pid = report.pid;
    let isolation = report.isolation.as_ref().map(|v| v.to_string());
    let result =
        app.store.call(move |c| store::lease_complete_with(c, &id, &outcome, Some(pid), isolation.as_deref())).await?;
    app.work_available.notify_waiters();
    if let (Some(status), Some(job)) = (result.job_status, &result.job) {
        jobs::on_status(&app, job, status);
    }
    Ok(Json(CompletionAck { committed: result.committed, job_active: result.job_active }))
}
