//! Handlers for the workspace's resources: endpoints, deployments, models and datastore uploads.

use super::{parse_json, ApiError, ApiResult, JsonResult, User};
use crate::{envcheck, AppRef};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cove_api::worker::SandboxMode;
use cove_api::{
    CreateDeployment, CreateModel, Deployment, Endpoint, Model, ModelVersionRef, UpdateEndpoint, Workspace,
};
use cove_datastore::{normalise, parse_uri, DataPath};
use cove_spec::{EndpointSpec, EnvironmentRef, ModelRef, ModelType, ModelVersion};
use cove_store as store;
use cove_store::auth::Role;
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn now() -> String {
    cove_store::timestamp(store::now_ms())
}

pub async fn workspace(State(app): State<AppRef>, user: User) -> JsonResult<Workspace> {
    user.require(Role::Reader, None)?;
    let (datastores, computes) = app.store.call(|c| Ok((store::datastore_list(c)?, store::compute_list(c)?))).await?;
    Ok(Json(Workspace {
        name: app.config.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        api_url: app.url.clone(),
        default_datastore: app.datastores.default_name.clone(),
        default_python: app.config.python.clone(),
        sandbox: app.config.sandbox.as_str().to_string(),
        datastores,
        computes,
    }))
}

pub async fn create_endpoint(
    State(app): State<AppRef>,
    user: User,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Endpoint>)> {
    user.require(Role::Contributor, None)?;
    let spec: EndpointSpec = parse_json(&body)?;
    let name = cove_spec::validate_resource_name("name", &spec.name).map_err(ApiError::invalid)?;
    let spec = EndpointSpec { name: name.clone(), ..spec };
    let ep = Endpoint {
        scoring_uri: format!("{}/endpoints/{name}/jobs", app.url),
        openapi_uri: format!("{}/api/v1/openapi.json", app.url),
        provisioning_state: "Succeeded".into(),
        created_at: now(),
        deployments: Vec::new(),
        network_access: String::new(),
        spec,
    };
    let ep = with_access(&app, ep);
    let stored = ep.clone();
    if app.store.call(move |c| store::endpoint_insert(c, &stored)).await? {
        return Ok((StatusCode::CREATED, Json(ep)));
    }
    // Create is create-or-update, as the reference's is: the YAML's description, tags, properties and
    // auth mode replace the endpoint's; a YAML without a default deployment keeps the current one.
    user.require(Role::Contributor, Some(&name))?;
    let mut current = endpoint(&app, &name).await?;
    let default = ep.spec.default_deployment.clone().or(current.spec.default_deployment.clone());
    if let Some(d) = &default {
        if !current.deployments.contains(d) {
            return Err(ApiError::invalid(format!(
                "defaults.deployment_name: deployment `{d}` does not exist in endpoint `{name}`"
            )));
        }
    }
    current.spec = EndpointSpec { default_deployment: default, ..ep.spec };
    let stored = current.clone();
    app.store.call(move |c| store::endpoint_put(c, &stored)).await?;
    Ok((StatusCode::OK, Json(with_access(&app, current))))
}

pub async fn list_endpoints(State(app): State<AppRef>, user: User) -> JsonResult<Vec<Endpoint>> {
    user.require(Role::Reader, None)?;
    let mut eps: Vec<Endpoint> =
        app.store.call(|c| store::endpoint_list(c)).await?.into_iter().map(|e| with_access(&app, e)).collect();
    if let Some(scope) = &user.0.endpoint {
        eps.retain(|e| &e.spec.name == scope);
    }
    Ok(Json(eps))
}

pub async fn endpoint(app: &AppRef, name: &str) -> ApiResult<Endpoint> {
    let key = name.to_ascii_lowercase();
    app.store
        .call(move |c| store::endpoint_get(c, &key))
        .await?
        .map(|ep| with_access(app, ep))
        .ok_or_else(|| ApiError::not_found(format!("endpoint `{name}` does not exist")))
}

/// States who can reach an endpoint: batch endpoints follow the workspace, with no setting of their own.
fn with_access(app: &AppRef, mut ep: Endpoint) -> Endpoint {
    let p = &app.policy;
    ep.network_access = if p.public_network_access {
        "public (the workspace enables public network access)".to_string()
    } else {
        format!("private: reachable only from networks {}", p.allowed_networks().join(", "))
    };
    ep.scoring_uri = format!("{}/endpoints/{}/jobs", app.url, ep.spec.name);
    ep
}

pub async fn show_endpoint(State(app): State<AppRef>, user: User, Path(name): Path<String>) -> JsonResult<Endpoint> {
    let name = name.to_ascii_lowercase();
    user.require(Role::Reader, Some(&name))?;
    Ok(Json(endpoint(&app, &name).await?))
}

pub async fn update_endpoint(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
    body: Bytes,
) -> JsonResult<Endpoint> {
    let name = name.to_ascii_lowercase();
    user.require(Role::Contributor, Some(&name))?;
    let update: UpdateEndpoint = parse_json(&body)?;
    let mut ep = endpoint(&app, &name).await?;
    for (key, value) in &update.set {
        match key.as_str() {
            "defaults.deployment_name" | "default_deployment" => {
                let dep = value.to_ascii_lowercase();
                if !ep.deployments.contains(&dep) {
                    return Err(ApiError::invalid(format!(
                        "defaults.deployment_name: deployment `{value}` does not exist in endpoint `{name}`"
                    )));
                }
                ep.spec.default_deployment = Some(dep);
            }
            "description" => ep.spec.description = Some(value.clone()),
            k if k.starts_with("tags.") => {
                ep.spec.tags.insert(k["tags.".len()..].to_string(), value.clone());
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "`{other}` cannot be updated; updatable: defaults.deployment_name, description, tags.<name>"
                )))
            }
        }
    }
    let stored = ep.clone();
    app.store.call(move |c| store::endpoint_put(c, &stored)).await?;
    Ok(Json(ep))
}

