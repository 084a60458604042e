//! `cove endpoint|deployment|model ...`: read the user's YAML, upload what it points at, call the API.

use crate::render::table;
use crate::{print_json, upload, Output};
use anyhow::{bail, Context};
use cove_api::{encode, Client, CreateDeployment, CreateModel, Deployment, Endpoint, Model, UpdateEndpoint, Workspace};
use cove_spec::{EnvironmentRef, ModelRef, ModelType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads an environment's conda and pip files, named relative to the YAML `file` that names them.
pub fn environment_files(
    file: &Path,
    field_prefix: &str,
    def: &cove_spec::EnvironmentDefinition,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let read = |field: &str, path: &Option<String>| -> anyhow::Result<Option<String>> {
        match path {
            Some(p) => Ok(Some(read_yaml(&local_path(file, &format!("{field_prefix}{field}"), p)?)?)),
            None => Ok(None),
        }
    };
    Ok((read("conda_file", &def.conda_file)?, read("pip_file", &def.pip_file)?))
}

pub fn read_yaml(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("failed to read {}", file.display()))
}

fn file_label(file: &Path) -> String {
    file.display().to_string()
}

pub async fn endpoint_create(client: &Client, file: &Path, name: Option<String>, out: Output) -> anyhow::Result<()> {
    let text = read_yaml(file)?;
    let mut spec = cove_spec::parse_endpoint(&file_label(file), &text)?;
    if let Some(name) = name {
        spec.name = cove_spec::validate_resource_name("--name", &name).map_err(anyhow::Error::msg)?;
    }
    let existed = client.get::<Endpoint>(&format!("/api/v1/endpoints/{}", encode(&spec.name))).await.is_ok();
    let ep: Endpoint = client.post("/api/v1/endpoints", &spec).await?;
    if out.json {
        return print_json(&ep);
    }
    println!("{} endpoint {}", if existed { "Updated" } else { "Created" }, ep.spec.name);
    println!("Scoring URI: {}", ep.scoring_uri);
    Ok(())
}

pub async fn endpoint_list(client: &Client, out: Output) -> anyhow::Result<()> {
    let eps: Vec<Endpoint> = client.get("/api/v1/endpoints").await?;
    if out.json {
        return print_json(&eps);
    }
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.spec.name.clone(),
                e.spec.default_deployment.clone().unwrap_or_else(|| "-".into()),
                e.deployments.len().to_string(),
                e.scoring_uri.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "DEFAULT", "DEPLOYMENTS", "SCORING URI"], &rows));
    Ok(())
}

pub async fn endpoint_show(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let ep: Endpoint = client.get(&format!("/api/v1/endpoints/{}", encode(name))).await?;
    if out.json {
        return print_json(&ep);
    }
    println!("Name:               {}", ep.spec.name);
    println!("Description:        {}", ep.spec.description.as_deref().unwrap_or("-"));
    println!("Auth mode:          {}", ep.spec.auth_mode);
    println!("Default deployment: {}", ep.spec.default_deployment.as_deref().unwrap_or("-"));
    println!(
        "Deployments:        {}",
        if ep.deployments.is_empty() { "-".to_string() } else { ep.deployments.join(", ") }
    );
    println!("Scoring URI:        {}", ep.scoring_uri);
    println!("Network access:     {}", ep.network_access);
    println!("Provisioning state: {}", ep.provisioning_state);
    Ok(())
}

