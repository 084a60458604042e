//! Handlers for invocation (the scoring URI) and for reading, canceling and downloading jobs.

use super::resources::{deployment, endpoint};
use super::{parse_json, ApiError, ApiResult, JsonResult, User};
use crate::AppRef;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cove_api::worker::{EgressTarget, RunSpec};
use cove_api::{AttemptInfo, FailedBatch, FileEntry, InputType, Invoke, Job, JobInput, Progress};
use cove_datastore::{parse_uri, DataPath};
use cove_jobs::logs;
use cove_jobs::plan::batch_files;
use cove_store::auth::Role;
use cove_store::{self as store, JobInsert, JobRecord, JobRow, Location, LocationKind, NewJob};
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

const DEPLOYMENT_HEADER: &str = "azureml-model-deployment";
const IDEMPOTENCY_HEADERS: [&str; 3] = ["repeatability-request-id", "repeatability_request-id", "idempotency-key"];

/// Whether the compute's workers read a network datastore's files straight from the store: it can sign
/// URLs, and the compute's network is its private endpoint's network or peered with it (or the
/// workspace is public).
fn reaches_store(app: &AppRef, compute: &cove_api::Compute, datastore: &str) -> bool {
    if app.datastores.signer(datastore).is_none() {
        return false;
    }
    let policy = &app.policy;
    if policy.public_network_access {
        return true;
    }
    let network = policy
        .computes
        .iter()
        .find(|c| c.name == compute.name)
        .map(|c| c.network.clone())
        .or_else(|| compute.slurm.as_ref().and_then(|s| s.network.clone()))
        .or_else(|| policy.api_endpoints().first().map(|p| p.network.clone()));
    let service = format!("datastore:{datastore}");
    let (Some(network), Some(pe)) = (network, policy.private_endpoints.iter().find(|p| p.service == service)) else {
        return false;
    };
    policy.connected(&network, &pe.network)
}

/// The folder of a local datastore the compute's workers see at the same path: workers on this host
/// (the local compute and named clusters) see every one; a Slurm cluster's nodes see those its YAML lists
/// under `shared_datastores`; workers elsewhere see none.
fn sees_in_place(app: &AppRef, compute: &cove_api::Compute, datastore: &str) -> Option<String> {
    let root = app.datastores.local_root(datastore)?;
    let sees = match compute.kind.as_str() {
        "local" | "amlcompute" => true,
        "slurm" => compute.slurm.as_ref().is_some_and(|s| s.shared_datastores.iter().any(|d| d == datastore)),
        _ => false,
    };
    sees.then(|| root.display().to_string())
}

