//! Output commit: assemble the committed parts in mini-batch order and publish them, with the files
//! the committed attempts' scripts wrote to `AZUREML_BI_OUTPUT_PATH`, as one set.
//!
//! On a local datastore the set is written under the job's private folder beside the output location
//! (`.cove-publishing-<job>`, on the same filesystem; no caller's path may name one) and renamed into
//! place as one directory: a reader sees no output, or all of
//! it. An object store has no rename, so each file is written in place through a multipart upload that
//! appears only when complete, and a manifest naming the set (`.cove-published`) is written last: a
//! reader who waits for it never takes a partial set, and Cove's own downloads serve only what the job
//! recorded as published, in the transaction that turns it Completed. If anything fails, or a cancel
//! wins, what was published is deleted, so a failed or canceled job publishes nothing. A crash in
//! between leaves the job Finalizing: the restart finds a set already renamed into place and takes it as
//! published, or deletes a staging folder and writes the set again (the same bytes), so the set ends
//! complete exactly once; a job whose cancel arrived meanwhile has its output deleted instead.

use crate::ControlRef;
use anyhow::Context;
use cove_datastore::{parse_uri, DataPath};
use cove_model::JobStatus;
use cove_store as store;
use futures::TryStreamExt;
use object_store::{ObjectStore, WriteMultipart};
use std::path::PathBuf;

/// The manifest an object-store output is complete with, written after every file of the set.
pub const MANIFEST: &str = ".cove-published";

pub async fn finalize(app: &ControlRef, name: &str) -> anyhow::Result<()> {
    let Some(job) = super::get(app, name).await? else {
        return Ok(());
    };
    let output_file_name = job.record.output_file_name.as_deref();
    let mut published = Published::of(app, name, &job.record.output_uri)?;
    if job.status == JobStatus::CancelRequested {
        // Resumed after a stop: an earlier run may have published some or all of the set.
        let files = script_files(app, name, output_file_name).await?.into_keys();
        published.files = files.chain(output_file_name.map(str::to_string)).map(|f| (f, 0)).collect();
        published.retract().await;
        cancel_now(app, name).await?;
        return Ok(());
    }
    if job.status != JobStatus::Finalizing {
        return Ok(());
    }
    let written = publish(app, name, output_file_name, &mut published).await;
    match written {
        Ok(true) => {}
        Ok(false) => {
            // The job stopped finalizing meanwhile (a cancel): nothing may stand as its output.
            published.retract().await;
            return cancel_now(app, name).await;
        }
        Err(error) => {
            published.retract().await;
            let reason = format!("failed to write the output: {error:#}");
            let n = name.to_string();
            app.store
                .call(move |c| store::job_transition(c, &n, &[JobStatus::Finalizing], JobStatus::Failed, Some(&reason)))
                .await?;
            super::ended(app.clone(), name.to_string());
            return Ok(());
        }
    }
    if let Some(pause) = cove_api::pause::pause_at("finalizing") {
        tokio::time::sleep(pause).await;
    }
    // The logs exist before the job is seen Completed (and are rewritten should a cancel win instead).
    if let Err(error) = crate::logs::write_job_logs(app, name, Some(JobStatus::Completed)).await {
        tracing::error!(job = %name, error = format!("{error:#}"), "failed to write job logs");
    }
    let n = name.to_string();
    let files = published.files.clone();
    let completed = app.store.call(move |c| store::job_complete(c, &n, &files)).await?;
    if !completed {
        // A cancel arrived while assembling: what was published must not stand as the job's output.
        published.retract().await;
        cancel_now(app, name).await?;
        return Ok(());
    }
    super::ended(app.clone(), name.to_string());
    Ok(())
}

/// Where finalizing publishes a job's output, and what it has published so far, so that it can be
/// taken back.
struct Published {
    store: std::sync::Arc<dyn ObjectStore>,
    /// The output location.
    root: DataPath,
    /// The job's private folder on a local datastore, beside the output location (`datastore::PUBLISHING`).
    staging_rel: String,
    /// On a local datastore: the output folder and the private folder its set is written in first.
    local: Option<(PathBuf, PathBuf)>,
    /// Paths relative to the output location, with their sizes.
    files: Vec<(String, u64)>,
}