pub async fn delete_endpoint(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> JsonResult<serde_json::Value> {
    let name = name.to_ascii_lowercase();
    user.require(Role::Contributor, Some(&name))?;
    let key = name.clone();
    if !app.store.call(move |c| store::endpoint_delete(c, &key)).await? {
        return Err(ApiError::not_found(format!("endpoint `{name}` does not exist")));
    }
    crate::environment_builds::collect_unused(&app).await;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

pub async fn create_deployment(
    State(app): State<AppRef>,
    user: User,
    Path(endpoint_name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let endpoint_name = endpoint_name.to_ascii_lowercase();
    user.require(Role::Contributor, Some(&endpoint_name))?;
    let req: CreateDeployment = parse_json(&body)?;
    let spec = &req.spec;
    let mut ep = endpoint(&app, &endpoint_name).await?;
    if let Some(named) = &spec.endpoint_name {
        if *named != endpoint_name {
            return Err(ApiError::invalid(format!(
                "endpoint_name: the deployment names endpoint `{named}` but is being created in `{endpoint_name}`"
            )));
        }
    }
    let name = cove_spec::validate_resource_name("name", &spec.name).map_err(ApiError::invalid)?;
    let (model, new_model) = deployment_model(&app, &user, &req, &endpoint_name, &name).await?;
    let compute = deployment_compute(&app, &spec.compute).await?;
    let runner = deployment_runner(&app, &user, &req, &model).await?;
    let files = (req.conda_file.as_deref(), req.pip_file.as_deref());
    let environment =
        deployment_environment(&app, spec, files, &model.path, runner.builtin_script.is_some(), &compute).await?;
    check_egress(&app, &spec.egress)?;
    let is_default = req.set_default || ep.spec.default_deployment.as_deref() == Some(name.as_str());
    let dep = Deployment {
        name: name.clone(),
        endpoint_name: endpoint_name.clone(),
        description: spec.description.clone(),
        tags: spec.tags.clone(),
        model: ModelVersionRef { name: model.name.clone(), version: model.version },
        code_uri: runner.code_uri,
        scoring_script: runner.scoring_script,
        builtin_script: runner.builtin_script,
        python: environment.as_ref().map_or(app.config.python.clone(), |(e, _)| {
            PathBuf::from(&e.build.root).join(&e.build.key).join("bin").join("python").display().to_string()
        }),
        environment: environment.as_ref().map(|(e, _)| e.clone()),
        compute: spec.compute.clone(),
        sandbox: sandbox_label(&app, runner.onnx_model.is_some()),
        onnx_model: runner.onnx_model,
        egress: spec.egress.clone(),
        settings: spec.settings.clone(),
        provisioning_state: "Succeeded".into(),
        is_default,
        created_at: now(),
    };
    if req.set_default {
        ep.spec.default_deployment = Some(name.clone());
    }
    let model_uri = model.path.clone();
    let dep = store_deployment(&app, dep, new_model.then_some(model), req.set_default.then_some(ep)).await?;
    claim_deployment_files(&app, &dep, &model_uri).await?;
    drop(environment);
    // A deployment replaced with another environment leaves its old one unused.
    crate::environment_builds::collect_unused(&app).await;
    Ok((StatusCode::CREATED, Json(dep)))
}

/// Stores a deployment, with its new model version and its endpoint's new default, in one transaction.
async fn store_deployment(
    app: &AppRef,
    mut dep: Deployment,
    new_model: Option<Model>,
    new_default: Option<cove_api::Endpoint>,
) -> ApiResult<Deployment> {
    Ok(app
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            if let Some(model) = new_model {
                let registered = store::model_create(&tx, model)?;
                dep.model = ModelVersionRef { name: registered.name, version: registered.version };
            }
            store::deployment_put(&tx, &dep)?;
            if let Some(ep) = &new_default {
                store::endpoint_put(&tx, ep)?;
            }
            tx.commit()?;
            Ok(dep)
        })
        .await?)
}

/// From now on the model's and the code's files never change: no upload or job may write there.
async fn claim_deployment_files(app: &AppRef, dep: &Deployment, model_uri: &str) -> ApiResult<()> {
    let model_at = parse_uri(model_uri).map_err(ApiError::from)?;
    let owner = format!("model `{}` version {}", dep.model.name, dep.model.version);
    super::ownership::claim_asset(app, &model_at, owner).await?;
    if let Some(code) = &dep.code_uri {
        let code_at = parse_uri(code).map_err(ApiError::from)?;
        let owner = format!("the code of deployment `{}/{}`", dep.endpoint_name, dep.name);
        super::ownership::claim_asset(app, &code_at, owner).await?;
    }
    Ok(())
}

/// The model a deployment runs: a registered version, or an inline model's uploaded files, which
/// become a new version (returned with `true`, registered in the deployment's own transaction, so a
/// deployment that fails validation leaves no model version behind) unless they are the latest
/// version's files again.
async fn deployment_model(
    app: &AppRef,
    user: &User,
    req: &CreateDeployment,
    endpoint_name: &str,
    name: &str,
) -> ApiResult<(Model, bool)> {
    Ok(match &req.spec.model {
        ModelRef::Registered { name: model_name, version } => {
            let v = match version {
                ModelVersion::Latest => None,
                ModelVersion::Number(n) => Some(*n),
            };
            let key = model_name.clone();
            let model = app.store.call(move |c| store::model_get(c, &key, v)).await?.ok_or_else(|| {
                ApiError::invalid(format!(
                    "model: `{model_name}` {} does not exist",
                    v.map_or("(any version)".to_string(), |n| format!("version {n}"))
                ))
            })?;
            (model, false)
        }
        ModelRef::Inline { name: model_name, path: _, model_type, description, .. } => {
            let upload = req.model_upload.as_deref().ok_or_else(|| {
                ApiError::invalid(
                    "model: an inline model's files must be uploaded first (model_upload), as the CLI does",
                )
            })?;
            let model_name = model_name.clone().unwrap_or_else(|| format!("{endpoint_name}-{name}-model"));
            let model_name = cove_spec::validate_resource_name("model.name", &model_name).map_err(ApiError::invalid)?;
            let path = model_path(app, upload).await.map_err(|e| ApiError::invalid(format!("model.path: {e}")))?;
            let at = parse_uri(&path).map_err(ApiError::from)?;
            super::ownership::check_read(app, user, "model.path", &at, false).await?;
            refuse_unrunnable(*model_type, "model.type")?;
            let uploaded = at.clone();
            // Deploying again with the same model files registers no new version: the latest one is
            // used, and the fresh upload of the same bytes is dropped.
            let key = model_name.clone();
            let latest = app.store.call(move |c| store::model_get(c, &key, None)).await?;
            let unchanged = match &latest {
                Some(m) if m.model_type == *model_type => {
                    let (a, b) = (files_digest(app, &m.path).await, files_digest(app, &path).await);
                    a.is_some() && a == b
                }
                _ => false,
            };
            match latest {
                Some(latest) if unchanged => {
                    drop_upload(app, &at).await;
                    (latest, false)
                }
                _ => {
                    let (at, digest) = out_of_reach(app, at, "model.path").await?;
                    if at != uploaded {
                        drop_upload(app, &uploaded).await;
                    }
                    let model = Model {
                        name: model_name,
                        version: 0,
                        path: at.uri(),
                        model_type: *model_type,
                        description: description.clone(),
                        created_at: now(),
                        tags: Default::default(),
                        archived: false,
                        digest: Some(digest),
                    };
                    (model, true)
                }
            }
        }
    })
}

/// The compute a deployment names, which must exist.
async fn deployment_compute(app: &AppRef, name: &str) -> ApiResult<cove_api::Compute> {
    let computes = app.store.call(|c| store::compute_list(c)).await?;
    let Some(compute) = computes.iter().find(|c| c.name == name).cloned() else {
        let known: Vec<&str> = computes.iter().map(|c| c.name.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "compute: `{}` does not exist (known: {}); create it first: cove compute create -f compute.yml, \
             with the reference's `type: amlcompute` YAML (a cluster of workers on this host) or `type: slurm`",
            name,
            known.join(", ")
        )));
    };
    Ok(compute)
}

/// What a deployment runs on each mini-batch: its scoring script in its code folder (checked to
/// parse and define `init()` and `run()` unless asked not to), the MLflow driver, or a no-code ONNX
/// model.
struct Runner {
    code_uri: Option<String>,
    scoring_script: Option<String>,
    builtin_script: Option<String>,
    onnx_model: Option<String>,
}