pub fn parse_sets(sets: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in sets {
        let (k, v) = s.split_once('=').with_context(|| format!("--set `{s}`: expected key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

pub async fn endpoint_update(client: &Client, name: &str, sets: &[String], out: Output) -> anyhow::Result<()> {
    let set = parse_sets(sets)?;
    if set.is_empty() {
        bail!("nothing to update: give --set key=value");
    }
    let ep: Endpoint = client.patch(&format!("/api/v1/endpoints/{}", encode(name)), &UpdateEndpoint { set }).await?;
    if out.json {
        return print_json(&ep);
    }
    println!("Updated endpoint {}", ep.spec.name);
    Ok(())
}

pub async fn endpoint_delete(client: &Client, name: &str) -> anyhow::Result<()> {
    client.delete(&format!("/api/v1/endpoints/{}", encode(name))).await?;
    println!("Deleted endpoint {name} and its deployments (its jobs are kept)");
    Ok(())
}

pub struct DeploymentCreate {
    pub file: PathBuf,
    pub endpoint_name: Option<String>,
    pub name: Option<String>,
    pub set_default: bool,
    pub skip_script_validation: bool,
}

/// Changes a deployment in place: `--set KEY=VALUE` for its settings, description or tags.
pub async fn deployment_update(
    client: &Client,
    endpoint: &str,
    name: &str,
    sets: &[String],
    out: Output,
) -> anyhow::Result<()> {
    let set = parse_sets(sets)?;
    let path = format!("/api/v1/endpoints/{}/deployments/{}", encode(endpoint), encode(name));
    let dep: Deployment =
        client.json(cove_api::Method::PATCH, &path, Some(&serde_json::json!({ "set": set })), &[]).await?;
    if out.json {
        return print_json(&dep);
    }
    println!("Updated deployment {} in endpoint {}", dep.name, dep.endpoint_name);
    Ok(())
}

/// Resolves a path written in the YAML against the YAML file's folder, and checks that it exists.
fn local_path(yaml: &Path, field: &str, written: &str) -> anyhow::Result<PathBuf> {
    let base = yaml.parent().unwrap_or(Path::new("."));
    let path = base.join(written);
    if !path.exists() {
        bail!("{}: field `{field}`: `{}` does not exist", yaml.display(), path.display());
    }
    Ok(path)
}

pub async fn deployment_create(client: &Client, args: DeploymentCreate, out: Output) -> anyhow::Result<()> {
    let file = &args.file;
    let text = read_yaml(file)?;
    let mut spec = cove_spec::parse_deployment(&file_label(file), &text)?;
    if let Some(e) = args.endpoint_name {
        spec.endpoint_name =
            Some(cove_spec::validate_resource_name("--endpoint-name", &e).map_err(anyhow::Error::msg)?);
    }
    if let Some(n) = args.name {
        spec.name = cove_spec::validate_resource_name("--name", &n).map_err(anyhow::Error::msg)?;
    }
    let endpoint = spec
        .endpoint_name
        .clone()
        .with_context(|| format!("{}: field `endpoint_name`: required (or give --endpoint-name)", file.display()))?;
    // Everything local is checked before anything is uploaded or created.
    let model_dir = match &spec.model {
        ModelRef::Inline { path, .. } => Some(local_path(file, "model.path", path)?),
        ModelRef::Registered { .. } => None,
    };
    let code_dir = match &spec.code {
        Some(code) => {
            let dir = local_path(file, "code_configuration.code", &code.code)?;
            local_path(&dir.join("x"), "code_configuration.scoring_script", &code.scoring_script)?;
            Some(dir)
        }
        None => None,
    };
    let (conda_file, pip_file) = match &spec.environment {
        Some(EnvironmentRef::Inline(def)) => environment_files(file, "environment.", def)?,
        _ => (None, None),
    };
    let ws: Workspace = client.get("/api/v1/workspace").await?;
    let _: Endpoint = client.get(&format!("/api/v1/endpoints/{}", encode(&endpoint))).await?;
    let model_upload = match &model_dir {
        Some(dir) => Some(upload::upload(client, &ws.default_datastore, dir).await?),
        None => None,
    };
    if let (Some(dir), Some(code)) = (&code_dir, spec.code.as_mut()) {
        code.code = upload::upload(client, &ws.default_datastore, dir).await?;
    }
    let req = CreateDeployment {
        spec,
        conda_file,
        pip_file,
        model_upload,
        set_default: args.set_default,
        skip_script_validation: args.skip_script_validation,
    };
    let dep: Deployment = client.post(&format!("/api/v1/endpoints/{}/deployments", encode(&endpoint)), &req).await?;
    if out.json {
        return print_json(&dep);
    }
    println!(
        "Created deployment {} in endpoint {}{}",
        dep.name,
        dep.endpoint_name,
        if dep.is_default { " (default)" } else { "" }
    );
    println!("Model: {}:{}", dep.model.name, dep.model.version);
    Ok(())
}

pub async fn deployment_list(client: &Client, endpoint: &str, out: Output) -> anyhow::Result<()> {
    let deps: Vec<Deployment> = client.get(&format!("/api/v1/endpoints/{}/deployments", encode(endpoint))).await?;
    if out.json {
        return print_json(&deps);
    }
    let rows: Vec<Vec<String>> = deps
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                if d.is_default { "yes".into() } else { "".into() },
                format!("{}:{}", d.model.name, d.model.version),
                d.compute.clone(),
                d.settings.instance_count.to_string(),
                d.settings.mini_batch_size.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "DEFAULT", "MODEL", "COMPUTE", "INSTANCES", "MINI-BATCH"], &rows));
    Ok(())
}

pub async fn deployment_show(client: &Client, endpoint: &str, name: &str, out: Output) -> anyhow::Result<()> {
    let d: Deployment =
        client.get(&format!("/api/v1/endpoints/{}/deployments/{}", encode(endpoint), encode(name))).await?;
    if out.json {
        return print_json(&d);
    }
    let s = &d.settings;
    println!("Name:                         {}", d.name);
    println!("Endpoint:                     {}{}", d.endpoint_name, if d.is_default { " (default)" } else { "" });
    println!("Model:                        {}:{}", d.model.name, d.model.version);
    println!("Scoring script:               {}", d.scoring_script.as_deref().unwrap_or("-"));
    println!("Python:                       {}", d.python);
    if let Some(e) = &d.environment {
        println!("Environment:                  {} (build {}, {})", e.source, e.key, e.interpreter);
        if let Some(pin) = &e.python_pin {
            println!("  python pin:                 {pin}");
        }
        if let Some(image) = &e.image_not_used {
            println!("  image:                      {image} (not used: built from the conda and pip files)");
        }
        for o in &e.overrides_applied {
            println!("  override applied:           {o}");
        }
        for w in &e.warnings {
            println!("  warning:                    {w}");
        }
        for n in &e.notes {
            println!("  note:                       {n}");
        }
        // The lock's lines without their hashes.
        let packages: Vec<&str> = e.build.lock.lines().filter_map(|l| l.split_whitespace().next()).collect();
        println!("  packages:                   {}", packages.join(" "));
        println!("  build log:                  {}", e.log);
    }
    println!("Sandbox:                      {}", d.sandbox);
    println!("Compute:                      {}", d.compute);
    println!("instance_count:               {}", s.instance_count);
    println!("max_concurrency_per_instance: {}", s.max_concurrency_per_instance);
    println!("mini_batch_size:              {}", s.mini_batch_size);
    println!("output_action:                {}", s.output_action);
    println!("output_file_name:             {}", s.output_file_name.as_deref().unwrap_or("-"));
    println!(
        "retry_settings:               max_retries={} timeout={}s",
        s.retry_settings.max_retries, s.retry_settings.timeout_secs
    );
    println!("error_threshold:              {}", s.error_threshold);
    println!("logging_level:                {}", s.logging_level);
    Ok(())
}

pub async fn deployment_delete(client: &Client, endpoint: &str, name: &str) -> anyhow::Result<()> {
    client.delete(&format!("/api/v1/endpoints/{}/deployments/{}", encode(endpoint), encode(name))).await?;
    println!("Deleted deployment {name} of endpoint {endpoint}");
    Ok(())
}

/// What `cove model create` was given, from the reference's model YAML or from flags.
pub struct ModelCreate {
    pub name: String,
    pub version: Option<u32>,
    /// A local file or folder (uploaded first) or a datastore URI.
    pub path: String,
    pub model_type: ModelType,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// The reference's model YAML.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelYaml {
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    name: String,
    #[serde(default)]
    version: Option<serde_norway::Value>,
    path: String,
    #[serde(rename = "type", default = "custom_model")]
    model_type: ModelType,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Accepted as the reference writes them; Cove keeps neither.
    #[serde(default, rename = "properties")]
    _properties: BTreeMap<String, String>,
    #[serde(default, rename = "stage")]
    _stage: Option<String>,
}

fn custom_model() -> ModelType {
    ModelType::CustomModel
}

impl ModelCreate {
    /// Reads the reference's model YAML; a local `path` is relative to the file.
    pub fn from_yaml(file: &Path) -> anyhow::Result<ModelCreate> {
        let text = read_yaml(file)?;
        cove_spec::check_untrusted_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let y: ModelYaml = serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let version = yaml_version(file, y.version.as_ref())?;
        let path =
            if y.path.contains("://") { y.path } else { local_path(file, "path", &y.path)?.display().to_string() };
        Ok(ModelCreate {
            name: y.name,
            version,
            path,
            model_type: y.model_type,
            description: y.description,
            tags: y.tags,
        })
    }
}

/// The `version:` of an asset's YAML (the reference writes `1` or `"1"`): a whole number from 1.
pub fn yaml_version(file: &Path, version: Option<&serde_norway::Value>) -> anyhow::Result<Option<u32>> {
    let Some(v) = version else { return Ok(None) };
    let n = v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).and_then(|n| u32::try_from(n).ok());
    let n = n.filter(|n| *n > 0);
    n.map(Some).with_context(|| format!("{}: field `version`: expected a whole number from 1", file.display()))
}

