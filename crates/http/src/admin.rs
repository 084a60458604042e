//! Handlers for the workspace's security surface: tokens, compute credentials, the audit log, and
//! `diagnose`. All of them need the owner role, except reading the audit log (reader and up).

use super::{parse_json, ApiError, ApiResult, JsonResult, User};
use crate::AppRef;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cove_api::{AuditEntry, Check, Compute, CreateToken, Token};
use cove_jobs::logs;
use cove_store::auth::{self, Role, TokenKind};
use cove_store::{self as store, TokenRow};
use serde::Deserialize;

fn render(row: TokenRow, secret: Option<String>) -> Token {
    Token {
        id: row.id,
        kind: row.kind,
        role: row.role,
        endpoint: row.endpoint,
        compute: row.compute,
        created_at: logs::timestamp(row.created_ms),
        expires_at: row.expires_ms.map(logs::timestamp),
        revoked: row.revoked,
        secret,
    }
}

pub async fn create_token(State(app): State<AppRef>, user: User, body: Bytes) -> ApiResult<(StatusCode, Json<Token>)> {
    user.require(Role::Owner, None)?;
    let req: CreateToken = parse_json(&body)?;
    let role = match Role::parse(&req.role) {
        Some(Role::Worker) | None => {
            return Err(ApiError::invalid(format!("role: `{}` is not owner, contributor, invoker or reader", req.role)))
        }
        Some(r) => r,
    };
    let endpoint = req.endpoint.map(|e| e.to_ascii_lowercase());
    if let Some(e) = &endpoint {
        super::resources::endpoint(&app, e).await?;
    }
    let expires = match req.expires_in_secs {
        Some(0) => return Err(ApiError::invalid("expires_in: must be longer than zero")),
        Some(s) => Some(store::now_ms() + (s.min(10 * 365 * 86_400) as i64) * 1000),
        None => None,
    };
    let (id, secret) = app.store.call(move |c| auth::mint(c, TokenKind::User, role, endpoint, None, expires)).await?;
    let key = id.clone();
    let row = app
        .store
        .call(move |c| Ok(store::token_list(c)?.into_iter().find(|t| t.id == key)))
        .await?
        .expect("just minted");
    Ok((StatusCode::CREATED, Json(render(row, Some(secret)))))
}

pub async fn list_tokens(State(app): State<AppRef>, user: User) -> JsonResult<Vec<Token>> {
    user.require(Role::Owner, None)?;
    let rows = app.store.call(|c| store::token_list(c)).await?;
    Ok(Json(rows.into_iter().map(|r| render(r, None)).collect()))
}

pub async fn revoke_token(
    State(app): State<AppRef>,
    user: User,
    Path(id): Path<String>,
) -> JsonResult<serde_json::Value> {
    user.require(Role::Owner, None)?;
    let key = id.clone();
    if !app.store.call(move |c| store::token_revoke(c, &key)).await? {
        return Err(ApiError::not_found(format!("token `{id}` does not exist")));
    }
    Ok(Json(serde_json::json!({ "revoked": id })))
}

/// `cove compute create`: registers a Slurm compute cluster after checking that its controller
/// answers, its partition exists and accepts its limits; mints its worker credential.
pub async fn create_compute(
    State(app): State<AppRef>,
    user: User,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Compute>)> {
    user.require(Role::Contributor, None)?;
    let raw: serde_json::Value = parse_json(&body)?;
    match raw.get("type").and_then(|t| t.as_str()) {
        Some("amlcompute") => return create_aml_compute(&app, parse_json(&body)?).await,
        Some("slurm") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "type: `{other}` is not a compute type Cove runs (amlcompute: a cluster of workers on this host; slurm)"
            )))
        }
        None => return Err(ApiError::invalid("type: required (amlcompute or slurm)")),
    }
    let mut spec: cove_api::ComputeSpec = parse_json(&body)?;
    let name = cove_spec::validate_resource_name("name", &spec.name).map_err(ApiError::invalid)?;
    spec.name = name.clone();
    if spec.kind != "slurm" {
        return Err(ApiError::invalid(format!("type: `{}` is not supported here (slurm)", spec.kind)));
    }
    let key = name.clone();
    if app.store.call(move |c| store::compute_get(c, &key)).await?.is_some() {
        return Err(ApiError::conflict(format!("compute `{name}` already exists")));
    }
    if spec.max_nodes == 0 || spec.cpus_per_task == 0 || spec.mem_per_task_mb == 0 {
        return Err(ApiError::invalid("max_nodes, cpus_per_task and mem_per_task_mb must be at least 1"));
    }
    let network = match spec.network.clone() {
        Some(n) => n,
        None => app.policy.api_endpoints().first().map(|p| p.network.clone()).unwrap_or_default(),
    };
    if !app.policy.networks.iter().any(|n| n.name == network) {
        return Err(ApiError::invalid(format!("network: `{network}` is not a network of this workspace")));
    }
    spec.network = Some(network);
    cove_compute::slurm::validate(&spec).await.map_err(|e| ApiError::invalid(format!("compute `{name}`: {e}")))?;
    let compute = Compute {
        name: name.clone(),
        kind: "slurm".into(),
        max_instances: spec.max_nodes,
        slurm: Some(spec),
        aml: None,
    };
    let stored = compute.clone();
    app.store.call(move |c| store::compute_upsert(c, &stored)).await?;
    cove_workspace::ensure_worker_credential(&app.store, &app.tls.authority, &app.config.dir, &name)
        .map_err(|e| ApiError::internal("mint the compute's worker credential", format!("{e:#}")))?;
    Ok((StatusCode::CREATED, Json(compute)))
}