async fn deployment_runner(app: &AppRef, user: &User, req: &CreateDeployment, model: &Model) -> ApiResult<Runner> {
    let mut onnx_model = None;
    let mut builtin_script = None;
    let spec = &req.spec;
    let (code_uri, scoring_script) = match &spec.code {
        Some(code) => {
            let dir = parse_uri(&code.code).map_err(|e| ApiError::invalid(format!("code_configuration.code: {e}")))?;
            super::ownership::check_read(app, user, "code_configuration.code", &dir, false).await?;
            let script = dir
                .join(&code.scoring_script)
                .map_err(|e| ApiError::invalid(format!("code_configuration.scoring_script: {e}")))?;
            let store = app.datastores.get(&dir.datastore).map_err(ApiError::from)?;
            let source = match store.get(&script.object_path()).await {
                Ok(r) => r.bytes().await.map_err(|e| ApiError::internal("read the scoring script", e))?,
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "code_configuration.scoring_script: `{}` is not in the code folder",
                        code.scoring_script
                    )))
                }
            };
            if !req.skip_script_validation {
                envcheck::check_script(&app.config.python, &code.scoring_script, &source)
                    .await
                    .map_err(|e| ApiError::invalid(format!("code_configuration.scoring_script: {e}")))?;
            }
            (Some(dir.uri()), Some(code.scoring_script.clone()))
        }
        None if model.model_type == ModelType::MlflowModel => {
            builtin_script = Some("mlflow".to_string());
            (None, Some(cove_common::MLFLOW_SCRIPT_NAME.to_string()))
        }
        None if model.model_type == ModelType::OnnxModel => {
            if spec.environment.is_some() {
                return Err(ApiError::invalid(
                    "environment: a no-code ONNX deployment runs no Python, so it has no environment; remove it",
                ));
            }
            onnx_model = Some(onnx_model_file(app, &model.path).await.map_err(ApiError::invalid)?);
            (None, None)
        }
        None => {
            return Err(ApiError::invalid(
                "code_configuration: required for a custom_model (give code and scoring_script); \
                 an ONNX model registered with type: onnx_model needs none",
            ))
        }
    };
    if spec.code.is_some() && model.model_type == ModelType::MlflowModel && spec.environment.is_none() {
        return Err(ApiError::invalid(
            "environment: a scoring script for an mlflow_model needs an environment, as in the reference \
             (or remove code_configuration to use the MLflow driver, which builds one from the model's files)",
        ));
    }
    Ok(Runner { code_uri, scoring_script, builtin_script, onnx_model })
}

/// Every egress target a deployment names is a private endpoint with `service: egress`.
fn check_egress(app: &AppRef, egress: &[String]) -> ApiResult<()> {
    for target in egress {
        let found = app.policy.private_endpoints.iter().any(|p| &p.name == target && p.service == "egress");
        if !found {
            let names: Vec<&str> = app
                .policy
                .private_endpoints
                .iter()
                .filter(|p| p.service == "egress")
                .map(|p| p.name.as_str())
                .collect();
            return Err(ApiError::invalid(format!(
                "egress: `{target}` is not a private endpoint with service: egress (configured: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )));
        }
    }
    Ok(())
}

/// Builds what a deployment runs in: its inline or registered environment, or for an MLflow model
/// deployed with no scoring script, the model's own conda or pip file plus what the driver needs.
/// `None`: no environment, so the workspace's default interpreter.
async fn deployment_environment<'a>(
    app: &'a AppRef,
    spec: &cove_spec::DeploymentSpec,
    (conda_file, pip_file): (Option<&str>, Option<&str>),
    model_uri: &str,
    mlflow_driver: bool,
    compute: &cove_api::Compute,
) -> ApiResult<Option<(cove_api::DeploymentEnvironment, crate::environment_builds::Pinned<'a>)>> {
    let (source, def, conda, pip) = match &spec.environment {
        Some(EnvironmentRef::Inline(def)) => {
            ("inline".to_string(), def.clone(), conda_file.map(str::to_string), pip_file.map(str::to_string))
        }
        Some(EnvironmentRef::Registered { reference }) => {
            let env = registered_environment(app, reference).await?;
            let def = cove_spec::EnvironmentDefinition {
                image: env.image.clone(),
                overrides: env.overrides.clone(),
                allow_source_builds: env.allow_source_builds,
                ..Default::default()
            };
            (format!("azureml:{}:{}", env.name, env.version), def, env.conda_file, env.pip_file)
        }
        None if mlflow_driver => {
            let (file, conda, pip) = mlflow_environment(app, model_uri).await.map_err(ApiError::invalid)?;
            (format!("the MLflow model's {file}"), Default::default(), conda, pip)
        }
        None => return Ok(None),
    };
    let (root, build_now) = match compute.slurm.as_ref().and_then(|s| s.environment_cache.clone()) {
        Some(cache) => (PathBuf::from(cache), false),
        None => (cove_workspace::layout::environments(&app.config.dir), true),
    };
    let (extra, renames): (&[&str], &[(&str, &str)]) = if mlflow_driver {
        (&["mlflow-skinny", "pandas", "pyarrow", "pillow"], &[("mlflow", "mlflow-skinny")])
    } else {
        (&[], &[])
    };
    let request = crate::environment_builds::EnvironmentRequest {
        source,
        conda: conda.as_deref(),
        pip: pip.as_deref(),
        image: def.image.as_deref(),
        overrides: &def.overrides,
        allow_source_builds: def.allow_source_builds,
        extra,
        renames,
    };
    let prepared = crate::environment_builds::prepare(app, request, root, build_now)
        .await
        .map_err(|e| ApiError::invalid(format!("environment: {e}")))?;
    Ok(Some(prepared))
}

/// The largest MLflow metadata file read (MLmodel, conda.yaml, requirements.txt).
const MLFLOW_FILE_LIMIT: usize = 1 << 20;

/// Reads an MLflow model's metadata: checks that it has the pyfunc flavour, and returns which file
/// describes its environment and the conda and pip files' contents.
async fn mlflow_environment(
    app: &AppRef,
    model_uri: &str,
) -> Result<(&'static str, Option<String>, Option<String>), String> {
    let mlmodel = model_file(app, model_uri, "MLmodel")
        .await?
        .ok_or("model: an mlflow_model needs an MLmodel file in its folder (or one folder below)")?;
    cove_spec::check_untrusted_yaml(&mlmodel).map_err(|e| format!("model: MLmodel is refused: {e}"))?;
    let doc: serde_norway::Value =
        serde_norway::from_str(&mlmodel).map_err(|e| format!("model: MLmodel is not valid YAML: {e}"))?;
    let flavors = doc.get("flavors").and_then(|f| f.as_mapping());
    let names: Vec<String> =
        flavors.into_iter().flat_map(|m| m.keys()).filter_map(|k| k.as_str().map(str::to_string)).collect();
    if !names.iter().any(|n| n == "python_function") {
        return Err(format!(
            "model: the MLflow model has no python_function flavour (it has: {}); deploying it with no scoring \
             script needs that flavour, as in the reference",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ));
    }
    if let Some(conda) = model_file(app, model_uri, "conda.yaml").await? {
        return Ok(("conda.yaml", Some(conda), None));
    }
    if let Some(pip) = model_file(app, model_uri, "requirements.txt").await? {
        return Ok(("requirements.txt", None, Some(pip)));
    }
    Err("model: the MLflow model has neither conda.yaml nor requirements.txt to build its environment from".into())
}

/// A small text file of a model: at the model's root, or in its one sub-folder that holds it.
async fn model_file(app: &AppRef, model_uri: &str, name: &str) -> Result<Option<String>, String> {
    let root = parse_uri(model_uri).map_err(|e| e.to_string())?;
    let store = app.datastores.get(&root.datastore).map_err(|e| e.to_string())?;
    let mut candidates = vec![cove_datastore::object_path_of(&format!("{}/{name}", root.path))];
    if let Ok(listing) = store.list_with_delimiter(Some(&root.object_path())).await {
        candidates.extend(listing.common_prefixes.iter().map(|p| p.child(name)));
    }
    for at in candidates {
        let Ok(found) = store.get(&at).await else { continue };
        if found.meta.size as usize > MLFLOW_FILE_LIMIT {
            return Err(format!("model: `{name}` is {} bytes, over the 1 MiB limit", found.meta.size));
        }
        let bytes = found.bytes().await.map_err(|e| format!("model: cannot read `{name}`: {e}"))?;
        return String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| format!("model: `{name}` is not UTF-8 text"));
    }
    Ok(None)
}

/// A registered environment named by `azureml:name:3`, `azureml:name@latest`, `azureml:name` or an ARM id.
async fn registered_environment(app: &AppRef, reference: &str) -> ApiResult<cove_api::Environment> {
    let text = match reference.find("/environments/") {
        Some(at) => reference[at + "/environments/".len()..].replacen("/versions/", ":", 1),
        None => reference.trim_start_matches("azureml:").to_string(),
    };
    let (name, version) = match text.split_once('@') {
        Some((name, "latest")) => (name.to_string(), None),
        Some((_, label)) => {
            return Err(ApiError::invalid(format!("environment: label `{label}` is not supported; use @latest")))
        }
        None => match text.split_once(':') {
            Some((name, v)) => (
                name.to_string(),
                version_param(v).map_err(|e| ApiError::invalid(format!("environment: {}", e.message)))?,
            ),
            None => (text.clone(), None),
        },
    };
    let key = name.to_ascii_lowercase();
    app.store
        .call(move |c| store::versioned_get(c, store::Versioned::Environment, &key, version))
        .await?
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "environment: `{reference}` is not a registered environment (register it with cove environment create -f env.yml)"
            ))
        })
}