impl Published {
    fn of(app: &ControlRef, job: &str, output_uri: &str) -> anyhow::Result<Published> {
        let root = parse_uri(output_uri).map_err(anyhow::Error::msg)?;
        let store = app.datastores.get(&root.datastore).map_err(anyhow::Error::msg)?;
        let staging_rel = match root.path.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{}-{job}", cove_datastore::PUBLISHING),
            None => format!("{}-{job}", cove_datastore::PUBLISHING),
        };
        let local = match app.datastores.local_root(&root.datastore) {
            Some(fs_root) if !root.path.is_empty() => Some((fs_root.join(&root.path), fs_root.join(&staging_rel))),
            _ => None,
        };
        Ok(Published { store, root, staging_rel, local, files: Vec::new() })
    }

    /// Where the set's files are written: the private folder on a local datastore, else in place.
    fn writing_root(&self) -> DataPath {
        match &self.local {
            Some(_) => DataPath { datastore: self.root.datastore.clone(), path: self.staging_rel.clone() },
            None => self.root.clone(),
        }
    }

    /// Deletes what was published, or was being: on a local datastore both folders whole, on an object
    /// store the manifest first (so the set stops being complete at once), then each file.
    async fn retract(&self) {
        if let Some((output, staging)) = self.local.clone() {
            let removed = tokio::task::spawn_blocking(move || {
                for dir in [staging, output] {
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::error!(dir = %dir.display(), error = %e, "could not delete an unpublished output")
                        }
                    }
                }
            });
            let _ = removed.await;
            return;
        }
        let manifest = self.root.join(MANIFEST).map(|m| m.object_path());
        let files = self.files.iter().filter_map(|(rel, _)| self.root.join(rel).ok().map(|p| p.object_path()));
        for path in manifest.into_iter().chain(files) {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::error!(%path, error = %e, "could not delete an unpublished output"),
            }
        }
    }
}

/// The files the committed attempts' scripts wrote, by name (a later mini-batch's file of the same
/// name wins), with where each is staged; never one named as the output file.
async fn script_files(
    app: &ControlRef,
    name: &str,
    output_file_name: Option<&str>,
) -> anyhow::Result<std::collections::BTreeMap<String, object_store::path::Path>> {
    let n = name.to_string();
    let staged = app.store.call(move |c| store::committed_outputs(c, &n)).await?;
    let mut files: std::collections::BTreeMap<String, object_store::path::Path> = Default::default();
    for (_, lease) in staged {
        let prefix = object_store::path::Path::from(store::staged_outputs_prefix(name, &lease));
        let mut listing = app.internal.list(Some(&prefix));
        while let Some(meta) = listing.try_next().await? {
            let Some(file) = meta.location.filename().map(str::to_string) else { continue };
            if Some(file.as_str()) != output_file_name {
                files.insert(file, meta.location.clone());
            }
        }
    }
    Ok(files)
}

