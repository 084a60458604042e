//! The worker protocol's handlers. Every file a worker reads or writes is reached through a lease that
//! is still current, so a worker can touch only the mini-batch it holds, and only while it holds it.

use super::{guard, parse_json, ApiError, ApiResult, ErrorCode, JsonResult, Worker};
use crate::AppRef;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use cove_api::worker::bundle::Pieces;
use cove_api::worker::{
    AssetListing, Completion, CompletionAck, Lease, LeaseRequest, LeaseResponse, ReportedOutcome, Reports, ReportsAck,
};
use cove_api::{AuditEntry, FileEntry};
use cove_datastore::{normalise, parse_uri, DataPath};
use cove_jobs::logs;
use cove_jobs::plan::{batch_files, decode_lines, manifest_range};
use cove_jobs::{self as jobs, LEASE_GRACE_MS};
use cove_model::AttemptOutcome;
use cove_store::auth::Principal;
use cove_store::{self as store, LeaseAnswer, LeaseInfo};
use futures::TryStreamExt;
use object_store::ObjectStore;
use std::time::Duration;

/// The longest a lease request waits for work before answering "nothing".
const MAX_WAIT: Duration = Duration::from_secs(20);

pub async fn lease(State(app): State<AppRef>, Worker(w): Worker, body: Bytes) -> JsonResult<LeaseResponse> {
    let req: LeaseRequest = parse_json(&body)?;
    let (mut leases, job_done) = lease_for(&app, &w, &req).await?;
    let lease = (!leases.is_empty()).then(|| leases.remove(0));
    Ok(Json(LeaseResponse { lease, more: leases, job_done }))
}