/// How a deployment's scoring code runs, as users read it.
/// A no-code deployment runs no user code, so it needs no sandbox: the worker itself reads the files
/// and runs the model.
const NO_CODE_SANDBOX: &str = "not needed (no-code ONNX: no user code runs)";

/// Finds and checks a no-code deployment's ONNX file: the model itself when it is a `.onnx` file,
/// otherwise the one `.onnx` file directly in its folder. The model is loaded here, so a model the
/// worker could not run is refused at deployment, with tract's reason.
async fn onnx_model_file(app: &AppRef, model_uri: &str) -> Result<String, String> {
    let root = parse_uri(model_uri).map_err(|e| e.to_string())?;
    let store = app.datastores.get(&root.datastore).map_err(|e| e.to_string())?;
    let folder_name = root.path.rsplit('/').next().unwrap_or(&root.path).to_string();
    let (file, location) = if store.head(&root.object_path()).await.is_ok() {
        (folder_name.clone(), root.object_path())
    } else {
        let listing = store
            .list_with_delimiter(Some(&root.object_path()))
            .await
            .map_err(|e| format!("model: cannot list `{model_uri}`: {e}"))?;
        let names: Vec<String> =
            listing.objects.iter().filter_map(|o| o.location.filename().map(str::to_string)).collect();
        let name = cove_common::find_model_file(names.iter().map(String::as_str)).map_err(|e| format!("model: {e}"))?;
        (format!("{folder_name}/{name}"), cove_datastore::object_path_of(&format!("{}/{name}", root.path)))
    };
    if !cove_common::is_onnx_file(file.rsplit('/').next().unwrap_or(&file)) {
        return Err(format!("model: `{file}` is not an .onnx file"));
    }
    let bytes = store
        .get(&location)
        .await
        .map_err(|e| format!("model: cannot read `{file}`: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("model: cannot read `{file}`: {e}"))?;
    crate::modelcheck::check_onnx(&app.config.worker_exe, bytes).await.map_err(|e| format!("model: `{file}`: {e}"))?;
    Ok(file)
}

/// How a deployment's scoring code runs, as deployment views show it.
pub fn sandbox_label(app: &AppRef, no_code: bool) -> String {
    if no_code {
        return NO_CODE_SANDBOX.to_string();
    }
    match app.config.sandbox {
        SandboxMode::Namespaces => "namespaces".to_string(),
        SandboxMode::None => "none (warning: the workspace runs scoring code without a sandbox)".to_string(),
    }
}

pub async fn list_deployments(
    State(app): State<AppRef>,
    user: User,
    Path(endpoint_name): Path<String>,
) -> JsonResult<Vec<Deployment>> {
    let endpoint_name = endpoint_name.to_ascii_lowercase();
    user.require(Role::Reader, Some(&endpoint_name))?;
    let ep = endpoint(&app, &endpoint_name).await?;
    let mut deps = app.store.call(move |c| store::deployment_list(c, &endpoint_name)).await?;
    for d in &mut deps {
        d.is_default = ep.spec.default_deployment.as_deref() == Some(d.name.as_str());
        d.sandbox = sandbox_label(&app, d.onnx_model.is_some());
    }
    Ok(Json(deps))
}

pub async fn deployment(app: &AppRef, endpoint_name: &str, name: &str) -> ApiResult<Deployment> {
    let ep = endpoint(app, endpoint_name).await?;
    let (e, n) = (endpoint_name.to_string(), name.to_ascii_lowercase());
    let mut dep = app.store.call(move |c| store::deployment_get(c, &e, &n)).await?.ok_or_else(|| {
        ApiError::not_found(format!("deployment `{name}` does not exist in endpoint `{endpoint_name}`"))
    })?;
    dep.is_default = ep.spec.default_deployment.as_deref() == Some(dep.name.as_str());
    dep.sandbox = sandbox_label(app, dep.onnx_model.is_some());
    Ok(dep)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDeployment {
    #[serde(default)]
    set: BTreeMap<String, String>,
}

/// Changes a deployment's settings, description or tags in place (`cove deployment update --set`).
pub async fn update_deployment(
    State(app): State<AppRef>,
    user: User,
    Path((e, d)): Path<(String, String)>,
    body: Bytes,
) -> JsonResult<Deployment> {
    let e = e.to_ascii_lowercase();
    user.require(Role::Contributor, Some(&e))?;
    let req: UpdateDeployment = parse_json(&body)?;
    let mut dep = deployment(&app, &e, &d).await?;
    for (k, v) in &req.set {
        if k == "description" {
            dep.description = Some(v.clone());
        } else if let Some(tag) = k.strip_prefix("tags.") {
            dep.tags.insert(tag.to_string(), v.clone());
        } else {
            dep.settings.apply_deployment_setting(k, v).map_err(|m| ApiError::invalid(format!("set `{k}`: {m}")))?;
        }
    }
    let compute = dep.compute.clone();
    if let Some(c) = app.store.call(move |conn| store::compute_get(conn, &compute)).await? {
        if dep.settings.instance_count > c.max_instances {
            return Err(ApiError::invalid(format!(
                "set `instance_count`: {} is more than compute `{}` allows ({})",
                dep.settings.instance_count, c.name, c.max_instances
            )));
        }
    }
    let stored = dep.clone();
    app.store.call(move |c| store::deployment_put(c, &stored)).await?;
    Ok(Json(dep))
}

pub async fn show_deployment(
    State(app): State<AppRef>,
    user: User,
    Path((e, d)): Path<(String, String)>,
) -> JsonResult<Deployment> {
    let e = e.to_ascii_lowercase();
    user.require(Role::Reader, Some(&e))?;
    Ok(Json(deployment(&app, &e, &d).await?))
}

pub async fn delete_deployment(
    State(app): State<AppRef>,
    user: User,
    Path((e, d)): Path<(String, String)>,
) -> JsonResult<serde_json::Value> {
    let e = e.to_ascii_lowercase();
    user.require(Role::Contributor, Some(&e))?;
    let dep = deployment(&app, &e, &d).await?;
    if dep.is_default {
        return Err(ApiError::conflict(format!(
            "deployment `{}` is the default of endpoint `{e}`; set another default first (cove endpoint update {e} --set defaults.deployment_name=OTHER)",
            dep.name
        )));
    }
    let name = dep.name.clone();
    app.store.call(move |c| store::deployment_delete(c, &e, &name)).await?;
    crate::environment_builds::collect_unused(&app).await;
    Ok(Json(serde_json::json!({ "deleted": dep.name })))
}

pub async fn create_model(State(app): State<AppRef>, user: User, body: Bytes) -> ApiResult<(StatusCode, Json<Model>)> {
    user.require(Role::Contributor, None)?;
    let req: CreateModel = parse_json(&body)?;
    let name = cove_spec::validate_resource_name("name", &req.name).map_err(ApiError::invalid)?;
    let path = model_path(&app, &req.path).await.map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    let at = parse_uri(&path).map_err(ApiError::from)?;
    super::ownership::check_read(&app, &user, "path", &at, false).await?;
    refuse_unrunnable(req.model_type, "type")?;
    if req.version == Some(0) {
        return Err(ApiError::invalid("version: must be at least 1"));
    }
    let (at, digest) = out_of_reach(&app, at, "path").await?;
    let model = Model {
        name: name.clone(),
        version: req.version.unwrap_or(0),
        path: at.uri(),
        model_type: req.model_type,
        description: req.description,
        created_at: now(),
        tags: req.tags,
        archived: false,
        digest: Some(digest),
    };
    let model = match req.version {
        None => app.store.call(move |c| store::model_create(c, model)).await?,
        Some(v) => app.store.call(move |c| store::model_create_at(c, model)).await?.ok_or_else(|| {
            ApiError::conflict(format!(
                "version: model `{name}` version {v} exists already (leave version out for the next one)"
            ))
        })?,
    };
    super::ownership::claim_asset(&app, &at, format!("model `{}` version {}", model.name, model.version)).await?;
    Ok((StatusCode::CREATED, Json(model)))
}

/// Every file of a model (a file, or a folder's files) by path relative to it, with its size and
/// SHA-256; `None` when it cannot be read.
async fn files_digest(app: &AppRef, uri: &str) -> Option<Vec<(String, u64, Vec<u8>)>> {
    use sha2::Digest;
    let root = parse_uri(uri).ok()?;
    let store = app.datastores.get(&root.datastore).ok()?;
    let mut files = files_at(store.as_ref(), &root).await.ok()?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::with_capacity(files.len());
    for meta in files {
        let rel = meta.location.as_ref().strip_prefix(root.path.as_str()).unwrap_or("").to_string();
        let mut hash = sha2::Sha256::new();
        let mut stream = store.get(&meta.location).await.ok()?.into_stream();
        while let Some(chunk) = stream.try_next().await.ok()? {
            hash.update(&chunk);
        }
        out.push((rel, meta.size, hash.finalize().to_vec()));
    }
    Some(out)
}

/// The digest of the files at `uri` (a file, or a folder's files): `sha256:` over each file's path
/// relative to it, size and sha256, in path order.
pub(crate) async fn version_digest(app: &AppRef, uri: &str) -> Result<String, String> {
    use sha2::Digest;
    let files = files_digest(app, uri).await.ok_or_else(|| format!("the files of `{uri}` cannot be read"))?;
    let mut hash = sha2::Sha256::new();
    for (rel, size, sha) in files {
        hash.update(rel.as_bytes());
        hash.update([0]);
        hash.update(size.to_le_bytes());
        hash.update(&sha);
    }
    Ok(format!("sha256:{}", hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Where files being registered are kept, out of every principal's reach, with their digest. Files
/// in an upload folder (whose uploader may write there for as long as it is theirs) are copied first
/// to a location of the registration's own, `registered/<id>/<name>`, which no upload or job may write
/// and nobody else holds; files elsewhere stay where they are, since the registration's claim keeps
/// every upload and job out from then on. `field` names the path in errors.
async fn out_of_reach(app: &AppRef, at: DataPath, field: &str) -> ApiResult<(DataPath, String)> {
    let at = if super::ownership::within_an_upload(app, &at).await? {
        let store = app.datastores.get(&at.datastore).map_err(|e| ApiError::invalid(format!("{field}: {e}")))?;
        let leaf = at.path.rsplit('/').next().unwrap_or("files").to_string();
        let copy = DataPath {
            datastore: at.datastore.clone(),
            path: format!("registered/{}/{leaf}", uuid::Uuid::new_v4().simple()),
        };
        let files =
            files_at(store.as_ref(), &at).await.map_err(|e| ApiError::internal("list the files to register", e))?;
        for meta in files {
            let rel = meta.location.as_ref().strip_prefix(at.path.as_str()).unwrap_or("").trim_start_matches('/');
            let to = if rel.is_empty() { copy.clone() } else { copy.join(rel).map_err(ApiError::from)? };
            store
                .copy(&meta.location, &to.object_path())
                .await
                .map_err(|e| ApiError::internal("copy the files to register out of their upload", e))?;
        }
        copy
    } else {
        at
    };
    let digest = version_digest(app, &at.uri()).await.map_err(|e| ApiError::invalid(format!("{field}: {e}")))?;
    Ok((at, digest))
}

/// Refuses a job of a registered version whose files no longer have the digest they were registered
/// with. `what` names the version.
pub(crate) async fn check_unchanged(app: &AppRef, what: &str, uri: &str, digest: Option<&str>) -> ApiResult<()> {
    let Some(recorded) = digest else { return Ok(()) };
    let now = version_digest(app, uri).await.unwrap_or_else(|why| why);
    if now != recorded {
        return Err(ApiError::conflict(format!(
            "{what}: its files changed since it was registered ({recorded}, now {now}); register them again as a new version"
        )));
    }
    Ok(())
}

/// The files at `at`: the file itself, or every file under the folder.
async fn files_at(store: &dyn ObjectStore, at: &DataPath) -> object_store::Result<Vec<object_store::ObjectMeta>> {
    match store.head(&at.object_path()).await {
        Ok(meta) => Ok(vec![meta]),
        Err(_) => store.list(Some(&at.object_path())).try_collect().await,
    }
}

/// Deletes an upload that turned out not to be needed: its files are registered already.
async fn drop_upload(app: &AppRef, at: &cove_datastore::DataPath) {
    let Ok(store) = app.datastores.get(&at.datastore) else { return };
    let listed = files_at(store.as_ref(), at).await.unwrap_or_default();
    for meta in listed {
        let _ = store.delete(&meta.location).await;
    }
}

/// Refuses, when it is registered, a model type Cove cannot run.
fn refuse_unrunnable(model_type: ModelType, field: &str) -> ApiResult<()> {
    if model_type == ModelType::TritonModel {
        return Err(ApiError::invalid(format!(
            "{field}: triton_model needs a Triton Inference Server, which Cove does not run; register the model as \
             custom_model (with a scoring script) or onnx_model (no script needed)"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveModel {
    archived: bool,
}

/// Archives (or restores) a model version: it stays usable by number but is never `latest`.
pub async fn archive_model(
    State(app): State<AppRef>,
    user: User,
    Path((name, version)): Path<(String, u32)>,
    body: Bytes,
) -> JsonResult<Model> {
    user.require(Role::Contributor, None)?;
    let req: ArchiveModel = parse_json(&body)?;
    let key = name.to_ascii_lowercase();
    let found = app.store.call(move |c| store::model_set_archived(c, &key, version, req.archived)).await?;
    if !found {
        return Err(ApiError::not_found(format!("model `{name}` version {version} does not exist")));
    }
    let key = name.to_ascii_lowercase();
    let model = app.store.call(move |c| store::model_get(c, &key, Some(version))).await?;
    model.map(Json).ok_or_else(|| ApiError::not_found(format!("model `{name}` version {version} does not exist")))
}

/// Deletes a model version that no deployment uses. Its files stay registered (and unchangeable).
pub async fn delete_model(
    State(app): State<AppRef>,
    user: User,
    Path((name, version)): Path<(String, String)>,
) -> JsonResult<serde_json::Value> {
    user.require(Role::Contributor, None)?;
    let version: u32 =
        version.parse().map_err(|_| ApiError::invalid(format!("version: `{version}` is not a version number")))?;
    let key = name.to_ascii_lowercase();
    match app.store.call(move |c| store::model_delete(c, &key, version)).await? {
        Ok(true) => Ok(Json(serde_json::json!({ "deleted": name, "version": version }))),
        Ok(false) => Err(ApiError::not_found(format!("model `{name}` version {version} does not exist"))),
        Err(users) => Err(ApiError::conflict(format!(
            "model `{name}` version {version} is used by deployments {users}; delete or update them first"
        ))),
    }
}

/// Checks that a model's files exist at a datastore URI; returns the normalised URI.
async fn model_path(app: &AppRef, uri: &str) -> Result<String, String> {
    let path = parse_uri(uri).map_err(|e| e.to_string())?;
    let store = app.datastores.get(&path.datastore).map_err(|e| e.to_string())?;
    let exists = store.head(&path.object_path()).await.is_ok()
        || store.list(Some(&path.object_path())).try_next().await.ok().flatten().is_some();
    if path.path.is_empty() || !exists {
        return Err(format!("`{uri}` holds no model file or folder"));
    }
    Ok(path.uri())
}

/// Registers a data asset version: an existing datastore file or folder, which no upload or job may
/// change from then on, and which every scope may use as a job's input.
pub async fn create_data(
    State(app): State<AppRef>,
    user: User,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<cove_api::DataAsset>)> {
    user.require(Role::Contributor, None)?;
    let req: cove_api::CreateDataAsset = parse_json(&body)?;
    let name = cove_spec::validate_resource_name("name", &req.name).map_err(ApiError::invalid)?;
    if req.version == Some(0) {
        return Err(ApiError::invalid("version: must be at least 1"));
    }
    let at = parse_uri(&req.path).map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    super::ownership::check_read(&app, &user, "path", &at, true).await?;
    let store = app.datastores.get(&at.datastore).map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    let is_file = store.head(&at.object_path()).await.is_ok();
    let is_folder =
        !at.path.is_empty() && store.list(Some(&at.object_path())).try_next().await.ok().flatten().is_some();
    match (req.kind, is_file, is_folder) {
        (cove_api::InputType::UriFile, true, _) | (cove_api::InputType::UriFolder, false, true) => {}
        (cove_api::InputType::UriFile, false, true) => {
            return Err(ApiError::invalid(format!("type: `{}` is a folder; use type: uri_folder", at.uri())))
        }
        (cove_api::InputType::UriFolder, true, _) => {
            return Err(ApiError::invalid(format!("type: `{}` is a file; use type: uri_file", at.uri())))
        }
        _ => return Err(ApiError::invalid(format!("path: `{}` holds no file or folder", at.uri()))),
    }
    let (at, digest) = out_of_reach(&app, at, "path").await?;
    let asset = cove_api::DataAsset {
        name: name.clone(),
        version: req.version.unwrap_or(0),
        kind: req.kind,
        path: at.uri(),
        description: req.description,
        tags: req.tags,
        created_at: now(),
        digest: Some(digest),
    };
    let version = req.version;
    let created =
        app.store
            .call(move |c| {
                let name = asset.name.clone();
                store::versioned_create(c, store::Versioned::Data, &name, asset.version, |version| {
                    cove_api::DataAsset { version, ..asset }
                })
            })
            .await?
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "version: data asset `{name}` version {} exists already (leave version out for the next one)",
                    version.unwrap_or_default()
                ))
            })?;
    let owner = format!("data asset `{}` version {}", created.name, created.version);
    super::ownership::claim_data(&app, &at, owner).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
pub struct DataQuery {
    name: Option<String>,
}

pub async fn list_data(
    State(app): State<AppRef>,
    user: User,
    Query(q): Query<DataQuery>,
) -> JsonResult<Vec<cove_api::DataAsset>> {
    user.require(Role::Reader, None)?;
    Ok(Json(app.store.call(move |c| store::versioned_list(c, store::Versioned::Data, q.name.as_deref())).await?))
}

pub async fn show_data(
    State(app): State<AppRef>,
    user: User,
    Path((name, version)): Path<(String, String)>,
) -> JsonResult<cove_api::DataAsset> {
    user.require(Role::Reader, None)?;
    Ok(Json(data_asset(&app, &name, &version).await?))
}

/// A version in a path: `latest` (`None`) or a number.
pub(crate) fn version_param(version: &str) -> ApiResult<Option<u32>> {
    if version == "latest" {
        return Ok(None);
    }
    let n = version.parse::<u32>();
    n.map(Some).map_err(|_| ApiError::invalid(format!("version: `{version}` is not a number or `latest`")))
}

/// A data asset by name and version (`latest` or a number).
pub async fn data_asset(app: &AppRef, name: &str, version: &str) -> ApiResult<cove_api::DataAsset> {
    let v = version_param(version)?;
    let key = name.to_ascii_lowercase();
    app.store.call(move |c| store::versioned_get(c, store::Versioned::Data, &key, v)).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "data asset `{name}` {} does not exist (register it with cove data create -f data.yml)",
            v.map_or("(any version)".to_string(), |n| format!("version {n}"))
        ))
    })
}

#[derive(Deserialize)]
pub struct ModelQuery {
    name: Option<String>,
}

pub async fn list_models(State(app): State<AppRef>, user: User, Query(q): Query<ModelQuery>) -> JsonResult<Vec<Model>> {
    user.require(Role::Reader, None)?;
    Ok(Json(app.store.call(move |c| store::model_list(c, q.name.as_deref())).await?))
}

pub async fn show_model(
    State(app): State<AppRef>,
    user: User,
    Path((name, version)): Path<(String, String)>,
) -> JsonResult<Model> {
    user.require(Role::Reader, None)?;
    let v = version_param(&version)?;
    let key = name.to_ascii_lowercase();
    app.store
        .call(move |c| store::model_get(c, &key, v))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("model `{name}` version {version} does not exist")))
}

/// Uploads one file into a datastore. Existing files are never overwritten. Invokers may upload only
/// under `LocalUpload/`, where the CLI puts local inputs before invoking.
pub async fn upload(
    State(app): State<AppRef>,
    user: User,
    Path((datastore, path)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let path = normalise(&path).map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    if path.is_empty() {
        return Err(ApiError::invalid("path: a file name is required"));
    }
    if super::ownership::upload_folder(&path).is_some() {
        // An endpoint-scoped invoker uploads its own inputs too.
        user.require(Role::Invoker, user.0.endpoint.as_deref())?;
    } else {
        user.require(Role::Contributor, None)?;
    }
    let store = app.datastores.get(&datastore).map_err(|e| ApiError::not_found(e.to_string()))?;
    super::ownership::claim_upload(&app, &user, &datastore, &path).await?;
    refuse_planted_links(&app, &datastore, &path, "path").await?;
    let location = cove_datastore::object_path_of(&path);
    if store.head(&location).await.is_ok() {
        return Err(ApiError::conflict(format!("`{path}` already exists in datastore `{datastore}`")));
    }
    let written = super::upload::stream_to(store.as_ref(), &location, body, super::UPLOAD_LIMIT).await?;
    app.metrics.datastore_bytes.with_label_values(&["written"]).inc_by(written);
    Ok(StatusCode::CREATED)
}

/// On a local datastore, refuses a write to `path` through a folder that is a symbolic link
/// (`datastore::refuse_links_on_the_way`); `field` names the path in the error.
pub(crate) async fn refuse_planted_links(app: &AppRef, datastore: &str, path: &str, field: &str) -> ApiResult<()> {
    let Some(root) = app.datastores.local_root(datastore) else { return Ok(()) };
    let rel = path.to_string();
    let looked = tokio::task::spawn_blocking(move || cove_datastore::refuse_links_on_the_way(&root, &rel)).await;
    looked
        .map_err(|e| ApiError::internal("look at the datastore folder", e))?
        .map_err(|why| ApiError::invalid(format!("{field}: {why}")))
}

/// A folder of this host (or of a filesystem mounted at the same place on every node) as a datastore.
/// It opens the host's files to jobs, so only the owner may register one, and never a folder that
/// holds the workspace or lies inside it.
async fn create_local_datastore(
    app: &AppRef,
    user: &User,
    name: String,
    path: Option<&str>,
) -> ApiResult<(StatusCode, Json<cove_api::Datastore>)> {
    user.require(Role::Owner, None)?;
    let path =
        path.ok_or_else(|| ApiError::invalid("path: required for a local datastore (an absolute folder path)"))?;
    let given = std::path::Path::new(path);
    if !given.is_absolute() {
        return Err(ApiError::invalid(format!("path: `{path}` is not absolute")));
    }
    let folder = tokio::fs::canonicalize(given)
        .await
        .map_err(|e| ApiError::invalid(format!("path: `{path}` cannot be opened: {e}")))?;
    if !tokio::fs::metadata(&folder).await.is_ok_and(|m| m.is_dir()) {
        return Err(ApiError::invalid(format!("path: `{path}` is not a folder")));
    }
    let workspace = tokio::fs::canonicalize(&app.config.dir).await.unwrap_or_else(|_| app.config.dir.clone());
    if workspace.starts_with(&folder) || folder.starts_with(&workspace) {
        return Err(ApiError::invalid(format!(
            "path: `{}` {} the workspace folder {}; a datastore never reaches the workspace's own files",
            folder.display(),
            if folder.starts_with(&workspace) { "lies inside" } else { "holds" },
            workspace.display()
        )));
    }
    app.datastores
        .add_local(&name, &folder)
        .map_err(|e| ApiError::invalid(format!("path: `{}` cannot be used: {e}", folder.display())))?;
    let ds = cove_api::Datastore { name, kind: "local".into(), root: folder.display().to_string(), endpoint: None };
    let stored = ds.clone();
    app.store.call(move |c| store::datastore_upsert(c, &stored)).await?;
    Ok((StatusCode::CREATED, Json(ds)))
}

pub async fn show_datastore(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> JsonResult<cove_api::Datastore> {
    user.require(Role::Reader, None)?;
    let all = app.store.call(|c| store::datastore_list(c)).await?;
    all.into_iter()
        .find(|d| d.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("datastore `{name}` does not exist")))
}

/// Deletes a datastore that nothing references; its files stay where they are.
pub async fn delete_datastore(
    State(app): State<AppRef>,
    user: User,
    Path(name): Path<String>,
) -> JsonResult<serde_json::Value> {
    user.require(Role::Contributor, None)?;
    if name == app.datastores.default_name {
        return Err(ApiError::conflict(format!("datastore `{name}` is the workspace's default; it cannot be deleted")));
    }
    let key = name.clone();
    match app.store.call(move |c| store::datastore_delete(c, &key)).await? {
        Ok(true) => {
            app.datastores.remove(&name);
            let _ = tokio::fs::remove_file(cove_workspace::layout::datastore_secret(&app.config.dir, &name)).await;
            Ok(Json(serde_json::json!({ "deleted": name })))
        }
        Ok(false) => Err(ApiError::not_found(format!("datastore `{name}` does not exist"))),
        Err(why) => Err(ApiError::conflict(format!("datastore `{name}` is in use: {why}"))),
    }
}

pub async fn list_datastores(State(app): State<AppRef>, user: User) -> JsonResult<Vec<cove_api::Datastore>> {
    user.require(Role::Reader, None)?;
    Ok(Json(app.store.call(|c| store::datastore_list(c)).await?))
}

/// Registers an S3-compatible datastore. In a private workspace its endpoint must be the datastore's
/// configured private endpoint; the store must answer before it is registered.
pub async fn create_datastore(
    State(app): State<AppRef>,
    user: User,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<cove_api::Datastore>)> {
    user.require(Role::Contributor, None)?;
    let req: cove_api::CreateDatastore = parse_json(&body)?;
    let name = req.name.clone();
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "name: `{name}` must be 1 to 64 lowercase letters, digits or `_`, starting with a letter"
        )));
    }
    if app.datastores.get(&name).is_ok() {
        return Err(ApiError::conflict(format!("datastore `{name}` already exists")));
    }
    match req.kind.as_str() {
        "s3" => {}
        "local" => return create_local_datastore(&app, &user, name, req.path.as_deref()).await,
        "azure_blob" | "azure_data_lake_gen2" => return create_azure_datastore(&app, name, req).await,
        "gcs" => return create_gcs_datastore(&app, name, req).await,
        other => {
            let known = "azure_blob, azure_data_lake_gen2, gcs, s3, local";
            return Err(ApiError::invalid(format!("type: `{other}` is not a datastore type Cove reaches ({known})")));
        }
    }
    check_private_endpoint(&app, &name, "endpoint", &req.endpoint).await?;
    let secret = cove_datastore::S3Secret {
        access_key_id: req.access_key_id.clone(),
        secret_access_key: req.secret_access_key.clone(),
        region: req.region.clone().unwrap_or_else(|| "us-east-1".into()),
    };
    let ca = app.policy.endpoint_ca(&format!("datastore:{name}")).map_err(ApiError::from)?;
    let client = cove_datastore::build_s3(&req.endpoint, &req.bucket, &secret, ca.as_deref())
        .map_err(|e| ApiError::invalid(format!("endpoint: {e}")))?;
    probe_datastore(&(client as Arc<dyn ObjectStore>), &format!("bucket `{}` at {}", req.bucket, req.endpoint)).await?;
    let ds = cove_api::Datastore {
        name: name.clone(),
        kind: "s3".into(),
        root: format!("s3://{}", req.bucket),
        endpoint: Some(req.endpoint.clone()),
    };
    register_network_datastore(&app, ds, &secret, |d| {
        d.add_s3(&name, &req.endpoint, &req.bucket, &secret, ca.as_deref())
    })
    .await
}