/// `POST /endpoints/{name}/jobs`: starts a batch job. Accepts Cove's body and the Azure ML body.
pub async fn invoke(
    State(app): State<AppRef>,
    user: User,
    Path(endpoint_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let endpoint_name = endpoint_name.to_ascii_lowercase();
    user.require(Role::Invoker, Some(&endpoint_name))?;
    let (req, idempotency_key) = read_invocation(&body, &headers)?;
    let dep = route(&app, &endpoint_name, &req).await?;
    let (settings, compute) = job_settings(&app, &dep, &req).await?;
    let input = job_input(&app, &req).await?;
    let input_path = parse_uri(&input.uri).map_err(|e| ApiError::invalid(format!("input: {e}")))?;
    let input_store =
        app.datastores.get(&input_path.datastore).map_err(|e| ApiError::invalid(format!("input: {e}")))?;
    let job_name = match &req.job_name {
        Some(n) => validate_job_name(n).map_err(|e| ApiError::invalid(format!("job_name: {e}")))?,
        None => format!("batchjob-{}", uuid::Uuid::new_v4()),
    };
    let output = match &req.output_path {
        Some(p) => {
            let output = parse_uri(p).map_err(|e| ApiError::invalid(format!("output_path: {e}")))?;
            super::ownership::check_output_scope(&user, &output)?;
            output
        }
        None => default_output(&app, &job_name),
    };
    let output_store =
        app.datastores.get(&output.datastore).map_err(|e| ApiError::invalid(format!("output_path: {e}")))?;
    // Replaying a known idempotency key must not depend on the input still being there.
    if let Some(job) = replayed(&app, &endpoint_name, idempotency_key.as_deref()).await? {
        return Ok((StatusCode::OK, Json(job)));
    }
    super::ownership::check_read(&app, &user, "input", &input_path, true).await?;
    check_input_exists(input_store.as_ref(), app.datastores.local_root(&input_path.datastore), &input).await?;
    if let Some(file) = &settings.output_file_name {
        output.join(file).map_err(|e| ApiError::invalid(format!("output_file_name: {e}")))?;
    }
    check_output_is_new(output_store.as_ref(), &output).await?;
    super::resources::refuse_planted_links(&app, &output.datastore, &output.path, "output_path").await?;
    let model = deployed_model(&app, &dep).await?;
    let record = JobRecord {
        inputs_in_place: compute.as_ref().and_then(|c| sees_in_place(&app, c, &input_path.datastore)),
        inputs_direct: compute.as_ref().is_some_and(|c| reaches_store(&app, c, &input_path.datastore)),
        input: JobInput { uri: input_path.uri(), input_type: input.input_type },
        output_uri: output.uri(),
        output_file_name: settings.output_file_name.clone(),
        run: run_spec(&app, &dep, &settings, &model),
        settings,
        model_uri: model.path.clone(),
        code_uri: dep.code_uri.clone(),
        files: None,
    };
    let new = NewJob {
        name: job_name.clone(),
        deployment: dep.name.clone(),
        compute: dep.compute.clone(),
        record,
        idempotency_key,
        output: output_location(&output, &job_name, &endpoint_name),
        endpoint: endpoint_name,
    };
    match app.store.call(move |c| store::job_insert(c, new)).await? {
        JobInsert::Created(row) => {
            tracing::info!(
                job = %row.name,
                endpoint = %row.endpoint,
                deployment = %row.deployment,
                compute = %row.compute,
                "job accepted"
            );
            cove_jobs::advance(app.control.clone(), row.name.clone());
            Ok((StatusCode::CREATED, Json(render(&app, row, false, false).await?)))
        }
        JobInsert::Existing(row) => Ok((StatusCode::OK, Json(render(&app, row, false, false).await?))),
        JobInsert::NameTaken => Err(ApiError::conflict(format!("job_name: a job named `{job_name}` already exists"))),
        JobInsert::OutputTaken(held) => Err(output_taken(&held)),
    }
}

/// The invocation (Cove's body or the Azure ML one), with the deployment header and the idempotency key.
fn read_invocation(body: &Bytes, headers: &HeaderMap) -> ApiResult<(Invoke, Option<String>)> {
    let raw: Value = parse_json(body)?;
    let mut req =
        if lowercase_keys(&raw).get("properties").is_some() { azure_body(&raw)? } else { parse_json::<Invoke>(body)? };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if req.deployment_name.is_none() {
        req.deployment_name = header(DEPLOYMENT_HEADER);
    }
    let idempotency_key = IDEMPOTENCY_HEADERS.iter().find_map(|h| header(h));
    if let Some(key) = &idempotency_key {
        if key.is_empty() || key.len() > 128 {
            return Err(ApiError::invalid("idempotency key: must be 1 to 128 characters"));
        }
    }
    Ok((req, idempotency_key))
}

/// The deployment an invocation goes to: the one it names, else the endpoint's default.
async fn route(app: &AppRef, endpoint_name: &str, req: &Invoke) -> ApiResult<cove_api::Deployment> {
    let ep = endpoint(app, endpoint_name).await?;
    let dep_name = req.deployment_name.clone().or(ep.spec.default_deployment.clone()).ok_or_else(|| {
        ApiError::invalid(format!(
            "No valid deployments to route to: endpoint `{endpoint_name}` has no default deployment. \
             Set one (cove endpoint update {endpoint_name} --set defaults.deployment_name=NAME) or name a deployment \
             (--deployment-name, or the {DEPLOYMENT_HEADER} header)"
        ))
    })?;
    deployment(app, endpoint_name, &dep_name).await
}

/// The deployment's settings with the invocation's overrides, and the compute they run on (whose
/// size bounds `instance_count`).
async fn job_settings(
    app: &AppRef,
    dep: &cove_api::Deployment,
    req: &Invoke,
) -> ApiResult<(cove_spec::DeploymentSettings, Option<cove_api::Compute>)> {
    let mut settings = dep.settings.clone();
    for (k, v) in &req.overrides {
        settings.apply_override(k, v).map_err(|e| ApiError::invalid(format!("override `{k}`: {e}")))?;
    }
    let compute_key = dep.compute.clone();
    let compute = app.store.call(move |c| store::compute_get(c, &compute_key)).await?;
    if let Some(c) = &compute {
        if settings.instance_count > c.max_instances {
            return Err(ApiError::invalid(format!(
                "instance_count: {} is more than compute `{}` allows ({})",
                settings.instance_count, c.name, c.max_instances
            )));
        }
    }
    Ok((settings, compute))
}

/// The job's input: a datastore URI, or a data asset's path (whose files must still be those it
/// registered).
async fn job_input(app: &AppRef, req: &Invoke) -> ApiResult<JobInput> {
    let input =
        req.input.clone().ok_or_else(|| ApiError::invalid("input: required (a datastore URI of a folder or file)"))?;
    let Some((name, version)) = data_asset_reference(&input.uri)? else { return Ok(input) };
    let asset = super::resources::data_asset(app, name, version).await?;
    let what = format!("input: data asset `{}` version {}", asset.name, asset.version);
    super::resources::check_unchanged(app, &what, &asset.path, asset.digest.as_deref()).await?;
    Ok(JobInput { uri: asset.path, input_type: asset.kind })
}

/// The job an earlier invocation with this idempotency key started on the endpoint, if any.
async fn replayed(app: &AppRef, endpoint_name: &str, key: Option<&str>) -> ApiResult<Option<Job>> {
    let Some(key) = key else { return Ok(None) };
    let (e, k) = (endpoint_name.to_string(), key.to_string());
    let existing = app
        .store
        .call(move |c| {
            Ok(store::job_list(c, Some(&e), None, u32::MAX)?
                .into_iter()
                .find(|j| j.idempotency_key.as_deref() == Some(&k)))
        })
        .await?;
    match existing {
        Some(job) => Ok(Some(render(app, job, false, false).await?)),
        None => Ok(None),
    }
}

/// The deployment's model version, whose files must still be those it registered.
async fn deployed_model(app: &AppRef, dep: &cove_api::Deployment) -> ApiResult<cove_api::Model> {
    let model_key = dep.model.clone();
    let model =
        app.store.call(move |c| store::model_get(c, &model_key.name, Some(model_key.version))).await?.ok_or_else(
            || ApiError::invalid(format!("model `{}` version {} no longer exists", dep.model.name, dep.model.version)),
        )?;
    let what = format!("model `{}` version {}", model.name, model.version);
    super::resources::check_unchanged(app, &what, &model.path, model.digest.as_deref()).await?;
    Ok(model)
}

/// What every attempt of the job runs, as the deployment and the job's settings say.
fn run_spec(
    app: &AppRef,
    dep: &cove_api::Deployment,
    settings: &cove_spec::DeploymentSettings,
    model: &cove_api::Model,
) -> RunSpec {
    RunSpec {
        snapshot: format!("{}-{}", dep.name, dep.created_at),
        scoring_script: dep.scoring_script.clone(),
        onnx_model: dep.onnx_model.clone(),
        model_dir_name: model.path.rsplit('/').next().unwrap_or("model").to_string(),
        python: dep.python.clone(),
        environment: dep.environment.as_ref().map(|e| e.build.clone()),
        builtin_script: dep.builtin_script.clone(),
        environment_variables: settings.environment_variables.clone(),
        logging_level: settings.logging_level,
        output_action: settings.output_action,
        timeout_secs: settings.retry_settings.timeout_secs,
        limits: settings.limits,
        sandbox: app.config.sandbox,
        egress: dep
            .egress
            .iter()
            .filter_map(|name| app.policy.private_endpoints.iter().find(|p| &p.name == name))
            .map(|p| EgressTarget { name: p.name.clone(), address: p.address })
            .collect(),
    }
}

/// `azureml:NAME@latest`, `azureml:NAME:VERSION` or `azureml:NAME` (the latest): a data asset, as
/// the reference names one; `None` for anything else.
fn data_asset_reference(uri: &str) -> ApiResult<Option<(&str, &str)>> {
    let Some(rest) = uri.strip_prefix("azureml:").filter(|r| !r.starts_with("//")) else { return Ok(None) };
    let (name, version) = match rest.split_once('@') {
        Some((name, "latest")) => (name, "latest"),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "input: `{uri}`: the only label is @latest (or name a version: azureml:NAME:VERSION)"
            )))
        }
        None => rest.split_once(':').unwrap_or((rest, "latest")),
    };
    if name.is_empty() {
        return Err(ApiError::invalid(format!("input: `{uri}` names no data asset")));
    }
    Ok(Some((name, version)))
}