/// A named cluster of worker processes on this host, with the reference's `amlcompute` YAML.
async fn create_aml_compute(
    app: &AppRef,
    mut spec: cove_api::AmlComputeSpec,
) -> ApiResult<(StatusCode, Json<Compute>)> {
    let name = cove_spec::validate_resource_name("name", &spec.name).map_err(ApiError::invalid)?;
    spec.name = name.clone();
    if spec.max_instances == 0 {
        return Err(ApiError::invalid("max_instances: must be at least 1"));
    }
    if spec.min_instances > spec.max_instances {
        return Err(ApiError::invalid(format!(
            "min_instances: {} is more than max_instances ({})",
            spec.min_instances, spec.max_instances
        )));
    }
    if app.policy.computes.iter().any(|c| c.name == name) {
        return Err(ApiError::conflict(format!("compute `{name}` is defined by the workspace configuration")));
    }
    let key = name.clone();
    if let Some(existing) = app.store.call(move |c| store::compute_get(c, &key)).await? {
        if existing.kind != "amlcompute" {
            return Err(ApiError::conflict(format!("compute `{name}` already exists as a {} cluster", existing.kind)));
        }
    }
    let compute = Compute {
        name: name.clone(),
        kind: "amlcompute".into(),
        max_instances: spec.max_instances,
        slurm: None,
        aml: Some(spec),
    };
    let stored = compute.clone();
    app.store.call(move |c| store::compute_upsert(c, &stored)).await?;
    cove_workspace::ensure_worker_credential(&app.store, &app.tls.authority, &app.config.dir, &name)
        .map_err(|e| ApiError::internal("mint the compute's worker credential", format!("{e:#}")))?;
    // A changed max_instances applies from now on.
    if let Some(cluster) = app.clusters.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
        cluster.set_capacity(compute.max_instances);
    }
    Ok((StatusCode::CREATED, Json(compute)))
}

pub async fn show_compute(State(app): State<AppRef>, user: User, Path(name): Path<String>) -> JsonResult<Compute> {
    user.require(Role::Reader, None)?;
    let key = name.clone();
    app.store.call(move |c| store::compute_get(c, &key)).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "compute `{name}` does not exist (create one with cove compute create -f compute.yml)"
        ))
    })
}

pub async fn delete_compute(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> JsonResult<serde_json::Value> {
    user.require(Role::Contributor, None)?;
    if app.policy.computes.iter().any(|c| c.name == name) {
        return Err(ApiError::conflict(format!(
            "compute `{name}` is defined by the workspace configuration; remove it there"
        )));
    }
    let key = name.clone();
    match app.store.call(move |c| store::compute_delete(c, &key)).await? {
        Ok(true) => {
            app.clusters.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            Ok(Json(serde_json::json!({ "deleted": name })))
        }
        Ok(false) => Err(ApiError::not_found(format!("compute `{name}` does not exist"))),
        Err(why) => Err(ApiError::conflict(format!("compute `{name}` is in use: {why}"))),
    }
}

pub async fn list_computes(State(app): State<AppRef>, user: User) -> JsonResult<Vec<Compute>> {
    user.require(Role::Reader, None)?;
    Ok(Json(app.store.call(|c| store::compute_list(c)).await?))
}

/// Refuses a caller who is not an owner, and a compute that does not exist.
async fn owned_compute(app: &AppRef, user: &User, name: &str) -> ApiResult<()> {
    user.require(Role::Owner, None)?;
    let computes = app.store.call(|c| store::compute_list(c)).await?;
    if !computes.iter().any(|c| c.name == name) {
        return Err(ApiError::not_found(format!("compute `{name}` does not exist")));
    }
    Ok(())
}

/// Mints a worker credential for a compute cluster: accepted only from that cluster's network, and
/// worthless on the user API.
pub async fn compute_token(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Token>)> {
    owned_compute(&app, &user, &name).await?;
    let compute = name.clone();
    let (id, secret) =
        app.store.call(move |c| auth::mint(c, TokenKind::Worker, Role::Worker, None, Some(compute), None)).await?;
    let row = app
        .store
        .call(move |c| Ok(store::token_list(c)?.into_iter().find(|t| t.id == id)))
        .await?
        .expect("just minted");
    Ok((StatusCode::CREATED, Json(render(row, Some(secret)))))
}

/// `POST /api/v1/computes/{name}/credential`: a worker token and client certificate for the cluster's
/// workers on a host the control plane does not start them on (a Slurm cluster, external workers).
pub async fn compute_credential(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<cove_api::WorkerCredential>)> {
    owned_compute(&app, &user, &name).await?;
    let compute = name.clone();
    let (token_id, token) =
        app.store.call(move |c| auth::mint(c, TokenKind::Worker, Role::Worker, None, Some(compute), None)).await?;
    let issued = cove_workspace::tls::issue_client_certificate(&app.tls.authority, &app.store, &name)
        .map_err(|e| ApiError::internal("issue the compute's client certificate", format!("{e:#}")))?;
    let ca = tokio::fs::read_to_string(cove_workspace::tls::files::trust(&app.config.dir))
        .await
        .map_err(|e| ApiError::internal("read the workspace CA", e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(cove_api::WorkerCredential {
            compute: name,
            token_id,
            token,
            certificate: issued.cert_pem,
            key: issued.key_pem,
            ca,
            expires_at: logs::timestamp(issued.not_after * 1000),
        }),
    ))
}

/// `DELETE /api/v1/computes/{name}/credential`: revokes every worker token and client certificate of
/// the cluster, at once: the next request of any of its workers is refused. Workers the control plane
/// starts later get a new credential.
pub async fn revoke_compute_credential(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> JsonResult<cove_api::CredentialRevoked> {
    owned_compute(&app, &user, &name).await?;
    let compute = name.clone();
    let (certificates, tokens) = app
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let counts =
                (store::worker_certificates_revoke(&tx, &compute)?, store::worker_tokens_revoke(&tx, &compute)?);
            tx.commit()?;
            Ok(counts)
        })
        .await?;
    Ok(Json(cove_api::CredentialRevoked { compute: name, certificates, tokens }))
}