/// Registers an Azure Blob container (`azure_blob`) or an ADLS Gen2 filesystem (`azure_data_lake_gen2`).
async fn create_azure_datastore(
    app: &AppRef,
    name: String,
    req: cove_api::CreateDatastore,
) -> ApiResult<(StatusCode, Json<cove_api::Datastore>)> {
    let account = req.account_name.clone().ok_or_else(|| ApiError::invalid("account_name: required"))?;
    let container_field = if req.kind == "azure_blob" { "container_name" } else { "filesystem" };
    let container =
        req.container_name.clone().ok_or_else(|| ApiError::invalid(format!("{container_field}: required")))?;
    let account_url = match &req.account_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let protocol = req.protocol.as_deref().unwrap_or("https");
            let suffix = if req.endpoint.is_empty() { "core.windows.net" } else { req.endpoint.as_str() };
            format!("{protocol}://{account}.blob.{suffix}")
        }
    };
    let field = if req.account_url.is_some() { "account_url" } else { "endpoint" };
    check_private_endpoint(app, &name, field, &account_url).await?;
    let secret = cove_datastore::AzureSecret {
        account: account.clone(),
        container: container.clone(),
        account_url: account_url.clone(),
        account_key: req.account_key.clone(),
        sas_token: req.sas_token.clone(),
    };
    let ca = app.policy.endpoint_ca(&format!("datastore:{name}")).map_err(ApiError::from)?;
    let client = cove_datastore::build_azure(&secret, ca.as_deref())
        .map_err(|e| ApiError::invalid(format!("credentials: {e}")))?;
    probe_datastore(
        &(client as Arc<dyn ObjectStore>),
        &format!("{container_field} `{container}` of account `{account}` at {account_url}"),
    )
    .await?;
    let root = if req.kind == "azure_blob" {
        format!("https://{account}.blob.core.windows.net/{container}")
    } else {
        format!("abfss://{container}@{account}.dfs.core.windows.net")
    };
    let ds = cove_api::Datastore { name: name.clone(), kind: req.kind.clone(), root, endpoint: Some(account_url) };
    register_network_datastore(app, ds, &secret, |d| d.add_azure(&name, &secret, ca.as_deref())).await
}

