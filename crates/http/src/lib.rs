//! The HTTP surface: the user API under `/api/v1`, the scoring URIs under `/endpoints`, and the worker
//! protocol under `/worker/v1`. Handlers parse, authorise, call the store or the job lifecycle, and render.

mod admin;
pub mod connections;
pub mod diagnose;
mod envcheck;
pub mod environment_builds;
mod environments;
mod error;
pub mod guard;
mod health;
mod jobs;
mod metrics;
pub mod modelcheck;
mod ownership;
pub mod refusals;
mod resources;
pub mod studio;
mod upload;
mod worker;

pub use error::{ApiError, ApiResult, ErrorCode};

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cove_store::auth::{self, Principal, Role, TokenKind};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The control plane as its request handlers see it: the job lifecycle's state, and what only the
/// HTTP surface keeps (connections, refusal counts, sessions, what workers said of themselves).
pub struct App {
    pub control: cove_jobs::ControlRef,
    /// The connections the listeners hold open, per source (`connections`).
    pub connections: Arc<connections::Connections>,
    /// How many refusals the audit log takes one by one (`refusals`).
    pub refusals: refusals::RefusalBudget,
    /// Per compute cluster, the address and time of the last worker call that was admitted.
    pub worker_contact: Mutex<HashMap<String, (std::net::IpAddr, i64)>>,
    /// Per compute cluster, what the host of its last worker to ask for work said it can do.
    pub worker_hosts: Mutex<HashMap<String, (String, cove_api::worker::HostCapabilities)>>,
    /// The addresses the API actually listens on.
    pub listeners: Vec<std::net::SocketAddr>,
    /// Where environment builds get packages; none configured means deployments cannot ask for one.
    pub package_source: Option<cove_api::worker::PackageSource>,
    /// Environments being prepared for deployments not stored yet: never collected.
    pub building: Mutex<HashSet<String>>,
    /// The studio's signed-in sessions.
    pub sessions: studio::Sessions,
}

impl App {
    pub fn new(
        control: cove_jobs::ControlRef,
        listeners: Vec<std::net::SocketAddr>,
        package_source: Option<cove_api::worker::PackageSource>,
    ) -> App {
        App {
            control,
            connections: Default::default(),
            refusals: Default::default(),
            worker_contact: Default::default(),
            worker_hosts: Default::default(),
            listeners,
            package_source,
            building: Default::default(),
            sessions: Default::default(),
        }
    }
}

impl std::ops::Deref for App {
    type Target = cove_jobs::Control;
    fn deref(&self) -> &cove_jobs::Control {
        &self.control
    }
}

pub type AppRef = Arc<App>;

/// JSON bodies larger than this get 413.
const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// Uploaded files (datastore uploads, parts, logs) larger than this get 413.
pub(crate) const UPLOAD_LIMIT: u64 = 512 * 1024 * 1024;