fn default_output(app: &AppRef, job_name: &str) -> DataPath {
    parse_uri(&format!("azureml://datastores/{}/paths/azureml/{job_name}/score", app.datastores.default_name))
        .expect("the default output URI is well formed")
}

/// The output location a job reserves when it is created.
fn output_location(output: &DataPath, job: &str, endpoint: &str) -> Location {
    Location {
        datastore: output.datastore.clone(),
        path: output.path.clone(),
        kind: LocationKind::Output,
        owner: job.to_string(),
        endpoint: Some(endpoint.to_string()),
    }
}

fn output_taken(held: &Location) -> ApiError {
    ApiError::conflict(format!("output_path: {}; an output location belongs to one job", held.describe()))
}

/// An output location is new: nothing is there yet, neither a file nor a folder holding files.
async fn check_output_is_new(store: &dyn ObjectStore, output: &DataPath) -> ApiResult<()> {
    let taken = store.head(&output.object_path()).await.is_ok()
        || store.list(Some(&output.object_path())).try_next().await.ok().flatten().is_some();
    if taken {
        return Err(ApiError::conflict(format!(
            "output_path: `{}` already holds files; an output location must be new",
            output.uri()
        )));
    }
    Ok(())
}

async fn check_input_exists(
    store: &dyn ObjectStore,
    local_root: Option<std::path::PathBuf>,
    input: &JobInput,
) -> ApiResult<()> {
    let path = parse_uri(&input.uri).map_err(ApiError::from)?;
    let found = match input.input_type {
        InputType::UriFile => store.head(&path.object_path()).await.is_ok(),
        InputType::UriFolder if local_root.is_some() => {
            let (root, rel) = (local_root.expect("checked"), path.path.clone());
            let listed = tokio::task::spawn_blocking(move || cove_datastore::list_local_folder(&root, &rel, false))
                .await
                .map_err(|e| ApiError::internal("list the input", e))?;
            match listed {
                Ok((count, _)) => count > 0,
                Err(e) => return Err(ApiError::invalid(format!("input: `{}` cannot be listed: {e}", input.uri))),
            }
        }
        InputType::UriFolder => {
            let prefix = (!path.path.is_empty()).then(|| path.object_path());
            // One listing tells whether the folder holds any file; planning lists it again.
            match store.list_with_delimiter(prefix.as_ref()).await {
                Ok(l) => !l.objects.is_empty(),
                Err(e) => return Err(ApiError::invalid(format!("input: `{}` cannot be listed: {e}", input.uri))),
            }
        }
    };
    if !found {
        let what = match input.input_type {
            InputType::UriFile => "is not a file",
            InputType::UriFolder => "is not a folder holding files",
        };
        return Err(ApiError::invalid(format!("input: `{}` {what}", input.uri)));
    }
    Ok(())
}