/// Registers a Google Cloud Storage bucket (`gcs`), reached at `endpoint` (Google's, or the address of
/// its private endpoint) with a service account's key.
async fn create_gcs_datastore(
    app: &AppRef,
    name: String,
    req: cove_api::CreateDatastore,
) -> ApiResult<(StatusCode, Json<cove_api::Datastore>)> {
    // Google's rule for bucket names; it also keeps a name from being read as a path (`..`) in a URL.
    let b = req.bucket.as_str();
    let valid = (3..=222).contains(&b.len())
        && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..")
        && b.split('.').all(|part| (1..=63).contains(&part.len()));
    if !valid {
        return Err(ApiError::invalid(format!(
            "bucket: `{b}` is not a bucket name (3 to 63 lowercase letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit)"
        )));
    }
    let endpoint = match req.endpoint.trim_end_matches('/') {
        "" => "https://storage.googleapis.com".to_string(),
        given => given.to_string(),
    };
    check_private_endpoint(app, &name, "endpoint", &endpoint).await?;
    let key = req
        .service_account_key
        .clone()
        .ok_or_else(|| ApiError::invalid("credentials.service_account_key_file: required"))?;
    let secret =
        cove_datastore::GcsSecret { endpoint: endpoint.clone(), bucket: req.bucket.clone(), service_account_key: key };
    let ca = app.policy.endpoint_ca(&format!("datastore:{name}")).map_err(ApiError::from)?;
    let client = cove_datastore::build_gcs(&secret, ca.as_deref()).map_err(ApiError::invalid)?;
    probe_datastore(&(client as Arc<dyn ObjectStore>), &format!("bucket `{}` at {endpoint}", req.bucket)).await?;
    let ds = cove_api::Datastore {
        name: name.clone(),
        kind: "gcs".into(),
        root: format!("gs://{}", req.bucket),
        endpoint: Some(endpoint),
    };
    register_network_datastore(app, ds, &secret, |d| d.add_gcs(&name, &secret, ca.as_deref())).await
}