pub fn router(app: AppRef) -> Router {
    let uploads = Router::new()
        .route("/api/v1/datastores/{datastore}/files/{*path}", put(resources::upload))
        .route("/worker/v1/leases/{lease}/part", put(worker::put_part))
        .route("/worker/v1/leases/{lease}/outputs/{*name}", put(worker::put_output))
        .route("/worker/v1/leases/{lease}/logs/{*path}", put(worker::put_log))
        .layer(DefaultBodyLimit::max(UPLOAD_LIMIT as usize));
    // A report is held whole while it is applied, so its part is bounded; larger parts are streamed
    // with `PUT part` first.
    let reports = Router::new()
        .route("/worker/v1/reports", post(worker::reports))
        .layer(DefaultBodyLimit::max(cove_api::worker::REPORT_LIMIT));
    Router::new()
        .route("/", get(studio::index))
        .route("/studio/studio.js", get(studio::script))
        .route("/studio/studio.css", get(studio::style))
        .route("/studio/session", post(studio::sign_in).get(studio::whoami).delete(studio::sign_out))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/workspace", get(resources::workspace))
        .route("/api/v1/workspace/diagnose", get(admin::diagnose))
        .route("/api/v1/tokens", post(admin::create_token).get(admin::list_tokens))
        .route("/api/v1/tokens/{id}", axum::routing::delete(admin::revoke_token))
        .route("/api/v1/computes", get(admin::list_computes).post(admin::create_compute))
        .route("/api/v1/datastores", post(resources::create_datastore).get(resources::list_datastores))
        .route("/api/v1/datastores/{name}", get(resources::show_datastore).delete(resources::delete_datastore))
        .route("/api/v1/computes/{name}", get(admin::show_compute).delete(admin::delete_compute))
        .route("/api/v1/computes/{name}/token", post(admin::compute_token))
        .route(
            "/api/v1/computes/{name}/credential",
            post(admin::compute_credential).delete(admin::revoke_compute_credential),
        )
        .route("/api/v1/workspace/rotate-certificates", post(admin::rotate_certificates))
        .route("/api/v1/audit", get(admin::list_audit))
        .route("/api/v1/endpoints", post(resources::create_endpoint).get(resources::list_endpoints))
        .route(
            "/api/v1/endpoints/{endpoint}",
            get(resources::show_endpoint).patch(resources::update_endpoint).delete(resources::delete_endpoint),
        )
        .route(
            "/api/v1/endpoints/{endpoint}/deployments",
            post(resources::create_deployment).get(resources::list_deployments),
        )
        .route(
            "/api/v1/endpoints/{endpoint}/deployments/{deployment}",
            get(resources::show_deployment).patch(resources::update_deployment).delete(resources::delete_deployment),
        )
        .route("/api/v1/models", post(resources::create_model).get(resources::list_models))
        .route("/api/v1/data", post(resources::create_data).get(resources::list_data))
        .route("/api/v1/data/{name}/versions/{version}", get(resources::show_data))
        .route("/api/v1/environments", post(environments::create).get(environments::list))
        .route("/api/v1/environments/{name}/versions/{version}", get(environments::show))
        .route("/api/v1/models/{name}/versions/{version}", get(resources::show_model).delete(resources::delete_model))
        .route("/api/v1/models/{name}/versions/{version}/archive", post(resources::archive_model))
        .route("/endpoints/{endpoint}/jobs", post(jobs::invoke).get(jobs::list_endpoint_jobs))
        .route("/endpoints/{endpoint}/jobs/{job}", get(jobs::show_endpoint_job))
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{job}", get(jobs::show))
        .route("/api/v1/jobs/{job}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{job}/rerun", post(jobs::rerun))
        .route("/api/v1/jobs/{job}/outputs/{output}", get(jobs::list_output))
        .route("/api/v1/jobs/{job}/outputs/{output}/{*path}", get(jobs::get_output))
        .route("/worker/v1/lease", post(worker::lease))
        .route("/worker/v1/credential", post(worker::renew_credential))
        .route("/worker/v1/leases/{lease}/heartbeat", post(worker::heartbeat))
        .route("/worker/v1/leases/{lease}/complete", post(worker::complete))
        .route("/worker/v1/leases/{lease}/files", get(worker::get_files))
        .route("/worker/v1/leases/{lease}/signed-inputs", get(worker::signed_inputs))
        .route("/worker/v1/leases/{lease}/assets/{kind}", get(worker::list_asset))
        .route("/worker/v1/leases/{lease}/assets/{kind}/{*path}", get(worker::get_asset))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .merge(uploads)
        .merge(reports)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard::guard))
        .layer(axum::middleware::from_fn(studio::security_headers))
        .layer(axum::middleware::from_fn(guard::close_unread))
        .with_state(app)
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// A caller holding a valid user token.
pub struct User(pub Principal);

/// A caller holding a valid worker credential.
pub struct Worker(pub Principal);

async fn principal(parts: &Parts, app: &AppRef) -> ApiResult<Principal> {
    Ok(principal_and_network(parts, app).await?.0)
}

/// What a worker request's credentials say, found in one trip to the store: the token's principal, the
/// network of its cluster when the cluster was registered through the API, and the compute the
/// connection's client certificate belongs to (none when it presented none, or one not current).
type WorkerCredentials = (Principal, Option<String>, Option<String>);