fn validate_job_name(name: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!("`{name}` must be 1 to 128 letters, digits, `-` or `_`, starting with a letter"))
    }
}

fn lowercase_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.to_ascii_lowercase(), lowercase_keys(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(lowercase_keys).collect()),
        other => other.clone(),
    }
}

/// Reads the Azure ML invocation body (keys matched case-insensitively, as the reference's clients
/// send PascalCase or camelCase) into Cove's.
fn azure_body(raw: &Value) -> ApiResult<Invoke> {
    let v = lowercase_keys(raw);
    let props = &v["properties"];
    let mut req = Invoke::default();
    let str_at = |v: &Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(inputs) = props.get("inputdata").and_then(|x| x.as_object()) {
        if inputs.len() != 1 {
            return Err(ApiError::invalid("properties.InputData: a model deployment takes exactly one input"));
        }
        let (name, input) = inputs.iter().next().expect("one input");
        let kind = str_at(input, "jobinputtype").unwrap_or_else(|| "urifolder".into()).to_ascii_lowercase();
        let input_type = match kind.as_str() {
            "urifolder" | "uri_folder" => InputType::UriFolder,
            "urifile" | "uri_file" => InputType::UriFile,
            other => {
                return Err(ApiError::invalid(format!(
                    "properties.InputData.{name}.JobInputType: `{other}` is not supported by model deployments (UriFolder, UriFile)"
                )))
            }
        };
        let uri = str_at(input, "uri")
            .ok_or_else(|| ApiError::invalid(format!("properties.InputData.{name}.Uri: required")))?;
        req.input = Some(JobInput { uri, input_type });
    } else if let Some(path) = props.get("dataset").and_then(|d| str_at(d, "path")) {
        req.input = Some(JobInput { uri: path, input_type: InputType::UriFolder });
    }
    if let Some(outputs) = props.get("outputdata").and_then(|x| x.as_object()) {
        if let Some((_, out)) = outputs.iter().next() {
            req.output_path = str_at(out, "uri");
        }
    }
    if let Some(ds) = props.get("outputdataset") {
        if let (Some(ds_id), Some(path)) = (str_at(ds, "datastoreid"), str_at(ds, "path")) {
            let name = ds_id.rsplit('/').next().unwrap_or(&ds_id).to_string();
            req.output_path = Some(format!("azureml://datastores/{name}/paths/{}", path.trim_start_matches('/')));
        }
    }
    let mut o = BTreeMap::new();
    let scalar = |x: &Value| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(x) = props.get("minibatchsize").and_then(scalar) {
        o.insert("mini_batch_size".to_string(), x);
    }
    if let Some(x) = props.get("compute").and_then(|c| c.get("instancecount")).and_then(scalar) {
        o.insert("instance_count".to_string(), x);
    }
    if let Some(r) = props.get("retrysettings") {
        if let Some(x) = r.get("maxretries").and_then(scalar) {
            o.insert("max_retries".to_string(), x);
        }
        if let Some(x) = r.get("timeout").and_then(scalar) {
            o.insert("timeout".to_string(), x);
        }
    }
    if let Some(x) = props.get("errorthreshold").and_then(scalar) {
        o.insert("error_threshold".to_string(), x);
    }
    if let Some(x) = props.get("outputfilename").and_then(scalar) {
        o.insert("output_file_name".to_string(), x);
    }
    req.overrides = o;
    req.job_name = str_at(props, "name");
    Ok(req)
}