/// `POST /api/v1/workspace/rotate-certificates`: a new certificate for the listeners (new connections
/// get it; open ones keep theirs) and new client certificates for the clusters whose workers this
/// control plane starts. Earlier worker certificates stay valid until they expire, so running workers
/// go on; workers started from now on use the new ones.
pub async fn rotate_certificates(State(app): State<AppRef>, user: User) -> JsonResult<cove_api::RotatedCertificates> {
    user.require(Role::Owner, None)?;
    let not_after =
        cove_workspace::tls::rotate_server(&app.tls, &app.config.dir).map_err(|e| match &app.tls.brought {
            // The user's files are what is wrong: said as a refusal, naming them, not as a server fault.
            Some(_) => ApiError::invalid(format!("{e:#}")),
            None => ApiError::internal("renew the listeners' certificate", format!("{e:#}")),
        })?;
    let server_expires_at = logs::timestamp(not_after * 1000);
    let server_certificate_from = app.tls.brought.as_ref().map(|b| b.certificate.display().to_string());
    let mut computes = Vec::new();
    let on_this_host = app.store.call(|c| store::compute_list(c)).await?;
    for c in on_this_host {
        if cove_workspace::tls::files::compute_cert(&app.config.dir, &c.name).exists() {
            cove_workspace::tls::issue_worker_certificate(&app.tls.authority, &app.store, &app.config.dir, &c.name)
                .map_err(|e| ApiError::internal("renew a compute's client certificate", format!("{e:#}")))?;
            computes.push(c.name);
        }
    }
    Ok(Json(cove_api::RotatedCertificates { server_expires_at, server_certificate_from, computes }))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    /// Milliseconds since the epoch, or an RFC 3339 time.
    since: Option<String>,
    limit: Option<u32>,
}

pub async fn list_audit(
    State(app): State<AppRef>,
    user: User,
    Query(q): Query<AuditQuery>,
) -> JsonResult<Vec<AuditEntry>> {
    user.require(Role::Reader, None)?;
    if user.0.endpoint.is_some() {
        return Err(ApiError::new(
            super::ErrorCode::PermissionDenied,
            "an endpoint-scoped token cannot read the audit log",
        ));
    }
    let since = parse_since(q.since.as_deref())?.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let rows = app.store.call(move |c| store::audit_since(c, since, limit)).await?;
    Ok(Json(rows.into_iter().map(|(ts, e)| AuditEntry { time: logs::timestamp(ts), ..e }).collect()))
}

pub async fn diagnose(State(app): State<AppRef>, user: User) -> JsonResult<Vec<Check>> {
    user.require(Role::Reader, None)?;
    Ok(Json(crate::diagnose::run(&app).await?))
}

/// A `since` query parameter: milliseconds since the epoch, or an RFC 3339 time.
pub fn parse_since(since: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(s) = since else { return Ok(None) };
    s.parse::<i64>()
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()))
        .map(Some)
        .map_err(|_| ApiError::invalid(format!("since: `{s}` is not a time (RFC 3339, e.g. 2026-01-31T12:00:00Z)")))
}