/// Grants the worker up to `req.batches` mini-batches of one job, waiting up to `req.wait_ms` for one;
/// returns them, and whether the requested job will never have work again.
async fn lease_for(app: &AppRef, w: &Principal, req: &LeaseRequest) -> ApiResult<(Vec<Lease>, bool)> {
    if let Some(compute) = &w.compute {
        let seen = (req.node.clone(), req.host.clone());
        app.worker_hosts.lock().unwrap_or_else(|e| e.into_inner()).insert(compute.clone(), seen);
    }
    if !req.host.sandbox {
        if let Some(job) = &req.job {
            if fail_unsandboxable(app, w, req, job).await? {
                return Ok((Vec::new(), true));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    loop {
        // Register interest before looking, so a notification between the look and the wait is not lost.
        let notified = app.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if app.draining.load(std::sync::atomic::Ordering::SeqCst) {
            // A planned stop: nothing more is granted; the worker waits out its poll rather than asking
            // again at once. (`drain` sets the flag before it wakes the waiters, so none is granted after.)
            let mut shutdown = app.shutdown.clone();
            let _ = tokio::time::timeout_at(deadline, shutdown.wait_for(|s| *s)).await;
            return Ok((Vec::new(), false));
        }
        let (job, compute, node) = (req.job.clone(), w.compute.clone(), req.node.clone());
        let (process, host_can_sandbox, want, holding) = (req.process, req.host.sandbox, req.batches, req.holding);
        let draining = app.draining.clone();
        let answer = app
            .store
            .call(move |c| {
                // Looked at under the store's lock, which `drain`'s look at the open leases also takes:
                // a lease granted before the stop began is seen there, and none is granted after.
                if draining.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(LeaseAnswer::Nothing { job_done: false });
                }
                let ask = store::LeaseAsk {
                    job: job.as_deref(),
                    compute: compute.as_deref(),
                    node: &node,
                    process,
                    grace_ms: LEASE_GRACE_MS,
                    host_can_sandbox,
                    want,
                    holding,
                };
                store::lease_several(c, &ask)
            })
            .await?;
        match answer {
            LeaseAnswer::Granted(g) => {
                app.leases_changed.notify_one();
                tracing::info!(
                    job = %g.job,
                    compute = w.compute.as_deref().unwrap_or_default(),
                    node = %req.node,
                    leases = g.batches.len(),
                    first_batch = g.batches[0].idx,
                    "leases granted"
                );
                return Ok((leases_of(app, g).await?, false));
            }
            LeaseAnswer::Nothing { job_done } => {
                let shutting_down = *app.shutdown.borrow();
                if job_done || tokio::time::Instant::now() >= deadline || shutting_down {
                    return Ok((Vec::new(), job_done));
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
    }
}

/// The leases of a grant as the worker gets them: each mini-batch's files (read from the manifest in
/// one range for the whole grant), and where to read them.
async fn leases_of(app: &AppRef, g: store::LeaseGrant) -> ApiResult<Vec<Lease>> {
    let first = g.batches.first().map_or(0, |b| b.manifest_offset);
    let end = g.batches.iter().map(|b| b.manifest_offset + b.manifest_len).max().unwrap_or(first);
    let manifest = |e: anyhow::Error| ApiError::internal("read the manifest", format!("{e:#}"));
    let lines = manifest_range(app, &g.job, first, end - first).await.map_err(manifest)?;
    let expires_in_ms = g.record.settings.retry_settings.timeout_secs * 1000 + LEASE_GRACE_MS as u64;
    let direct_ca = match g.record.inputs_direct {
        true => {
            let store = parse_uri(&g.record.input.uri).map_err(ApiError::from)?.datastore;
            Some(app.datastores.ca(&store))
        }
        false => None,
    };
    let mut leases = Vec::with_capacity(g.batches.len());
    for b in g.batches {
        let at = usize::try_from(b.manifest_offset - first).expect("within the range read");
        let files = decode_lines(&lines[at..at + b.manifest_len as usize]).map_err(manifest)?;
        let in_place =
            g.record.inputs_in_place.clone().map(|root| cove_api::worker::InPlace { root, paths: files.clone() });
        let (signed_inputs, signed_inputs_ca) = match &direct_ca {
            Some(ca) => (Some(sign_inputs(app, &g.record.input.uri, &files, expires_in_ms).await?), ca.clone()),
            None => (None, None),
        };
        let files = files.iter().map(|f| f.rsplit('/').next().unwrap_or(f).to_string()).collect();
        leases.push(Lease {
            in_place,
            signed_inputs,
            signed_inputs_ca,
            lease_id: b.lease_id,
            job: g.job.clone(),
            batch_index: b.idx,
            attempt: b.attempt,
            expires_in_ms,
            files,
            run: g.record.run.clone(),
        });
    }
    Ok(leases)
}

/// How long a signed input URL stays valid: the lease's life plus the time a slow store may take to
/// answer, and never more than [`SIGNED_URL_MAX`], whatever the job's timeout. A worker that reaches a
/// lease after its URLs expired asks for new ones (`signed_inputs`).
pub fn signed_url_life(lease_ms: u64) -> Duration {
    (Duration::from_millis(lease_ms) + Duration::from_secs(60)).min(SIGNED_URL_MAX)
}

/// The longest a signed input URL lives.
pub const SIGNED_URL_MAX: Duration = Duration::from_secs(3600);

/// Signs a URL per input file for reading that file only, for [`signed_url_life`].
async fn sign_inputs(app: &AppRef, input_uri: &str, files: &[String], lease_ms: u64) -> ApiResult<Vec<String>> {
    let input = parse_uri(input_uri).map_err(ApiError::from)?;
    let signer = app
        .datastores
        .signer(&input.datastore)
        .ok_or_else(|| ApiError::internal("sign input URLs", format!("datastore `{}` cannot sign", input.datastore)))?;
    let valid = signed_url_life(lease_ms);
    let mut urls = Vec::with_capacity(files.len());
    for file in files {
        let url = signer
            .signed_url(axum::http::Method::GET, &cove_datastore::object_path_of(file), valid)
            .await
            .map_err(|e| ApiError::internal("sign an input URL", e.to_string()))?;
        urls.push(url.to_string());
    }
    Ok(urls)
}

/// The lease, if it is current and its job runs on the caller's own compute cluster: a worker
/// credential of one compute can do nothing with another compute's leases.
/// Scoring code runs only on hosts that can sandbox it (unless the workspace opted out): a worker
/// launched for a job that needs the sandbox, on a host that cannot build it, fails that job with the
/// host's reason. Returns whether it did.
async fn fail_unsandboxable(app: &AppRef, w: &Principal, req: &LeaseRequest, job: &str) -> ApiResult<bool> {
    let key = job.to_string();
    let Some(row) = app.store.call(move |c| store::job_get(c, &key)).await? else {
        return Ok(false);
    };
    let run = &row.record.run;
    let needs_sandbox = run.onnx_model.is_none() && run.sandbox == cove_api::worker::SandboxMode::Namespaces;
    if !needs_sandbox || w.compute.as_deref() != Some(row.compute.as_str()) {
        return Ok(false);
    }
    let reason = format!(
        "the scorer host of worker `{}` cannot build the scoring sandbox ({}); install bubblewrap there and allow \
         unprivileged user namespaces, or start the workspace with `cove up --sandbox none` to run scoring code without one",
        req.node,
        req.host.sandbox_problem.as_deref().unwrap_or("it did not say why")
    );
    use cove_model::JobStatus::*;
    let key = job.to_string();
    let failed = app
        .store
        .call(move |c| store::job_transition(c, &key, &[NotStarted, Preparing, Queued, Running], Failed, Some(&reason)))
        .await?;
    if failed {
        jobs::ended(app.control.clone(), job.to_string());
    }
    Ok(true)
}

async fn current(app: &AppRef, lease: &str, w: &Principal) -> ApiResult<LeaseInfo> {
    let id = lease.to_string();
    let info = app.store.call(move |c| store::lease_current(c, &id)).await?.ok_or_else(|| {
        ApiError::conflict(format!("lease `{lease}` is not current (expired, completed, or its job ended)"))
    })?;
    same_compute(lease, &info.compute, w)?;
    Ok(info)
}

fn same_compute(lease: &str, compute: &str, w: &Principal) -> ApiResult<()> {
    if w.compute.as_deref() == Some(compute) {
        return Ok(());
    }
    Err(foreign_lease(lease, compute, w))
}

fn foreign_lease(lease: &str, compute: &str, w: &Principal) -> ApiError {
    ApiError::new(
        ErrorCode::PermissionDenied,
        format!(
            "lease `{lease}` belongs to a job on compute `{compute}`; this credential is compute `{}`'s",
            w.compute.as_deref().unwrap_or("-")
        ),
    )
}

/// A worker as the audit log names it: its credential and its compute.
fn worker_principal(w: &Principal) -> String {
    format!("{} (worker of {})", w.token_id, w.compute.as_deref().unwrap_or("-"))
}

/// Writes who uploaded what a job may publish: the compute, its credential, the lease.
/// Written in the same store trip that records the upload with its attempt.
fn upload_audit(w: &Principal, source: guard::Source, what: String, job: &str, idx: u64, lease: &str) -> AuditEntry {
    AuditEntry {
        time: String::new(),
        principal: worker_principal(w),
        source: source.0.to_string(),
        action: what,
        resource: format!("job {job} mini-batch {idx}"),
        outcome: "ok".into(),
        detail: Some(format!("lease {lease}")),
    }
}

/// A new client certificate for the calling worker's compute, recorded as that compute's like every
/// other, so revoking the compute's credentials revokes it too. Only a worker that already holds a
/// current certificate and token of the compute gets here (`Worker`), so renewing grants nothing new.
pub async fn renew_credential(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Extension(source): Extension<guard::Source>,
    Extension(presented): Extension<guard::ClientCertificate>,
) -> JsonResult<cove_api::worker::RenewedCredential> {
    let compute =
        w.compute.clone().ok_or_else(|| ApiError::internal("renew a credential", "a worker without a compute"))?;
    // The `Worker` extractor let only a current certificate of this compute through.
    let presented = presented.0.ok_or_else(|| ApiError::internal("renew a credential", "no client certificate"))?;
    let marking = presented.clone();
    // A third of a worker certificate's life, as workers wait for its last third.
    let min_age_ms = cove_tls::CLIENT_DAYS * 86_400_000 / 3;
    let renewable =
        app.store.call(move |c| store::worker_certificate_renewing(c, &marking, store::now_ms(), min_age_ms)).await?;
    if let Err(why) = renewable {
        // Logged, not audited: a worker asking again and again must not grow the store.
        tracing::warn!(compute, certificate = presented, source = %source.0, why, "a worker certificate renewal was refused");
        return Err(ApiError::conflict(why));
    }
    let (issuing, for_compute) = (app.clone(), compute.clone());
    let issued = tokio::task::spawn_blocking(move || {
        cove_workspace::tls::issue_client_certificate(&issuing.tls.authority, &issuing.store, &for_compute)
    })
    .await
    .map_err(|e| ApiError::internal("renew a credential", e.to_string()))
    .and_then(|r| r.map_err(|e| ApiError::internal("renew a credential", format!("{e:#}"))));
    let issued = match issued {
        Ok(issued) => issued,
        Err(e) => {
            // Nothing was issued: the certificate may be renewed again.
            app.store.call(move |c| store::worker_certificate_not_renewed(c, &presented)).await?;
            return Err(e);
        }
    };
    // Issuing a credential is audited, as the owner's issuing is; other worker requests are not.
    guard::audit(
        &app,
        worker_principal(&w),
        source.0,
        "POST /worker/v1/credential".into(),
        format!("compute {compute}"),
        "ok".into(),
        Some(format!(
            "certificate {} valid until {}",
            issued.fingerprint,
            cove_store::timestamp(issued.not_after * 1000)
        )),
    )
    .await;
    Ok(Json(cove_api::worker::RenewedCredential {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        not_after: issued.not_after,
    }))
}

pub async fn heartbeat(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Path(lease): Path<String>,
) -> JsonResult<serde_json::Value> {
    let id = lease.clone();
    let compute = w.compute.clone().unwrap_or_default();
    if !app.store.call(move |c| store::lease_heartbeat(c, &id, &compute, LEASE_GRACE_MS)).await? {
        return Err(ApiError::conflict(format!("lease `{lease}` is not a current lease of this compute")));
    }
    Ok(Json(serde_json::json!({ "lease": lease })))
}

/// `GET /worker/v1/leases/{lease}/signed-inputs`: new signed URLs for a current lease's files, for a
/// worker that reached the lease after the URLs it was granted with expired.
pub async fn signed_inputs(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Path(lease): Path<String>,
) -> JsonResult<Vec<String>> {
    let info = current(&app, &lease, &w).await?;
    if !info.record.inputs_direct {
        return Err(ApiError::conflict(format!("lease `{lease}` reads its inputs through the control plane")));
    }
    let files = batch_files(&app, &info.job, info.manifest_offset, info.manifest_len)
        .await
        .map_err(|e| ApiError::internal("read the manifest", format!("{e:#}")))?;
    let lease_ms = info.record.settings.retry_settings.timeout_secs * 1000 + LEASE_GRACE_MS as u64;
    Ok(Json(sign_inputs(&app, &info.record.input.uri, &files, lease_ms).await?))
}

/// All of a lease's files in one bundle (see `cove_api::worker::bundle`); a file that cannot be read
/// travels as its reason, so the worker fails that item and scores the others.
pub async fn get_files(State(app): State<AppRef>, Worker(w): Worker, Path(lease): Path<String>) -> ApiResult<Body> {
    let info = current(&app, &lease, &w).await?;
    let files = batch_files(&app, &info.job, info.manifest_offset, info.manifest_len)
        .await
        .map_err(|e| ApiError::internal("read the manifest", format!("{e:#}")))?;
    let input = parse_uri(&info.record.input.uri).map_err(ApiError::from)?;
    let store = app.datastores.get(&input.datastore).map_err(ApiError::from)?;
    let local = app.datastores.local_root(&input.datastore);
    let reads = files.into_iter().map(|file| {
        let (store, local) = (store.clone(), local.clone());
        async move {
            if let Some(root) = local {
                let name = file.clone();
                return tokio::task::spawn_blocking(move || cove_datastore::read_local(&root, &name))
                    .await
                    .unwrap_or_else(|e| Err(cove_datastore::DatastoreError::Unreachable(e.to_string())))
                    .map_err(|why| format!("cannot read input file `{file}`: {why}"));
            }
            let got = store.get(&cove_datastore::object_path_of(&file)).await;
            let failed = |e: object_store::Error| {
                cove_api::redact::url_queries(&format!("cannot read input file `{file}`: {e}"))
            };
            match got {
                Ok(r) => r.bytes().await.map_err(failed),
                Err(e) => Err(failed(e)),
            }
        }
    });
    use futures::StreamExt;
    let contents: Vec<Result<Bytes, String>> = futures::stream::iter(reads).buffered(8).collect().await;
    let read: usize = contents.iter().filter_map(|c| c.as_ref().ok()).map(|b| b.len()).sum();
    app.metrics.datastore_bytes.with_label_values(&["read"]).inc_by(read as u64);
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
    let path = parse_uri(uri).map_err(ApiError::from)?;
    let base = if kind == "model" {
        path.path.rsplit_once('/').map_or(String::new(), |(p, _)| p.to_string())
    } else {
        path.path.clone()
    };
    Ok((path, base))
}

pub async fn list_asset(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Path((lease, kind)): Path<(String, String)>,
) -> JsonResult<AssetListing> {
    let info = current(&app, &lease, &w).await?;
    let (root, base) = asset_root(&info, &kind)?;
    let store = app.datastores.get(&root.datastore).map_err(ApiError::from)?;
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
    Worker(w): Worker,
    Path((lease, kind, path)): Path<(String, String, String)>,
) -> ApiResult<Body> {
    let info = current(&app, &lease, &w).await?;
    let (root, base) = asset_root(&info, &kind)?;
    let rel = normalise(&path).map_err(ApiError::from)?;
    let location = if base.is_empty() { rel.clone() } else { format!("{base}/{rel}") };
    if !(location == root.path || location.starts_with(&format!("{}/", root.path))) {
        return Err(ApiError::not_found(format!("`{rel}` is not part of the {kind}")));
    }
    if let Some(folder) = app.datastores.local_root(&root.datastore) {
        let bytes = tokio::task::spawn_blocking(move || cove_datastore::read_local(&folder, &location))
            .await
            .map_err(|e| ApiError::internal("read the asset", e))?
            .map_err(|why| ApiError::not_found(format!("`{rel}` of the {kind} cannot be read: {why}")))?;
        return Ok(Body::from(bytes));
    }
    let store = app.datastores.get(&root.datastore).map_err(ApiError::from)?;
    let got = store
        .get(&object_store::path::Path::from(location))
        .await
        .map_err(|_| ApiError::not_found(format!("`{rel}` is not part of the {kind}")))?;
    Ok(Body::from_stream(got.into_stream()))
}

pub async fn put_part(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Extension(source): Extension<guard::Source>,
    Path(lease): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let info = current(&app, &lease, &w).await?;
    let key = object_store::path::Path::from(store::part_key(&info.job, info.idx, &lease));
    // Written once: a second upload for the lease with other bytes is refused, so the part that an
    // attempt commits is the part it uploaded.
    let size = super::upload::stream_once(app.internal.as_ref(), &key, body, super::UPLOAD_LIMIT).await?;
    let (id, entry) =
        (lease.clone(), upload_audit(&w, source, format!("PUT part ({size} bytes)"), &info.job, info.idx, &lease));
    app.store.call(move |c| store::attempt_mark_part(c, &id).and_then(|()| store::audit_append(c, &entry))).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file the scoring script wrote to `AZUREML_BI_OUTPUT_PATH`. It is staged with the attempt in
/// Cove's own store and published to the job's `score` folder only if this attempt is committed and
/// the job completes, in the same step as the output file.
pub async fn put_output(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Extension(source): Extension<guard::Source>,
    Path((lease, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let info = current(&app, &lease, &w).await?;
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(ApiError::invalid(format!("`{name}` is not a plain file name")));
    }
    if info.record.output_file_name.as_deref() == Some(name.as_str()) {
        return Err(ApiError::conflict(format!(
            "`{name}` is the job's output file name; the scorer cannot write it directly"
        )));
    }
    // An attempt's files are bounded in number and bytes, as the worker bounds them, so a worker that
    // does not cannot fill the disk: the last file may pass the byte limit by its own size at most.
    let id = lease.clone();
    let (files, bytes) = app.store.call(move |c| store::attempt_outputs(c, &id)).await?;
    use cove_api::worker::{MAX_OUTPUT_BYTES, MAX_OUTPUT_FILES};
    if files >= MAX_OUTPUT_FILES || bytes >= MAX_OUTPUT_BYTES {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "this attempt has staged {files} files of {bytes} bytes; one attempt may leave at most {MAX_OUTPUT_FILES} files and {MAX_OUTPUT_BYTES} bytes"
            ),
        ));
    }
    let key = format!("{}/{name}", store::staged_outputs_prefix(&info.job, &lease));
    let size = super::upload::stream_to(
        app.internal.as_ref(),
        &object_store::path::Path::from(key),
        body,
        super::UPLOAD_LIMIT,
    )
    .await?;
    let entry = upload_audit(&w, source, format!("PUT output `{name}` ({size} bytes)"), &info.job, info.idx, &lease);
    let id = lease.clone();
    app.store
        .call(move |c| store::attempt_add_output(c, &id, size).and_then(|()| store::audit_append(c, &entry)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A worker's per-process log file, through the lease it ran: only the three user logs of the node and
/// process the lease was granted to, so a worker writes no other process's logs, none of the control
/// plane's (`sys/`), and no more files than a job has processes.
pub async fn put_log(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Path((lease, path)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let info = current(&app, &lease, &w).await?;
    let rel = normalise(&path).map_err(ApiError::from)?;
    let id = lease.clone();
    let holder = app.store.call(move |c| store::lease_holder(c, &id)).await?;
    let own = holder.is_some_and(|(node, process)| {
        let p = format!("process{process:03}");
        [
            format!("user/stdout/{node}/{p}.stdout.txt"),
            format!("user/stderr/{node}/{p}.stderr.txt"),
            format!("user/error/{node}/{p}.txt"),
        ]
        .contains(&rel)
    });
    if !own {
        return Err(ApiError::invalid(format!(
            "log path `{rel}` is not a worker's to write: only the user logs of the lease's own process are"
        )));
    }
    super::upload::stream_to(app.internal.as_ref(), &logs::log_key(&info.job, &rel), body, super::UPLOAD_LIMIT).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn complete(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Path(lease): Path<String>,
    body: Bytes,
) -> JsonResult<CompletionAck> {
    let report: Completion = parse_json(&body)?;
    Ok(Json(complete_lease(&app, &w, &lease, report).await?))
}

/// The most attempts one report may carry.
const MAX_REPORTS: usize = 2 * cove_api::worker::MAX_BATCHES_PER_GRANT as usize;

/// `POST /worker/v1/reports`: the reports of attempts a worker slot ran in turn, each with its part
/// (stored before any report is applied, as `PUT part` stores it, or, when small, with the report in the
/// same transaction), and the worker's next leases, in one round trip. Every lease must be one of the caller's compute, or nothing is applied. A part of a lease
/// that is no longer current is not stored, and its report is recorded and discarded.
pub async fn reports(
    State(app): State<AppRef>,
    Worker(w): Worker,
    Extension(source): Extension<guard::Source>,
    body: Body,
) -> JsonResult<ReportsAck> {
    let invalid = |e: String| ApiError::invalid(format!("invalid report: {e}"));
    // Taken as the chunks it arrived in: the parts it carries are stored from them, never copied whole.
    let body = super::upload::chunks_of(body, cove_api::worker::REPORT_LIMIT, "report").await?;
    let mut items = cove_api::worker::bundle::split_chunks(body).map_err(invalid)?.into_iter();
    let head = items.next().ok_or_else(|| invalid("it is empty".into()))?.map_err(invalid)?.to_bytes();
    let batch: Reports = parse_json(&head)?;
    if batch.reports.is_empty() || batch.reports.len() > MAX_REPORTS {
        return Err(invalid(format!(
            "it holds {} reports; 1 to {MAX_REPORTS} may be sent at once",
            batch.reports.len()
        )));
    }
    let parts: Vec<Pieces> = items.collect::<Result<_, _>>().map_err(invalid)?;
    let announced = batch.reports.iter().filter(|r| r.part).count();
    if parts.len() != announced {
        return Err(invalid(format!("{announced} reports say a part follows, and {} parts follow", parts.len())));
    }
    let ids: Vec<String> = batch.reports.iter().map(|r| r.lease_id.clone()).collect();
    // A lease reported twice in one request would have its committed part replaced by the second.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(invalid(format!("lease `{twice}` is reported twice")));
    }
    let owners =
        app.store.call(move |c| ids.iter().map(|id| store::lease_owner(c, id)).collect::<Result<Vec<_>, _>>()).await?;
    for (r, owner) in batch.reports.iter().zip(&owners) {
        match owner {
            Some(o) => same_compute(&r.lease_id, &o.compute, &w)?,
            None => return Err(ApiError::conflict(format!("lease `{}` was never granted", r.lease_id))),
        }
    }
    let mut parts = parts.into_iter();
    let mut applied = Vec::with_capacity(batch.reports.len());
    let mut stores = Vec::new();
    // For the output's assembly (`jobs::assembly`), each report's job, mini-batch and large part, and
    // whether it failed. Small parts wait in the state store for finalizing: a job of thousands of them
    // is assembled from there in a few reads, and looking after each report cost more.
    let mut brought = Vec::with_capacity(batch.reports.len());
    for (r, owner) in batch.reports.into_iter().zip(owners) {
        let owner = owner.expect("checked above");
        let part = if r.part { parts.next() } else { None };
        let large = part.clone().filter(|p| owner.current && p.len() > store::INLINE_PART_LIMIT);
        // A failure may be a mini-batch's last, which lets the parts after it join the assembly.
        let failed = r.completion.outcome != ReportedOutcome::Succeeded;
        brought.push((owner.job.clone(), owner.idx, large, failed));
        let (mut part_audit, mut inline_part) = (None, None);
        if let Some(part) = part {
            // A part of a lease no longer current is not stored; the report records its refusal.
            let what = format!("PUT part ({} bytes)", part.len());
            part_audit = Some(upload_audit(&w, source, what, &owner.job, owner.idx, &r.lease_id));
            match (owner.current, part.len() <= store::INLINE_PART_LIMIT) {
                (false, _) => {}
                (true, true) => inline_part = Some(part.to_bytes()),
                (true, false) => {
                    let key = object_store::path::Path::from(store::part_key(&owner.job, owner.idx, &r.lease_id));
                    let internal = app.internal.clone();
                    let payload: object_store::PutPayload = part.0.into_iter().collect();
                    stores.push(async move { super::upload::put_once(internal.as_ref(), &key, payload).await });
                }
            }
        }
        applied.push(store::AttemptReported {
            outcome: attempt_outcome(&r.completion),
            pid: r.completion.pid,
            isolation: r.completion.isolation.as_ref().map(|v| v.to_string()),
            lease_id: r.lease_id,
            part_audit,
            inline_part,
        });
    }
    let stored_objects = !stores.is_empty();
    for stored in futures::future::join_all(stores).await {
        stored?;
    }
    if stored_objects {
        if let Some(pause) = cove_api::pause::pause_at("part-stored") {
            tokio::time::sleep(pause).await;
        }
    }
    let results = app.store.call(move |c| store::reports_apply(c, &applied)).await?;
    app.work_available.notify_waiters();
    let mut committed: std::collections::BTreeMap<String, Vec<(u64, Pieces)>> = Default::default();
    for (result, (job, idx, large, failed)) in results.iter().zip(brought) {
        let large = large.filter(|_| result.committed);
        if large.is_some() || failed {
            committed.entry(job).or_default().extend(large.map(|p| (idx, p)));
        }
    }
    for (job, fresh) in committed {
        tokio::spawn(jobs::assembly::advance(app.control.clone(), job, fresh));
    }
    let mut acks = Vec::with_capacity(results.len());
    for result in results {
        if let (Some(status), Some(job)) = (result.job_status, &result.job) {
            jobs::on_status(&app.control, job, status);
        }
        acks.push(CompletionAck { committed: result.committed, job_active: result.job_active });
    }
    let next = match batch.next {
        // Work that is there now; waiting for more is the lease route's.
        Some(mut req) if acks.last().is_some_and(|a| a.job_active) => {
            req.wait_ms = 0;
            lease_for(&app, &w, &req).await?.0
        }
        _ => Vec::new(),
    };
    Ok(Json(ReportsAck { acks, next }))
}

fn attempt_outcome(report: &Completion) -> AttemptOutcome {
    // A reason is shown to every reader of the job: whatever quotes a URL is kept from its query,
    // where a signed URL keeps its signature.
    let reason =
        || report.reason.as_deref().map_or_else(|| "no reason given".to_string(), cove_api::redact::url_queries);
    match report.outcome {
        ReportedOutcome::Succeeded => {
            AttemptOutcome::Succeeded { items_ok: report.items_ok, items_failed: report.items_failed }
        }
        ReportedOutcome::Failed => AttemptOutcome::Failed { reason: reason() },
        ReportedOutcome::TimedOut => AttemptOutcome::TimedOut,
        ReportedOutcome::InitFailed => AttemptOutcome::InitFailed { reason: reason() },
    }
}

/// Applies an attempt's report to its lease (only the lease's own compute may).
async fn complete_lease(app: &AppRef, w: &Principal, lease: &str, report: Completion) -> ApiResult<CompletionAck> {
    let outcome = attempt_outcome(&report);
    let id = lease.to_string();
    let pid = report.pid;
    let isolation = report.isolation.as_ref().map(|v| v.to_string());
    let compute = w.compute.clone().unwrap_or_default();
    let result = app
        .store
        .call(move |c| {
            match store::lease_compute(c, &id)? {
                Some(owner) if owner != compute => return Ok(Err(owner)),
                _ => {}
            }
            Ok(Ok(store::lease_complete_with(c, &id, &outcome, Some(pid), isolation.as_deref())?))
        })
        .await?
        .map_err(|owner| foreign_lease(lease, &owner, w))?;
    app.work_available.notify_waiters();
    if let (Some(status), Some(job)) = (result.job_status, &result.job) {
        jobs::on_status(&app.control, job, status);
    }
    Ok(CompletionAck { committed: result.committed, job_active: result.job_active })
}