/// How many attempts `cove job show` lists.
const SHOWN_ATTEMPTS: u32 = 1000;

/// Renders a job for the API; `detail` adds the failed mini-batches with their first file, and
/// `with_attempts` the first attempts with what they ran under.
async fn render(app: &AppRef, row: JobRow, detail: bool, with_attempts: bool) -> ApiResult<Job> {
    let name = row.name.clone();
    let (counts, failed, attempts) = app
        .store
        .call(move |c| {
            let failed = if detail { store::batches_in_state(c, &name, "failed")? } else { Vec::new() };
            let attempts =
                if detail && with_attempts { store::attempts_of(c, &name, Some(SHOWN_ATTEMPTS))? } else { Vec::new() };
            Ok((store::batch_state_counts(c, &name)?, failed, attempts))
        })
        .await?;
    let attempts = attempts
        .into_iter()
        .map(|a| AttemptInfo {
            mini_batch: a.idx,
            attempt: a.attempt,
            node: a.node,
            process: a.process,
            started_at: logs::timestamp(a.started_ms),
            outcome: a.outcome,
            reason: a.reason,
            isolation: a.isolation.and_then(|i| serde_json::from_str(&i).ok()),
        })
        .collect();
    let count = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let mut failed_batches = Vec::new();
    for b in failed {
        let first_file = batch_files(app, &row.name, b.manifest_offset, b.manifest_len)
            .await
            .ok()
            .and_then(|f| f.into_iter().next())
            .unwrap_or_default();
        failed_batches.push(FailedBatch {
            index: b.idx,
            first_file,
            files: b.files,
            reason: b.error.unwrap_or_default(),
        });
    }
    let c = row.counters;
    Ok(Job {
        name: row.name,
        endpoint_name: row.endpoint,
        deployment_name: row.deployment,
        status: row.status,
        created_at: logs::timestamp(row.created_ms),
        finished_at: row.finished_ms.map(logs::timestamp),
        input: row.record.input,
        output_uri: row.record.output_uri,
        output_file_name: row.record.output_file_name,
        settings: row.record.settings,
        compute: row.compute,
        progress: Progress {
            files_total: row.files_total,
            batches_total: c.batches_total,
            batches_pending: count("pending"),
            batches_running: count("leased"),
            batches_not_run: count("not_run"),
            batches_succeeded: c.batches_succeeded,
            batches_failed: c.batches_failed,
            items_ok: c.items_ok,
            items_failed: c.items_failed,
        },
        error: row.error,
        failed_batches,
        idempotency_key: row.idempotency_key,
        compute_state: row.compute_state,
        attempts,
    })
}

