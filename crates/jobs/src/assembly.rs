//! The output file, assembled while the job runs.
//!
//! Once every mini-batch before a committed part is final (committed or given up), that part is
//! appended to the job's assembly file in the workspace's state folder: from the bytes its report just
//! brought when it is next in line, else read back from where it was stored. Finalizing then publishes
//! the file (on a local datastore on the same filesystem by linking it into place, so no byte is copied)
//! instead of copying every part at the end, when nothing else is left to run beside the copy.
//!
//! The file is only a head start. The committed parts stay the record: the file is trusted only by the
//! process that wrote it (a starting control plane deletes every one), and finalizing assembles from the
//! parts, as it always could, when the file is missing, incomplete or was already taken.

use crate::ControlRef;
use anyhow::Context;
use bytes::Bytes;
use cove_api::worker::bundle::Pieces;
use cove_model::JobStatus;
use cove_store as store;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How many mini-batches one look at the state store covers.
const LOOK: u64 = 256;
/// How many bytes of parts are gathered before they are written.
const FLUSH: usize = 8 << 20;

/// The assemblies of the jobs this control plane is running.
pub struct Assemblies {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Assembly>>>>,
}

#[derive(Default)]
struct Assembly {
    file: Option<Arc<std::fs::File>>,
    /// Every mini-batch before this one is final and its part, if any, is in the file.
    next: u64,
    len: u64,
    /// Finalizing took the file, or something failed: nothing more is appended.
    closed: bool,
}

/// An assembly that holds every committed part of its job, in mini-batch order.
pub struct Assembled {
    pub path: PathBuf,
    pub len: u64,
}

impl Assemblies {
    /// Starts with no assembly: what an earlier process left in `dir` is deleted unread.
    pub fn open(dir: PathBuf) -> std::io::Result<Assemblies> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Assemblies { dir, jobs: Mutex::new(HashMap::new()) })
    }

    fn entry(&self, job: &str) -> Arc<tokio::sync::Mutex<Assembly>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).entry(job.to_string()).or_default().clone()
    }

    fn path(&self, job: &str) -> PathBuf {
        // Job names are Cove's own or validated resource names: one plain path component.
        self.dir.join(job)
    }

    /// Forgets a job's assembly and deletes its file (a published output linked from it stays).
    pub fn forget(&self, job: &str) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(job);
        let _ = std::fs::remove_file(self.path(job));
    }
}

/// Appends what has become appendable after a report committed `fresh` (mini-batch index, part bytes).
/// Runs off the report's path; a failure only means finalizing copies the parts itself.
pub async fn advance(app: ControlRef, job: String, fresh: Vec<(u64, Pieces)>) {
    let entry = app.assemblies.entry(&job);
    let mut assembly = entry.lock().await;
    if assembly.closed {
        return;
    }
    let mut fresh: HashMap<u64, Pieces> = fresh.into_iter().collect();
    match catch_up(&app, &job, &mut assembly, &mut fresh).await {
        Ok(Progress::Assembling { .. }) => {}
        Ok(Progress::Over) => {
            assembly.closed = true;
            drop(assembly);
            app.assemblies.forget(&job);
        }
        Err(error) => {
            tracing::warn!(%job, error = format!("{error:#}"), "the output will be assembled when the job finalizes");
            assembly.closed = true;
            assembly.file = None;
            let _ = tokio::fs::remove_file(app.assemblies.path(&job)).await;
        }
    }
}

/// Takes the job's assembly for finalizing, complete: every committed part, in order. `None` when
/// there is none to take (finalizing then assembles from the parts).
pub async fn take(app: &ControlRef, job: &str) -> Option<Assembled> {
    let entry = app.assemblies.entry(job);
    let mut assembly = entry.lock().await;
    if assembly.closed {
        return None;
    }
    assembly.closed = true;
    let caught_up = catch_up(app, job, &mut assembly, &mut HashMap::new()).await;
    match caught_up {
        Ok(Progress::Assembling { complete: true }) if assembly.file.is_some() => {
            Some(Assembled { path: app.assemblies.path(job), len: assembly.len })
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%job, error = format!("{error:#}"), "assembling the output from its parts instead");
            None
        }
    }
}

enum Progress {
    /// The job still runs or finalizes; `complete` when every mini-batch is in.
    Assembling { complete: bool },
    /// The job ended (or is unknown): its assembly is moot.
    Over,
}