/// Publishes the set: the committed attempts' script-written files, then the output file, then makes
/// them visible as one (see the module's comment). Returns false when the job stopped finalizing
/// meanwhile.
async fn publish(
    app: &ControlRef,
    name: &str,
    output_file_name: Option<&str>,
    published: &mut Published,
) -> anyhow::Result<bool> {
    if let Some(fs_root) = app.datastores.local_root(&published.root.datastore) {
        // A folder on the way to the output planted as a link since the job was accepted would send
        // the set elsewhere; looked at again just before anything is written (and before the rename).
        let (rel, staging) = (published.root.path.clone(), published.staging_rel.clone());
        tokio::task::spawn_blocking(move || {
            cove_datastore::refuse_links_on_the_way(&fs_root, &rel)
                .and_then(|()| cove_datastore::refuse_links_on_the_way(&fs_root, &staging))
        })
        .await?
        .map_err(anyhow::Error::msg)?;
    }
    if let Some((output, staging)) = published.local.clone() {
        let found = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<(String, u64)>>> {
            if output.is_dir() {
                // An earlier run renamed the whole set into place and stopped before the job completed.
                return Ok(Some(files_of(&output)?));
            }
            match std::fs::remove_dir_all(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Ok(None)
        })
        .await??;
        if let Some(files) = found {
            published.files = files;
            return Ok(true);
        }
    }
    let root = published.writing_root();
    let store = published.store.clone();
    for (file, source) in script_files(app, name, output_file_name).await? {
        let dest = root.join(&file).map_err(anyhow::Error::msg)?;
        let upload = store
            .put_multipart(&dest.object_path())
            .await
            .with_context(|| format!("failed to start writing {}", dest.uri()))?;
        let mut writer = WriteMultipart::new(upload);
        let mut size = 0u64;
        let mut stream = app.internal.get(&source).await?.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            size += chunk.len() as u64;
            writer.wait_for_capacity(8).await?;
            writer.write(&chunk);
        }
        writer.finish().await.with_context(|| format!("failed to publish {}", dest.uri()))?;
        published.files.push((file, size));
        if let Some(pause) = cove_api::pause::pause_at("publishing") {
            tokio::time::sleep(pause).await;
        }
    }
    if let Some(file_name) = output_file_name {
        match assemble(app, name, &root, file_name).await? {
            Some(size) => published.files.push((file_name.to_string(), size)),
            None => return Ok(false),
        }
    }
    published.files.sort();
    if status_of(app, name).await? != Some(JobStatus::Finalizing) {
        return Ok(false);
    }
    match published.local.clone() {
        Some((output, staging)) => {
            let (fs_root, rel) = (app.datastores.local_root(&published.root.datastore), published.root.path.clone());
            let renamed = tokio::task::spawn_blocking(move || {
                if let Some(fs_root) = fs_root {
                    cove_datastore::refuse_links_on_the_way(&fs_root, &rel).map_err(std::io::Error::other)?;
                }
                if !staging.exists() {
                    // Nothing to publish (no output file and no script-written file): no folder either.
                    return Ok(());
                }
                std::fs::create_dir_all(output.parent().expect("under the datastore's root"))?;
                std::fs::rename(&staging, &output)
            });
            renamed.await?.context("failed to move the output into place")?;
        }
        None => {
            let manifest = serde_json::json!({ "job": name, "files": published.files });
            let path = published.root.join(MANIFEST).map_err(anyhow::Error::msg)?;
            store
                .put(&path.object_path(), serde_json::to_vec_pretty(&manifest)?.into())
                .await
                .with_context(|| format!("failed to publish {}", path.uri()))?;
        }
    }
    Ok(true)
}

