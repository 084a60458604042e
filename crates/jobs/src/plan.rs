//! Planning: list a job's input files once (sorted, deterministic), store them as one manifest object,
//! and record one row per mini-batch pointing at its slice of the manifest.

use crate::ControlRef;
use anyhow::Context;
use cove_api::InputType;
use cove_datastore::{list_local_folder, parse_uri};
use cove_model::{batch_count, batch_range, JobStatus};
use cove_store::{self as store, JobRow, PlannedBatch};
use futures::StreamExt;
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
    local_root: Option<std::path::PathBuf>,
    input_uri: &str,
    input_type: InputType,
) -> Result<Vec<String>, String> {
    let input = parse_uri(input_uri).map_err(|e| e.to_string())?;
    match input_type {
        InputType::UriFile => {
            store.head(&input.object_path()).await.map_err(|_| format!("input file `{input_uri}` does not exist"))?;
            Ok(vec![input.path])
        }
        InputType::UriFolder if local_root.is_some() => {
            let root = local_root.expect("checked");
            let listed = tokio::task::spawn_blocking(move || list_local_folder(&root, &input.path, true))
                .await
                .map_err(|e| e.to_string())?;
            let (_, mut files) = listed.map_err(|e| format!("failed to list input folder `{input_uri}`: {e}"))?;
            files.sort_unstable();
            if files.is_empty() {
                return Err(format!("input folder `{input_uri}` holds no files"));
            }
            Ok(files)
        }
        InputType::UriFolder => {
            // Streamed, keeping only each top-level file's path: a listing's full metadata for a
            // million files would cost far more memory than their names.
            let prefix = (!input.path.is_empty()).then(|| input.object_path());
            let depth = prefix.as_ref().map_or(0, |p| p.parts().count()) + 1;
            let mut listing = store.list(prefix.as_ref());
            let mut files: Vec<String> = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| format!("failed to list input folder `{input_uri}`: {e}"))?;
                if meta.location.parts().count() == depth {
                    files.push(meta.location.to_string());
                }
            }
            files.sort_unstable();
            if files.is_empty() {
                return Err(format!("input folder `{input_uri}` holds no files"));
            }
            Ok(files)
        }
    }
}

/// Plans a job that is NotStarted or Preparing; returns true when it is now Queued.
pub async fn plan(app: &ControlRef, job: &JobRow) -> anyhow::Result<bool> {
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
        (None, Ok(store)) => {
            let local = app.datastores.local_root(&ds.datastore);
            list_inputs(store.as_ref(), local, &input.uri, input.input_type).await
        }
        (_, Err(e)) => Err(e.to_string()),
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
    // Each name is freed as soon as it is in the manifest, so the two never both hold every name.
    for f in files {
        offsets.push(manifest.len() as u64);
        manifest.push_str(&encode_line(&f));
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
    if let Some(pause) = cove_api::pause::pause_at("planning") {
        tokio::time::sleep(pause).await;
    }
    let name = job.name.clone();
    Ok(app.store.call(move |c| store::job_plan(c, &name, total, &batches)).await?)
}

/// Reads a mini-batch's file paths from the manifest.
pub async fn batch_files(app: &crate::Control, job: &str, offset: u64, len: u64) -> anyhow::Result<Vec<String>> {
    decode_lines(&manifest_range(app, job, offset, len).await?)
}

/// The manifest's bytes from `offset`: the lines of one or more consecutive mini-batches.
pub async fn manifest_range(app: &crate::Control, job: &str, offset: u64, len: u64) -> anyhow::Result<bytes::Bytes> {
    let range = offset..offset + len;
    app.internal.get_range(&manifest_key(job), range).await.context("failed to read the job's manifest")
}

/// The file paths of whole manifest lines.
pub fn decode_lines(bytes: &[u8]) -> anyhow::Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).context("the manifest is not UTF-8")?;
    Ok(text.split_terminator('\n').map(decode_line).collect())
}

/// Encodes a path as one manifest line: input folders may hold names with newlines or backslashes,
/// which must neither split a line nor be mistaken for an escape.
pub fn encode_line(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes a manifest line written by [`encode_line`].
pub fn decode_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{decode_line, encode_line};
    use cove_model::{batch_count, batch_range};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever names an input folder holds, each mini-batch reads back exactly its own names.
        #[test]
        fn manifests_read_back_every_name_of_every_mini_batch(
            names in prop::collection::vec("\\PC{0,12}|[a\\\\\n\r ]{0,6}", 0..40),
            size in 1u32..7,
        ) {
            let mut manifest = String::new();
            let mut offsets = Vec::new();
            for n in &names {
                offsets.push(manifest.len());
                manifest.push_str(&encode_line(n));
                manifest.push('\n');
            }
            offsets.push(manifest.len());
            for i in 0..batch_count(names.len() as u64, size) {
                let r = batch_range(i, size, names.len() as u64);
                let slice = &manifest[offsets[r.start as usize]..offsets[r.end as usize]];
                let read: Vec<String> = slice.split_terminator('\n').map(decode_line).collect();
                prop_assert_eq!(&read[..], &names[r.start as usize..r.end as usize]);
            }
        }
    }
}
