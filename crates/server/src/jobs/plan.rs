//! Planning: list a job's input files once (sorted, deterministic), store them as one manifest object,
//! and record one row per mini-batch pointing at its slice of the manifest.

use crate::datastore::parse_uri;
use crate::store::{self, JobRow, PlannedBatch};
use crate::AppRef;
use anyhow::Context;
use cove_api::InputType;
use cove_model::{batch_count, batch_range, JobStatus};
use object_store::ObjectStore;

pub fn manifest_key(job: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("jobs/{job}/manifest"))
}

/// Lists the input files a job will score, sorted by path.
///
/// # Errors
/// A message for the user when the input does not exist or holds no files.
pub async fn list_inputs(
    store: &dyn ObjectStore,
    input_uri: &str,
    input_type: InputType,
) -> Result<Vec<String>, String> {
    let input = parse_uri(input_uri)?;
    match input_type {
        InputType::UriFile => {
            store.head(&input.object_path()).await.map_err(|_| format!("input file `{input_uri}` does not exist"))?;
            Ok(vec![input.path])
        }
        InputType::UriFolder => {
            let prefix = (!input.path.is_empty()).then(|| input.object_path());
            let listing = store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map_err(|e| format!("failed to list input folder `{input_uri}`: {e}"))?;
            let mut files: Vec<String> = listing.objects.into_iter().map(|o| o.location.to_string()).collect();
            files.sort_unstable();
            if files.is_empty() {
                return Err(format!("input folder `{input_uri}` holds no files"));
            }
            Ok(files)
        }
    }
}

/// Plans a job that is NotStarted or Preparing; returns true when it is now Queued.
pub async fn plan(app: &AppRef, job: &JobRow) -> anyhow::Result<bool> {
    let name = job.name.clone();
    let moved = app
        .store
        .call(move |c| {
            store::job_transition(c, &name, &[JobStatus::NotStarted, JobStatus::Preparing], JobStatus::Preparing, None)
        })
        .await?;
    if !moved {
        return Ok(false);
    }
    let input = &job.record.input;
    let ds = parse_uri(&input.uri).map_err(anyhow::Error::msg)?;
    let files = match (&job.record.files, app.datastores.get(&ds.datastore)) {
        (Some(files), Ok(_)) => Ok(files.clone()),
        (None, Ok(store)) => list_inputs(store.as_ref(), &input.uri, input.input_type).await,
        (_, Err(e)) => Err(e),
    };
    let files = match files {
        Ok(files) => files,
        Err(reason) => {
            let name = job.name.clone();
            app.store
                .call(move |c| {
                    store::job_transition(c, &name, &[JobStatus::Preparing], JobStatus::Failed, Some(&reason))
                })
                .await?;
            super::ended(app.clone(), job.name.clone());
            return Ok(false);
        }
    };
    let size = job.record.settings.mini_batch_size;
    let total = files.len() as u64;
    let mut manifest = String::new();
    let mut offsets = Vec::with_capacity(files.len() + 1);
    for f in &files {
        offsets.push(manifest.len() as u64);
        manifest.push_str(f);
        manifest.push('\n');
    }
    offsets.push(manifest.len() as u64);
    let batches: Vec<PlannedBatch> = (0..batch_count(total, size))
        .map(|i| {
            let r = batch_range(i, size, total);
            PlannedBatch {
                manifest_offset: offsets[r.start as usize],
                manifest_len: offsets[r.end as usize] - offsets[r.start as usize],
                files: r.end - r.start,
            }
        })
        .collect();
    app.internal.put(&manifest_key(&job.name), manifest.into()).await.context("failed to store the job's manifest")?;
    let name = job.name.clone();
    Ok(app.store.call(move |c| store::job_plan(c, &name, total, &batches)).await?)
}

/// Reads a mini-batch's file paths from the manifest.
pub async fn batch_files(app: &AppRef, job: &str, offset: u64, len: u64) -> anyhow::Result<Vec<String>> {
    let range = offset..offset + len;
    let bytes = app.internal.get_range(&manifest_key(job), range).await.context("failed to read the job's manifest")?;
    let text = String::from_utf8(bytes.to_vec()).context("the manifest is not UTF-8")?;
    Ok(text.lines().map(str::to_string).collect())
}
