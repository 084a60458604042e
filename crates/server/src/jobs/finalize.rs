//! Output commit: assemble the committed parts in mini-batch order and publish them atomically, with
//! the files the committed attempts' scripts wrote to `AZUREML_BI_OUTPUT_PATH`.
//!
//! Every object is written through a multipart upload that becomes visible only when it completes (on
//! a local datastore: a staging file renamed into place), and the job turns Completed, recording what
//! it published, in the transaction after them. If anything fails, or a cancel wins, everything just
//! published is deleted, so a failed or canceled job publishes nothing. A crash in between leaves the
//! job Finalizing; running this again rewrites the same bytes, so the published output never holds a
//! partial or duplicated row, nor a file of an attempt that was not committed.

use crate::datastore::parse_uri;
use crate::store;
use crate::AppRef;
use anyhow::Context;
use cove_model::JobStatus;
use futures::TryStreamExt;
use object_store::{ObjectStore, WriteMultipart};

pub(crate) async fn finalize(app: &AppRef, name: &str) -> anyhow::Result<()> {
    let Some(job) = super::get(app, name).await? else {
        return Ok(());
    };
    if job.status == JobStatus::CancelRequested {
        cancel_now(app, name).await?;
        return Ok(());
    }
    if job.status != JobStatus::Finalizing {
        return Ok(());
    }
    let mut published = Published::default();
    let written =
        publish(app, name, &job.record.output_uri, job.record.output_file_name.as_deref(), &mut published).await;
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

/// What finalizing has published so far, so that it can be taken back.
#[derive(Default)]
struct Published {
    store: Option<std::sync::Arc<dyn ObjectStore>>,
    root: String,
    /// Paths relative to the output location, with their sizes.
    files: Vec<(String, u64)>,
}

impl Published {
    async fn retract(&self) {
        let Some(store) = &self.store else { return };
        for (rel, _) in &self.files {
            let _ = store.delete(&crate::datastore::object_path_of(&format!("{}/{rel}", self.root))).await;
        }
    }
}

/// Publishes the committed attempts' script-written files (in mini-batch order; a later mini-batch's
/// file of the same name wins), then the output file. Returns false when the job stopped finalizing
/// meanwhile.
async fn publish(
    app: &AppRef,
    name: &str,
    output_uri: &str,
    output_file_name: Option<&str>,
    published: &mut Published,
) -> anyhow::Result<bool> {
    let root = parse_uri(output_uri).map_err(anyhow::Error::msg)?;
    let store = app.datastores.get(&root.datastore).map_err(anyhow::Error::msg)?;
    published.store = Some(store.clone());
    published.root = root.path.clone();
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
    for (file, source) in files {
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
    }
    if let Some(file_name) = output_file_name {
        match assemble(app, name, output_uri, file_name).await? {
            Some(size) => published.files.push((file_name.to_string(), size)),
            None => return Ok(false),
        }
    }
    published.files.sort();
    Ok(true)
}

async fn cancel_now(app: &AppRef, name: &str) -> anyhow::Result<()> {
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
async fn copy_committed(app: &AppRef, parts: Vec<(u64, String)>, writer: &mut WriteMultipart) -> anyhow::Result<()> {
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
async fn assemble(app: &AppRef, name: &str, output_uri: &str, file_name: &str) -> anyhow::Result<Option<u64>> {
    let dest = parse_uri(output_uri).map_err(anyhow::Error::msg)?.join(file_name).map_err(anyhow::Error::msg)?;
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

async fn status_of(app: &AppRef, name: &str) -> anyhow::Result<Option<JobStatus>> {
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