pub async fn model_create(client: &Client, req: ModelCreate, out: Output) -> anyhow::Result<()> {
    let name = cove_spec::validate_resource_name("--name", &req.name).map_err(anyhow::Error::msg)?;
    let uri = if req.path.contains("://") {
        req.path.clone()
    } else {
        let ws: Workspace = client.get("/api/v1/workspace").await?;
        upload::upload(client, &ws.default_datastore, Path::new(&req.path)).await?
    };
    let body = CreateModel {
        name,
        path: uri,
        model_type: req.model_type,
        description: req.description,
        version: req.version,
        tags: req.tags,
    };
    let model: Model = client.post("/api/v1/models", &body).await?;
    if out.json {
        return print_json(&model);
    }
    println!("Registered model {} version {}", model.name, model.version);
    Ok(())
}

pub async fn model_archive(
    client: &Client,
    name: &str,
    version: u32,
    archived: bool,
    out: Output,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/models/{}/versions/{version}/archive", encode(name));
    let model: Model = client.post(&path, &serde_json::json!({ "archived": archived })).await?;
    if out.json {
        return print_json(&model);
    }
    let what = if archived { "Archived" } else { "Restored" };
    println!("{what} model {} version {}", model.name, model.version);
    Ok(())
}

pub async fn model_delete(client: &Client, name: &str, version: u32, out: Output) -> anyhow::Result<()> {
    let path = format!("/api/v1/models/{}/versions/{version}", encode(name));
    let deleted: serde_json::Value = client.json(cove_api::Method::DELETE, &path, None::<&()>, &[]).await?;
    if out.json {
        return print_json(&deleted);
    }
    println!("Deleted model {name} version {version}");
    Ok(())
}