/// In a private workspace a network datastore is reached only through its private endpoint: `url`'s
/// address, or every address its host name resolves to (a private DNS zone), must be the address of
/// the private endpoint with `service: datastore:<name>`.
async fn check_private_endpoint(app: &AppRef, name: &str, field: &str, url: &str) -> ApiResult<()> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ApiError::invalid(format!("{field}: `{url}` is not a URL (http://host:port)")))?;
    if scheme != "http" && scheme != "https" {
        return Err(ApiError::invalid(format!("{field}: scheme `{scheme}` is not http or https")));
    }
    if app.policy.public_network_access {
        return Ok(());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let service = format!("datastore:{name}");
    let Some(pe) = app.policy.private_endpoints.iter().find(|p| p.service == service) else {
        return Err(ApiError::invalid(format!(
            "{field}: `{url}` is not a configured private endpoint; a private workspace reaches datastores only through private endpoints (declare one with service: {service} in the workspace config)"
        )));
    };
    let port = if scheme == "https" { 443 } else { 80 };
    let addresses: Vec<std::net::SocketAddr> = match authority.parse::<std::net::SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => {
            let with_port = if authority.contains(':') { authority.to_string() } else { format!("{authority}:{port}") };
            tokio::net::lookup_host(with_port).await.map(|a| a.collect()).unwrap_or_default()
        }
    };
    if addresses.is_empty() || addresses.iter().any(|a| *a != pe.address) {
        return Err(ApiError::invalid(format!(
            "{field}: `{url}` is not datastore `{name}`'s private endpoint {} ({}); a private workspace reaches datastores only through their private endpoints",
            pe.name, pe.address
        )));
    }
    Ok(())
}