async fn principal_and_network(parts: &Parts, app: &AppRef) -> ApiResult<WorkerCredentials> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let secret = match header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) {
        Some(secret) => secret.to_string(),
        // The studio's session cookie stands for the token its user signed in with.
        None => studio::session_secret(app, &parts.method, &parts.headers)?.ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthenticated, "missing bearer token (Authorization: Bearer <token>)")
        })?,
    };
    let shared = app.clone();
    let presented = parts.extensions.get::<guard::ClientCertificate>().and_then(|c| c.0.clone());
    let found = app
        .store
        .call(move |c| {
            let Some(p) = auth::resolve(c, &secret)? else { return Ok(None) };
            let certified = match (&presented, p.kind) {
                (Some(fp), TokenKind::Worker) => cove_store::worker_certificate_compute(c, fp, cove_store::now_ms())?,
                _ => None,
            };
            let network = match &p.compute {
                Some(name)
                    if p.kind == TokenKind::Worker && !shared.policy.computes.iter().any(|c| &c.name == name) =>
                {
                    cove_store::compute_get(c, name)?.and_then(|c| c.slurm).and_then(|s| s.network)
                }
                _ => None,
            };
            Ok(Some((p, network, certified)))
        })
        .await?;
    found.ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthenticated, "the token is not valid (unknown, revoked or expired)")
    })
}

impl FromRequestParts<AppRef> for User {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppRef) -> ApiResult<Self> {
        let p = principal(parts, app).await?;
        if p.kind != TokenKind::User {
            return Err(ApiError::new(ErrorCode::PermissionDenied, "worker credentials cannot call the user API"));
        }
        Ok(User(p))
    }
}

impl FromRequestParts<AppRef> for Worker {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppRef) -> ApiResult<Self> {
        let (p, registered_network, certified) = principal_and_network(parts, app).await?;
        if p.kind != TokenKind::Worker {
            return Err(ApiError::new(ErrorCode::PermissionDenied, "only worker credentials can call the worker API"));
        }
        let source = parts.extensions.get::<guard::Source>().map(|s| s.0);
        if let (Some(compute), Some(ip)) = (&p.compute, source) {
            let network = match app.policy.computes.iter().find(|c| &c.name == compute) {
                Some(c) => Some(c.network.clone()),
                None => registered_network,
            };
            let admitted = match network {
                Some(network) => app.policy.admits_from(compute, &network, ip),
                // A cluster with no network of its own (a named `amlcompute` cluster, a Slurm compute
                // whose YAML names none) has its workers on this host: they reach the API from the
                // API's own address, and from nowhere else.
                None => app.policy.admits_from_this_host(compute, ip),
            };
            admitted?;
        }
        let presented = parts.extensions.get::<guard::ClientCertificate>().and_then(|c| c.0.as_deref());
        let compute = p.compute.as_deref().unwrap_or_default();
        cove_workspace::tls::check_worker_certificate(presented, certified.as_deref(), compute)
            .map_err(|why| ApiError::new(ErrorCode::Unauthenticated, why))?;
        if let (Some(compute), Some(ip)) = (&p.compute, source) {
            // Evidence for `diagnose` that the compute's network really reaches the API.
            let seen = (ip, cove_store::now_ms());
            app.worker_contact.lock().unwrap_or_else(|e| e.into_inner()).insert(compute.clone(), seen);
        }
        Ok(Worker(p))
    }
}

impl User {
    /// Refuses the call unless the token's role is at least `role` and its scope covers `endpoint`.
    pub fn require(&self, role: Role, endpoint: Option<&str>) -> ApiResult<()> {
        if self.0.role < role {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("a {} token cannot do this; it needs the {} role", self.0.role.as_str(), role.as_str()),
            ));
        }
        if let (Some(scope), Some(ep)) = (&self.0.endpoint, endpoint) {
            if scope != ep {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("the token is scoped to endpoint `{scope}`"),
                ));
            }
        }
        if self.0.endpoint.is_some() && endpoint.is_none() && role > Role::Reader {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "an endpoint-scoped token cannot change workspace resources",
            ));
        }
        Ok(())
    }
}

/// Parses a JSON body with a clear error naming the problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

pub type JsonResult<T> = ApiResult<Json<T>>;

#[cfg(test)]
mod tests {
    /// Every route the router serves is described in the OpenAPI document, and nothing else is.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let source = include_str!("lib.rs");
        let mut routes: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .map(|rest| rest.split('"').next().unwrap().replace("{*", "{"))
            .filter(|r| r.starts_with('/'))
            .collect();
        routes.sort();
        routes.dedup();
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        assert_eq!(routes, documented);
    }
}
