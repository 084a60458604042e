//! Uploading local files and folders into a datastore, as the reference's CLI does before it invokes.

use anyhow::{bail, Context};
use cove_api::{encode, Client};
use std::path::Path;

/// A job's input, uploaded.
pub struct UploadedInput {
    pub uri: String,
    /// Files in subfolders, which a job does not score and so were not uploaded.
    pub left_out: usize,
}

/// Uploads a job's local input: a file, or the top-level files of a folder (all a job scores).
pub async fn upload_input(client: &Client, datastore: &str, local: &Path) -> anyhow::Result<UploadedInput> {
    let uri = upload_filtered(client, datastore, local, true).await?;
    let mut all = Vec::new();
    if local.is_dir() {
        collect(local, "", &mut all)?;
    }
    let left_out = all.iter().filter(|(_, rel)| rel.contains('/')).count();
    Ok(UploadedInput { uri, left_out })
}

/// Uploads a file or folder under `LocalUpload/<uuid>/<name>` of `datastore`; returns its datastore URI.
pub async fn upload(client: &Client, datastore: &str, local: &Path) -> anyhow::Result<String> {
    upload_filtered(client, datastore, local, false).await
}

async fn upload_filtered(client: &Client, datastore: &str, local: &Path, top_level: bool) -> anyhow::Result<String> {
    let meta = std::fs::metadata(local).with_context(|| format!("`{}` does not exist", local.display()))?;
    let name = local
        .canonicalize()?
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .with_context(|| format!("`{}` has no file name", local.display()))?;
    let prefix = format!("LocalUpload/{}/{name}", uuid::Uuid::new_v4().simple());
    let mut files = Vec::new();
    if meta.is_dir() {
        collect(local, "", &mut files)?;
        if top_level {
            files.retain(|(_, rel)| !rel.contains('/'));
        }
        if files.is_empty() {
            bail!("folder `{}` holds no files{}", local.display(), if top_level { " at its top level" } else { "" });
        }
    } else {
        files.push((local.to_path_buf(), String::new()));
    }
    for (path, rel) in files {
        let bytes = std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
        let key = if rel.is_empty() { prefix.clone() } else { format!("{prefix}/{rel}") };
        let url = format!(
            "/api/v1/datastores/{}/files/{}",
            encode(datastore),
            key.split('/').map(encode).collect::<Vec<_>>().join("/")
        );
        client.put_bytes(&url, bytes.into()).await.with_context(|| format!("failed to upload {}", path.display()))?;
    }
    Ok(format!("azureml://datastores/{datastore}/paths/{prefix}"))
}

fn collect(dir: &Path, rel: &str, out: &mut Vec<(std::path::PathBuf, String)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "__pycache__" {
            continue;
        }
        let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let kind = e.file_type()?;
        if kind.is_dir() {
            collect(&e.path(), &child_rel, out)?;
        } else if kind.is_file() {
            out.push((e.path(), child_rel));
        }
    }
    Ok(())
}
