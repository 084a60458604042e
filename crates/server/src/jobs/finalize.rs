//! Output commit: assemble the committed parts in mini-batch order and publish them atomically.
//!
//! The output object is written through a multipart upload that becomes visible only when it
//! completes (on a local datastore: a staging file renamed into place), and the job turns Completed in
//! the transaction after it. A crash in between leaves the job Finalizing; running this again rewrites
//! the same bytes, so the published output never holds a partial or duplicated row.

use crate::datastore::parse_uri;
use crate::store;
use crate::AppRef;
use anyhow::Context;
use cove_model::JobStatus;
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
    let published = match &job.record.output_file_name {
        Some(file_name) => match assemble(app, name, &job.record.output_uri, file_name).await {
            Ok(published) => published,
            Err(error) => {
                let reason = format!("failed to write the output: {error:#}");
                let n = name.to_string();
                app.store
                    .call(move |c| {
                        store::job_transition(c, &n, &[JobStatus::Finalizing], JobStatus::Failed, Some(&reason))
                    })
                    .await?;
                super::ended(app.clone(), name.to_string());
                return Ok(());
            }
        },
        None => None,
    };
    // The logs exist before the job is seen Completed (and are rewritten should a cancel win instead).
    if let Err(error) = crate::logs::write_job_logs(app, name, Some(JobStatus::Completed)).await {
        tracing::error!(job = %name, error = format!("{error:#}"), "failed to write job logs");
    }
    let n = name.to_string();
    let completed = app
        .store
        .call(move |c| store::job_transition(c, &n, &[JobStatus::Finalizing], JobStatus::Completed, None))
        .await?;
    if !completed {
        // A cancel arrived while assembling: what was published must not stand as the job's output.
        if let Some((store, path)) = published {
            let _ = store.delete(&path).await;
        }
        cancel_now(app, name).await?;
        return Ok(());
    }
    super::ended(app.clone(), name.to_string());
    Ok(())
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

type Published = Option<(std::sync::Arc<dyn ObjectStore>, object_store::path::Path)>;

/// Streams the committed parts into the output file; returns where it was published, or `None` when
/// the job stopped finalizing meanwhile (nothing is published then).
async fn assemble(app: &AppRef, name: &str, output_uri: &str, file_name: &str) -> anyhow::Result<Published> {
    let dest = parse_uri(output_uri).map_err(anyhow::Error::msg)?.join(file_name).map_err(anyhow::Error::msg)?;
    let store = app.datastores.get(&dest.datastore).map_err(anyhow::Error::msg)?;
    let n = name.to_string();
    let parts = app.store.call(move |c| store::committed_parts(c, &n)).await?;
    let path = dest.object_path();
    let upload = store.put_multipart(&path).await.with_context(|| format!("failed to start writing {}", dest.uri()))?;
    let mut writer = WriteMultipart::new(upload);
    let streamed = copy_parts(app.internal.as_ref(), parts, &mut writer)
        .await
        .with_context(|| format!("failed to write {}", dest.uri()));
    let n = name.to_string();
    let still = app.store.call(move |c| store::job_get(c, &n)).await?.map(|j| j.status);
    if let Err(error) = streamed {
        // Nothing half-written stays behind: the upload is abandoned, and with it its staging data.
        let _ = writer.abort().await;
        return Err(error);
    }
    if still != Some(JobStatus::Finalizing) {
        writer.abort().await?;
        return Ok(None);
    }
    writer.finish().await.with_context(|| format!("failed to publish {}", dest.uri()))?;
    Ok(Some((store, path)))
}