async fn job_row(app: &AppRef, user: &User, name: &str) -> ApiResult<JobRow> {
    let key = name.to_string();
    let row = app
        .store
        .call(move |c| store::job_get(c, &key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job `{name}` does not exist")))?;
    user.require(Role::Reader, Some(&row.endpoint))?;
    Ok(row)
}

#[derive(Deserialize)]
pub struct ListQuery {
    endpoint: Option<String>,
    deployment: Option<String>,
    /// A job status (`Completed`, `Failed`, ...).
    status: Option<String>,
    /// Milliseconds since the epoch, or an RFC 3339 time: jobs created then or later.
    since: Option<String>,
    /// The last job of the page before: the next page starts after it.
    before: Option<String>,
    limit: Option<u32>,
}

/// Jobs, newest first, as a bare array like every other list of the API; a page of `limit` (100 by
/// default, 1,000 at most) continues with `before=<its last job>`.
pub async fn list(State(app): State<AppRef>, user: User, Query(q): Query<ListQuery>) -> JsonResult<Vec<Job>> {
    let endpoint = q.endpoint.map(|e| e.to_ascii_lowercase()).or(user.0.endpoint.clone());
    user.require(Role::Reader, endpoint.as_deref())?;
    let deployment = q.deployment.map(|d| d.to_ascii_lowercase());
    let limit = q.limit.unwrap_or(100).min(1000);
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            cove_model::JobStatus::parse(s)
                .ok_or_else(|| {
                    ApiError::invalid(format!("status: `{s}` is not a job status (Completed, Failed, Running, ...)"))
                })?
                .as_str()
                .to_string(),
        ),
    };
    let since = super::admin::parse_since(q.since.as_deref())?;
    if let Some(before) = q.before.clone() {
        let known = app.store.call(move |c| store::job_get(c, &before)).await?;
        if known.is_none() {
            return Err(ApiError::invalid(format!("before: job `{}` does not exist", q.before.unwrap_or_default())));
        }
    }
    let before = q.before;
    let rows = app
        .store
        .call(move |c| {
            let filter = store::JobFilter {
                endpoint: endpoint.as_deref(),
                deployment: deployment.as_deref(),
                status: status.as_deref(),
                since_ms: since,
                before: before.as_deref(),
            };
            store::job_page(c, &filter, limit)
        })
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(render(&app, row, false, false).await?);
    }
    Ok(Json(jobs))
}

pub async fn list_endpoint_jobs(
    State(app): State<AppRef>,
    user: User,
    Path(endpoint): Path<String>,
    Query(q): Query<ListQuery>,
) -> JsonResult<Vec<Job>> {
    list(State(app), user, Query(ListQuery { endpoint: Some(endpoint), ..q })).await
}

#[derive(Deserialize)]
pub struct ShowQuery {
    /// `false` leaves out the attempts: a cheap view for polling a job's status.
    #[serde(default = "yes")]
    attempts: bool,
    /// With `status`: while the job is still in that status, answer only when it leaves it or after
    /// this long (at most [`MAX_WAIT_MS`]), so a caller following a job learns of its end at once
    /// without asking over and over.
    wait_ms: Option<u64>,
    status: Option<String>,
}

/// The longest `GET /api/v1/jobs/{job}?wait_ms` holds its answer.
const MAX_WAIT_MS: u64 = 20_000;

fn yes() -> bool {
    true
}

pub async fn show(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
    Query(q): Query<ShowQuery>,
) -> JsonResult<Job> {
    let mut row = job_row(&app, &user, &name).await?;
    if let (Some(wait_ms), Some(status)) = (q.wait_ms, q.status.as_deref()) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        let waiting = |row: &JobRow| row.status.as_str() == status && !row.status.is_terminal();
        while waiting(&row) {
            // Registered before looking again, so a change in between is not missed.
            let changed = app.job_events.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            row = job_row(&app, &user, &name).await?;
            if !waiting(&row) || tokio::time::Instant::now() >= deadline {
                break;
            }
            // Status changes the notification does not cover (planning, the first lease) are seen within
            // a quarter second.
            let recheck = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250));
            let _ = tokio::time::timeout_at(recheck, changed).await;
        }
    }
    Ok(Json(render(&app, row, true, q.attempts).await?))
}

pub async fn show_endpoint_job(
    State(app): State<AppRef>,
    user: User,
    Path((_, name)): Path<(String, String)>,
    query: Query<ShowQuery>,
) -> JsonResult<Job> {
    show(State(app), user, Path(name), query).await
}

