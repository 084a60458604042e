//! `cove data`: data assets, as the reference's `az ml data` registers them: a named, versioned file or
//! folder that jobs take as input (`--input azureml:NAME@latest` or `azureml:NAME:VERSION`).

use crate::render::table;
use crate::{print_json, upload, Output};
use anyhow::{bail, Context};
use cove_api::{encode, Client, CreateDataAsset, DataAsset, InputType, Workspace};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The reference's data asset YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataYaml {
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    name: String,
    #[serde(default)]
    version: Option<serde_norway::Value>,
    #[serde(rename = "type", default = "uri_folder")]
    kind: String,
    path: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn uri_folder() -> String {
    "uri_folder".into()
}

/// What `cove data create` was given, from the YAML file or from flags.
pub struct DataCreate {
    pub name: String,
    pub version: Option<u32>,
    pub kind: String,
    /// A datastore URI, or a local path (relative to `base`), which is uploaded first.
    pub path: String,
    pub base: std::path::PathBuf,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl DataCreate {
    /// Reads the reference's data asset YAML; local paths in it are relative to the file.
    pub fn from_yaml(file: &Path) -> anyhow::Result<DataCreate> {
        let text = crate::resources::read_yaml(file)?;
        cove_spec::check_untrusted_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let y: DataYaml = serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let version = crate::resources::yaml_version(file, y.version.as_ref())?;
        Ok(DataCreate {
            name: y.name,
            version,
            kind: y.kind,
            path: y.path,
            base: file.parent().unwrap_or(Path::new(".")).to_path_buf(),
            description: y.description,
            tags: y.tags,
        })
    }
}

fn input_type(kind: &str) -> anyhow::Result<InputType> {
    match kind {
        "uri_folder" => Ok(InputType::UriFolder),
        "uri_file" => Ok(InputType::UriFile),
        "mltable" => bail!("type: `mltable` data assets are not supported; register the folder as uri_folder"),
        other => bail!("type: `{other}` is not a data asset type (uri_folder, uri_file)"),
    }
}

pub async fn create(client: &Client, req: DataCreate, out: Output) -> anyhow::Result<()> {
    let kind = input_type(&req.kind)?;
    let name = cove_spec::validate_resource_name("name", &req.name).map_err(anyhow::Error::msg)?;
    let path = if req.path.contains("://") {
        req.path.clone()
    } else {
        let local = req.base.join(&req.path);
        let meta = std::fs::metadata(&local).with_context(|| format!("path: `{}` does not exist", local.display()))?;
        match (kind, meta.is_dir()) {
            (InputType::UriFile, true) => bail!("type: `{}` is a folder; use type: uri_folder", local.display()),
            (InputType::UriFolder, false) => bail!("type: `{}` is a file; use type: uri_file", local.display()),
            _ => {}
        }
        let ws: Workspace = client.get("/api/v1/workspace").await?;
        upload::upload(client, &ws.default_datastore, &local).await?
    };
    let body = CreateDataAsset { name, version: req.version, kind, path, description: req.description, tags: req.tags };
    let asset: DataAsset = client.post("/api/v1/data", &body).await?;
    if out.json {
        return print_json(&asset);
    }
    println!("Registered data asset {} version {} ({})", asset.name, asset.version, asset.path);
    eprintln!(
        "Use it as a job's input: --input azureml:{}:{} (or azureml:{}@latest)",
        asset.name, asset.version, asset.name
    );
    Ok(())
}

pub async fn list(client: &Client, name: Option<&str>, out: Output) -> anyhow::Result<()> {
    let path = match name {
        Some(n) => format!("/api/v1/data?name={}", encode(n)),
        None => "/api/v1/data".into(),
    };
    let assets: Vec<DataAsset> = client.get(&path).await?;
    if out.json {
        return print_json(&assets);
    }
    let rows: Vec<Vec<String>> = assets
        .iter()
        .map(|a| vec![a.name.clone(), a.version.to_string(), kind_name(a.kind).into(), a.path.clone()])
        .collect();
    print!("{}", table(&["NAME", "VERSION", "TYPE", "PATH"], &rows));
    Ok(())
}

pub async fn show(client: &Client, name: &str, version: Option<&str>, out: Output) -> anyhow::Result<()> {
    let v = version.unwrap_or("latest");
    let a: DataAsset = client.get(&format!("/api/v1/data/{}/versions/{}", encode(name), encode(v))).await?;
    if out.json {
        return print_json(&a);
    }
    println!("Name:         {}", a.name);
    println!("Version:      {}", a.version);
    println!("Type:         {}", kind_name(a.kind));
    println!("Path:         {}", a.path);
    if let Some(d) = &a.description {
        println!("Description:  {d}");
    }
    println!("Created:      {}", a.created_at);
    Ok(())
}

fn kind_name(kind: InputType) -> &'static str {
    match kind {
        InputType::UriFolder => "uri_folder",
        InputType::UriFile => "uri_file",
    }
}