/// The files under `dir`, relative to it, with their sizes. Blocking.
fn files_of(dir: &std::path::Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() {
                out.push((rel, entry.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn cancel_now(app: &ControlRef, name: &str) -> anyhow::Result<()> {
    let n = name.to_string();
    app.store
        .call(move |c| store::job_transition(c, &n, &[JobStatus::CancelRequested], JobStatus::Canceled, None))
        .await?;
    super::ended(app.clone(), name.to_string());
    Ok(())
}

/// Streams parts (mini-batch index, object path in `source`), in the order given, into `writer`.
/// Writes go on in the background (at most 8 chunks in flight) while the next part is read, so memory
/// stays bounded however large the output.
pub async fn copy_parts(
    source: &dyn ObjectStore,
    parts: Vec<(u64, String)>,
    writer: &mut WriteMultipart,
) -> anyhow::Result<()> {
    for (idx, part) in parts {
        let bytes = source
            .get(&object_store::path::Path::from(part))
            .await
            .with_context(|| format!("failed to read the committed part of mini-batch {idx}"))?
            .bytes()
            .await?;
        writer.wait_for_capacity(8).await?;
        writer.write(&bytes);
    }
    Ok(())
}

/// Streams committed parts into `writer` in the order given: those kept in the state store (read a run
/// at a time, so memory stays bounded) and those stored as objects.
async fn copy_committed(
    app: &ControlRef,
    parts: Vec<(u64, String)>,
    writer: &mut WriteMultipart,
) -> anyhow::Result<()> {
    const RUN: usize = 256;
    let mut parts = parts.into_iter().peekable();
    while let Some((idx, key)) = parts.next() {
        let Some(lease) = key.strip_prefix(store::INLINE_PART) else {
            copy_parts(app.internal.as_ref(), vec![(idx, key)], writer).await?;
            continue;
        };
        let mut run = vec![(idx, lease.to_string())];
        while run.len() < RUN {
            match parts.next_if(|(_, k)| k.starts_with(store::INLINE_PART)) {
                Some((idx, k)) => run.push((idx, k[store::INLINE_PART.len()..].to_string())),
                None => break,
            }
        }
        let ids: Vec<String> = run.iter().map(|(_, lease)| lease.clone()).collect();
        let bodies =
            app.store.call(move |c| store::part_bodies(c, &ids.iter().map(String::as_str).collect::<Vec<_>>())).await?;
        let mut bodies: std::collections::HashMap<String, Vec<u8>> = bodies.into_iter().collect();
        for (idx, lease) in run {
            let body = bodies
                .remove(&lease)
                .with_context(|| format!("the committed part of mini-batch {idx} is missing from the state store"))?;
            writer.wait_for_capacity(8).await?;
            writer.write(&body);
        }
    }
    Ok(())
}

/// Publishes the output file: the assembly made while the job ran when there is a complete one (linked
/// into place on a local datastore that shares the state folder's filesystem, else streamed from its
/// file), otherwise the committed parts streamed in order. Returns its size once published, or `None`
/// when the job stopped finalizing meanwhile (nothing is published then).
async fn assemble(app: &ControlRef, name: &str, root: &DataPath, file_name: &str) -> anyhow::Result<Option<u64>> {
    let dest = root.join(file_name).map_err(anyhow::Error::msg)?;
    let store = app.datastores.get(&dest.datastore).map_err(anyhow::Error::msg)?;
    let path = dest.object_path();
    let assembled = super::assembly::take(app, name).await;
    if let (Some(assembled), Some(root)) = (&assembled, app.datastores.local_root(&dest.datastore)) {
        if status_of(app, name).await? != Some(JobStatus::Finalizing) {
            return Ok(None);
        }
        match super::assembly::link_into_place(assembled, &root, &path).await {
            Ok(true) => return Ok(Some(assembled.len)),
            Ok(false) => {}
            Err(error) => tracing::debug!(job = %name, error = format!("{error:#}"), "streaming the output instead"),
        }
    }
    let upload = store.put_multipart(&path).await.with_context(|| format!("failed to start writing {}", dest.uri()))?;
    let mut writer = WriteMultipart::new(upload);
    let streamed = match &assembled {
        Some(assembled) => stream_file(&assembled.path, &mut writer).await,
        None => {
            let n = name.to_string();
            let parts = app.store.call(move |c| store::committed_parts(c, &n)).await?;
            copy_committed(app, parts, &mut writer).await
        }
    }
    .with_context(|| format!("failed to write {}", dest.uri()));
    let still = status_of(app, name).await?;
    if let Err(error) = streamed {
        // Nothing half-written stays behind: the upload is abandoned, and with it its staging data.
        let _ = writer.abort().await;
        return Err(error);
    }
    if still != Some(JobStatus::Finalizing) {
        // The upload is never completed, so nothing is published whether or not the store takes the
        // abort; one that refuses it keeps the staged bytes until its own expiry, and the job still ends.
        if let Err(error) = writer.abort().await {
            tracing::warn!(job = %name, error = %error, "the store did not take the abandoned upload's abort");
        }
        return Ok(None);
    }
    writer.finish().await.with_context(|| format!("failed to publish {}", dest.uri()))?;
    let size = store.head(&path).await.with_context(|| format!("failed to read back {}", dest.uri()))?.size;
    Ok(Some(size))
}

async fn status_of(app: &ControlRef, name: &str) -> anyhow::Result<Option<JobStatus>> {
    let n = name.to_string();
    Ok(app.store.call(move |c| store::job_get(c, &n)).await?.map(|j| j.status))
}

async fn stream_file(path: &std::path::Path, writer: &mut WriteMultipart) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 8 << 20;
    let mut file = tokio::fs::File::open(path).await?;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        let read = (&mut file).take(CHUNK as u64).read_to_end(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        writer.wait_for_capacity(8).await?;
        writer.write(&chunk);
    }
}