pub async fn cancel(State(app): State<AppRef>, user: User, Path(name): Path<String>) -> JsonResult<Job> {
    let row = job_row(&app, &user, &name).await?;
    user.require(Role::Invoker, Some(&row.endpoint))?;
    let key = name.clone();
    let status = app.store.call(move |c| store::job_cancel(c, &key)).await?;
    if let Some(s) = status {
        if s == cove_model::JobStatus::Canceled && !row.status.is_terminal() {
            cove_jobs::ended(app.control.clone(), name.clone());
        }
    }
    let row = job_row(&app, &user, &name).await?;
    Ok(Json(render(&app, row, true, true).await?))
}

/// Where a job's named output lives: `score` in its datastore, `logs` in Cove's own store.
enum OutputRoot {
    /// The job's output location and exactly what the job published there (nothing unless it completed).
    Score {
        store: std::sync::Arc<dyn ObjectStore>,
        /// The folder of a local datastore, whose files are opened through `cove_common::beneath`.
        local: Option<std::path::PathBuf>,
        root: String,
        published: Vec<(String, u64)>,
    },
    Logs {
        root: String,
    },
}

async fn output_root(app: &AppRef, row: &JobRow, output: &str) -> ApiResult<OutputRoot> {
    match output {
        "score" => {
            if !row.status.is_terminal() {
                return Err(ApiError::conflict(format!(
                    "job `{}` is {}; outputs can be downloaded once it has ended",
                    row.name, row.status
                )));
            }
            let p = parse_uri(&row.record.output_uri).map_err(ApiError::from)?;
            let name = row.name.clone();
            let published = app.store.call(move |c| store::published_of(c, &name)).await?;
            let store = app.datastores.get(&p.datastore).map_err(ApiError::from)?;
            let local = app.datastores.local_root(&p.datastore);
            Ok(OutputRoot::Score { store, local, root: p.path, published })
        }
        "logs" => Ok(OutputRoot::Logs { root: logs::logs_prefix(&row.name).to_string() }),
        other => Err(ApiError::not_found(format!("job `{}` has no output `{other}` (outputs: score, logs)", row.name))),
    }
}

/// Lists a job's output: for `score`, exactly the files the job published (a failed or canceled job
/// published nothing), never anything else that lies under its location.
pub async fn list_output(
    State(app): State<AppRef>,
    user: User,
    Path((name, output)): Path<(String, String)>,
) -> JsonResult<Vec<FileEntry>> {
    let row = job_row(&app, &user, &name).await?;
    let root = match output_root(&app, &row, &output).await? {
        OutputRoot::Score { published, .. } => {
            return Ok(Json(published.into_iter().map(|(path, size)| FileEntry { path, size }).collect()))
        }
        OutputRoot::Logs { root } => root,
    };
    let prefix = object_store::path::Path::from(root.as_str());
    let mut entries: Vec<FileEntry> = app
        .internal
        .list(Some(&prefix))
        .map_ok(|m| FileEntry {
            path: m
                .location
                .as_ref()
                .strip_prefix(root.as_str())
                .unwrap_or(m.location.as_ref())
                .trim_start_matches('/')
                .to_string(),
            size: m.size,
        })
        .try_collect()
        .await
        .map_err(|e| ApiError::internal("list the job's output", e))?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Json(entries))
}

pub async fn get_output(
    State(app): State<AppRef>,
    user: User,
    Path((name, output, path)): Path<(String, String, String)>,
) -> ApiResult<Body> {
    let row = job_row(&app, &user, &name).await?;
    let rel = cove_datastore::normalise(&path).map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    let missing = || ApiError::not_found(format!("`{rel}` is not in output `{output}`"));
    let (store, location) = match output_root(&app, &row, &output).await? {
        OutputRoot::Score { store, local, root, published } => {
            if !published.iter().any(|(p, _)| *p == rel) {
                return Err(missing());
            }
            if let Some(fs_root) = local {
                // Never through a link: someone who can write the folder could swap a published
                // folder for one whose file links to the owner's files.
                let at = format!("{root}/{rel}");
                let opened = tokio::task::spawn_blocking(move || cove_common::beneath::open(&fs_root, &at)).await;
                let file = opened.map_err(|e| ApiError::internal("open an output file", e))?.map_err(|why| {
                    ApiError::not_found(format!("`{rel}` of output `{output}` cannot be read: {why}"))
                })?;
                return Ok(Body::from_stream(file_chunks(tokio::fs::File::from_std(file))));
            }
            (store, cove_datastore::object_path_of(&format!("{root}/{rel}")))
        }
        OutputRoot::Logs { root } => (app.internal.clone(), object_store::path::Path::from(format!("{root}/{rel}"))),
    };
    let got = store.get(&location).await.map_err(|_| missing())?;
    Ok(Body::from_stream(got.into_stream()))
}