async fn catch_up(
    app: &ControlRef,
    job: &str,
    assembly: &mut Assembly,
    fresh: &mut HashMap<u64, Pieces>,
) -> anyhow::Result<Progress> {
    loop {
        let (j, from) = (job.to_string(), assembly.next);
        let Some((status, total, rows)) = app.store.call(move |c| store::assembly_batches(c, &j, from, LOOK)).await?
        else {
            return Ok(Progress::Over);
        };
        if status != JobStatus::Running.as_str() && status != JobStatus::Finalizing.as_str() {
            return Ok(Progress::Over);
        }
        let looked = rows.len() as u64;
        // The final mini-batches in line, each with its committed part (if any).
        let mut in_line: Vec<(u64, Option<String>)> = Vec::new();
        let mut stalled = false;
        for (idx, state, part) in rows {
            anyhow::ensure!(idx == assembly.next + in_line.len() as u64, "mini-batch {idx} is out of sequence");
            match state.as_str() {
                "succeeded" => in_line.push((idx, part)),
                "failed" | "not_run" => in_line.push((idx, None)),
                _ => {
                    stalled = true;
                    break;
                }
            }
        }
        // Parts kept in the state store are read in one call (a job of small parts has thousands).
        let inline: Vec<String> = in_line
            .iter()
            .filter(|(idx, _)| !fresh.contains_key(idx))
            .filter_map(|(_, key)| key.as_deref()?.strip_prefix(store::INLINE_PART).map(str::to_string))
            .collect();
        let mut bodies: HashMap<String, Vec<u8>> = if inline.is_empty() {
            HashMap::new()
        } else {
            app.store
                .call(move |c| store::part_bodies(c, &inline.iter().map(String::as_str).collect::<Vec<_>>()))
                .await?
                .into_iter()
                .collect()
        };
        let (mut batch, mut gathered) = (Vec::new(), 0);
        for (idx, key) in in_line {
            if let Some(key) = key {
                let part = match (fresh.remove(&idx), key.strip_prefix(store::INLINE_PART)) {
                    (Some(pieces), _) => pieces.0,
                    (None, Some(lease)) => vec![Bytes::from(bodies.remove(lease).with_context(|| {
                        format!("the committed part of mini-batch {idx} is not in the state store")
                    })?)],
                    (None, None) => vec![read_object(app, idx, &key).await?],
                };
                gathered += part.iter().map(Bytes::len).sum::<usize>();
                batch.extend(part);
                if gathered >= FLUSH {
                    append(app, job, assembly, std::mem::take(&mut batch)).await?;
                    gathered = 0;
                }
            }
            assembly.next = idx + 1;
        }
        append(app, job, assembly, batch).await?;
        if stalled || assembly.next >= total || looked < LOOK {
            return Ok(Progress::Assembling { complete: assembly.next >= total });
        }
    }
}

async fn read_object(app: &ControlRef, idx: u64, key: &str) -> anyhow::Result<Bytes> {
    let got = app
        .internal
        .get(&object_store::path::Path::from(key))
        .await
        .with_context(|| format!("failed to read the committed part of mini-batch {idx}"))?;
    Ok(got.bytes().await?)
}

/// Appends `parts` in order, in one trip off the async threads.
async fn append(app: &ControlRef, job: &str, assembly: &mut Assembly, parts: Vec<Bytes>) -> anyhow::Result<()> {
    if parts.is_empty() {
        return Ok(());
    }
    let file = match &assembly.file {
        Some(file) => file.clone(),
        None => {
            let path = app.assemblies.path(job);
            let created = tokio::fs::File::create(&path).await;
            let file =
                Arc::new(created.with_context(|| format!("failed to create {}", path.display()))?.into_std().await);
            assembly.file = Some(file.clone());
            file
        }
    };
    let at = assembly.len;
    let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut at = at;
        for part in parts {
            file.write_all_at(&part, at)?;
            at += part.len() as u64;
        }
        Ok(())
    })
    .await?
    .context("failed to append parts")?;
    assembly.len += len;
    Ok(())
}

/// Publishes an assembly as `dest` of the local datastore rooted at `root`: linked into place when the
/// datastore shares the state folder's filesystem (false when it does not).
pub async fn link_into_place(
    assembled: &Assembled,
    root: &Path,
    dest: &object_store::path::Path,
) -> anyhow::Result<bool> {
    let target = object_store::local::LocalFileSystem::new_with_prefix(root)?.path_to_filesystem(dest)?;
    let source = assembled.path.clone();
    let linked = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut staging = target.clone().into_os_string();
        staging.push("#cove-assembly");
        let staging = PathBuf::from(staging);
        let _ = std::fs::remove_file(&staging);
        match std::fs::hard_link(&source, &staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => return Ok(false),
            Err(e) => return Err(e),
        }
        // A rename replaces what stood there at once: the output appears whole or not at all.
        std::fs::rename(&staging, &target).inspect_err(|_| {
            let _ = std::fs::remove_file(&staging);
        })?;
        Ok(true)
    })
    .await??;
    Ok(linked)
}