pub async fn model_list(client: &Client, name: Option<&str>, out: Output) -> anyhow::Result<()> {
    let path = match name {
        Some(n) => format!("/api/v1/models?name={}", encode(n)),
        None => "/api/v1/models".into(),
    };
    let models: Vec<Model> = client.get(&path).await?;
    if out.json {
        return print_json(&models);
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| vec![m.name.clone(), m.version.to_string(), m.model_type.to_string(), m.created_at.clone()])
        .collect();
    print!("{}", table(&["NAME", "VERSION", "TYPE", "CREATED"], &rows));
    Ok(())
}

pub async fn model_show(client: &Client, name: &str, version: Option<u32>, out: Output) -> anyhow::Result<()> {
    let v = version.map_or("latest".to_string(), |v| v.to_string());
    let m: Model = client.get(&format!("/api/v1/models/{}/versions/{v}", encode(name))).await?;
    if out.json {
        return print_json(&m);
    }
    println!("Name:    {}\nVersion: {}\nType:    {}\nPath:    {}", m.name, m.version, m.model_type, m.path);
    Ok(())
}

pub async fn workspace_show(client: &Client, out: Output) -> anyhow::Result<()> {
    let ws: Workspace = client.get("/api/v1/workspace").await?;
    if out.json {
        return print_json(&ws);
    }
    println!("Workspace:         {}", ws.name);
    println!("API:               {}", ws.api_url);
    println!("Default datastore: {}", ws.default_datastore);
    println!("Default Python:    {}", ws.default_python);
    println!(
        "Sandbox:           {}",
        if ws.sandbox == "none" { "none (warning: scoring code runs without a sandbox)" } else { ws.sandbox.as_str() }
    );
    for d in &ws.datastores {
        println!("Datastore:         {} ({}, {})", d.name, d.kind, d.root);
    }
    for c in &ws.computes {
        println!("Compute:           {} ({}, up to {} instances)", c.name, c.kind, c.max_instances);
    }
    Ok(())
}