/// A file's bytes as a stream of chunks, read as the body is sent.
fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 256 * 1024];
        let n = file.read(&mut chunk).await?;
        chunk.truncate(n);
        Ok((n > 0).then(|| (Bytes::from(chunk), file)))
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    #[serde(default)]
    failed_only: bool,
}

/// Starts a new job over the same inputs with the same settings; with `failed_only`, over the files of
/// the mini-batches that failed. The new job writes to its own default output location.
pub async fn rerun(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let row = job_row(&app, &user, &name).await?;
    user.require(Role::Invoker, Some(&row.endpoint))?;
    let req: RerunRequest = if body.is_empty() { RerunRequest::default() } else { parse_json(&body)? };
    if !row.status.is_terminal() {
        return Err(ApiError::conflict(format!("job `{name}` is {}; rerun it once it has ended", row.status)));
    }
    let mut record = row.record.clone();
    if req.failed_only {
        let key = name.clone();
        let failed = app.store.call(move |c| store::batches_in_state(c, &key, "failed")).await?;
        let mut files = Vec::new();
        for b in failed {
            files.extend(
                batch_files(&app, &name, b.manifest_offset, b.manifest_len)
                    .await
                    .map_err(|e| ApiError::internal("read the manifest", format!("{e:#}")))?,
            );
        }
        if files.is_empty() {
            return Err(ApiError::invalid(format!("job `{name}` has no failed mini-batch to rerun")));
        }
        record.files = Some(files);
    }
    let job_name = format!("batchjob-{}", uuid::Uuid::new_v4());
    let output = default_output(&app, &job_name);
    record.output_uri = output.uri();
    let new = NewJob {
        name: job_name.clone(),
        endpoint: row.endpoint.clone(),
        deployment: row.deployment.clone(),
        compute: row.compute.clone(),
        record,
        idempotency_key: None,
        output: output_location(&output, &job_name, &row.endpoint),
    };
    match app.store.call(move |c| store::job_insert(c, new)).await? {
        JobInsert::Created(row) => {
            cove_jobs::advance(app.control.clone(), row.name.clone());
            Ok((StatusCode::CREATED, Json(render(&app, row, false, false).await?)))
        }
        JobInsert::OutputTaken(held) => Err(output_taken(&held)),
        _ => Err(ApiError::conflict(format!("job `{job_name}` already exists"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, biased towards the keys the invocation bodies use.
    fn json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("properties".to_string()),
            Just("InputData".to_string()),
            Just("OutputData".to_string()),
            Just("JobInputType".to_string()),
            Just("Uri".to_string()),
            Just("miniBatchSize".to_string()),
            Just("retrySettings".to_string()),
            Just("input".to_string()),
            Just("overrides".to_string()),
            "[a-zA-Z_]{1,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::from(n)),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every request body type and the Azure ML body reader refuse hostile JSON with an error,
        /// never a panic.
        #[test]
        fn request_bodies_never_panic(value in json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            let _ = azure_body(&value);
            let _ = parse_json::<Invoke>(&bytes);
            let _ = parse_json::<cove_api::CreateDeployment>(&bytes);
            let _ = parse_json::<cove_api::CreateModel>(&bytes);
            let _ = parse_json::<cove_api::CreateToken>(&bytes);
            let _ = parse_json::<cove_api::CreateDatastore>(&bytes);
            let _ = parse_json::<cove_api::ComputeSpec>(&bytes);
            let _ = parse_json::<cove_api::worker::Completion>(&bytes);
            let _ = parse_json::<cove_api::worker::LeaseRequest>(&bytes);
            let _ = parse_json::<cove_spec::EndpointSpec>(&bytes);
            if let Ok(mut settings) = serde_json::from_value::<BTreeMap<String, String>>(value.clone()) {
                let mut s = cove_spec::DeploymentSettings::default();
                for (k, v) in std::mem::take(&mut settings) {
                    let _ = s.apply_override(&k, &v);
                }
                prop_assert!(s.mini_batch_size >= 1 && s.retry_settings.max_retries >= 1);
            }
        }
    }
}
