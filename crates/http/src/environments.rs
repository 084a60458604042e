//! Handlers for registered environments: `cove environment create|list|show`.

use super::{parse_json, ApiError, JsonResult, User};
use crate::AppRef;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cove_api::{CreateEnvironment, Environment, EnvironmentBuildInfo, EnvironmentDetail};
use cove_store as store;
use cove_store::auth::Role;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The end of a build log that `show` includes.
const LOG_TAIL_LINES: usize = 40;

pub async fn create(
    State(app): State<AppRef>,
    user: User,
    body: Bytes,
) -> super::ApiResult<(StatusCode, Json<Environment>)> {
    user.require(Role::Contributor, None)?;
    let req: CreateEnvironment = parse_json(&body)?;
    let def = req.definition;
    let name = def.name.clone().ok_or_else(|| ApiError::invalid("name: required"))?;
    let name = cove_spec::validate_resource_name("name", &name).map_err(ApiError::invalid)?;
    if req.conda_file.is_none() && req.pip_file.is_none() {
        return Err(ApiError::invalid(
            "conda_file: an environment needs a conda_file or a pip_file; Cove builds from them (an image alone is not run)",
        ));
    }
    // Refuse now what a build would refuse later.
    cove_spec::requirements(req.conda_file.as_deref(), req.pip_file.as_deref()).map_err(ApiError::invalid)?;
    let version = match def.version.as_deref() {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ApiError::invalid(format!("version: `{v}` is not a positive whole number")))?,
    };
    let env = Environment {
        name: name.clone(),
        version,
        description: def.description,
        image: def.image,
        conda_file: req.conda_file,
        pip_file: req.pip_file,
        overrides: def.overrides,
        allow_source_builds: def.allow_source_builds,
        created_at: cove_store::timestamp(store::now_ms()),
    };
    let created = app
        .store
        .call(move |c| {
            store::versioned_create(c, store::Versioned::Environment, &name, version, |version| Environment {
                version,
                ..env
            })
        })
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "version: this environment's version {version} exists already (leave version out for the next one)"
            ))
        })?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    name: Option<String>,
}

pub async fn list(State(app): State<AppRef>, user: User, Query(q): Query<ListQuery>) -> JsonResult<Vec<Environment>> {
    user.require(Role::Reader, None)?;
    let name = q.name.map(|n| n.to_ascii_lowercase());
    Ok(Json(app.store.call(move |c| store::versioned_list(c, store::Versioned::Environment, name.as_deref())).await?))
}

pub async fn show(
    State(app): State<AppRef>,
    user: User,
    Path((name, version)): Path<(String, String)>,
) -> JsonResult<EnvironmentDetail> {
    user.require(Role::Reader, None)?;
    let v = super::resources::version_param(&version)?;
    let key = name.to_ascii_lowercase();
    let environment: Environment = app
        .store
        .call(move |c| store::versioned_get(c, store::Versioned::Environment, &key, v))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("environment `{name}` version {version} does not exist")))?;
    // The builds made from it are those of the deployments that name this version.
    let source = format!("azureml:{}:{}", environment.name, environment.version);
    let deployments = app.store.call(|c| store::deployment_list_all(c)).await?;
    let mut builds: BTreeMap<String, EnvironmentBuildInfo> = BTreeMap::new();
    for d in deployments {
        let Some(env) = d.environment.filter(|e| e.source == source) else { continue };
        let entry = builds.entry(env.key.clone()).or_insert_with(|| EnvironmentBuildInfo {
            key: env.key.clone(),
            deployments: Vec::new(),
            log_tail: log_tail(&env.log),
            log: env.log.clone(),
        });
        entry.deployments.push(format!("{}/{}", d.endpoint_name, d.name));
    }
    Ok(Json(EnvironmentDetail { environment, builds: builds.into_values().collect() }))
}

fn log_tail(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(_) => "(the log is on the host that built it)".to_string(),
    }
}