/// Lists the store's root, so a datastore that cannot be reached is refused when it is created.
async fn probe_datastore(client: &Arc<dyn ObjectStore>, what: &str) -> ApiResult<()> {
    let probe = tokio::time::timeout(std::time::Duration::from_secs(10), client.list_with_delimiter(None)).await;
    match probe {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            // The store's client names only the request that failed; a TLS failure is said in words.
            let tls = cove_tls::explain(&e).map_or(String::new(), |why| {
                let why = why.replace("server's certificate", "store's certificate");
                format!(" ({why}; name the CA that issued it with ca_file on the store's private endpoint)")
            });
            Err(ApiError::invalid(format!("endpoint: {what} cannot be listed: {e}{tls}")))
        }
        Err(_) => Err(ApiError::invalid(format!("endpoint: {what} did not answer within 10 s"))),
    }
}

/// Keeps a network datastore's connection and credentials in an owner-only file, then records it.
async fn register_network_datastore(
    app: &AppRef,
    ds: cove_api::Datastore,
    secret: &impl serde::Serialize,
    add: impl FnOnce(&cove_datastore::Datastores) -> cove_datastore::DatastoreResult<()>,
) -> ApiResult<(StatusCode, Json<cove_api::Datastore>)> {
    let name = ds.name.clone();
    let path = cove_workspace::layout::datastore_secret(&app.config.dir, &name);
    cove_workspace::write_secret(&path, &serde_json::to_string(secret).expect("strings serialise"))
        .map_err(|e| ApiError::internal("store the datastore's credentials", format!("{e:#}")))?;
    let stored = ds.clone();
    app.store.call(move |c| store::datastore_upsert(c, &stored)).await?;
    add(&app.datastores).map_err(|e| ApiError::internal("open the datastore", e))?;
    Ok((StatusCode::CREATED, Json(ds)))
}
