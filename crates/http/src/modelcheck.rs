//! A model a user sends is loaded and checked in a child process with memory and CPU limits, never in
//! the control plane: a tiny ONNX file (a `ConstantOfShape` of a huge shape, say) can make its loader
//! allocate gigabytes, and the control plane must not allocate without bound for anyone.
//!
//! The child is the `cove` binary itself, started with `cove_common::children::model_check::ARG` before
//! anything else runs in it (no runtime, no threads): it limits its own address space and CPU time,
//! reads the model from stdin, loads it, and says why it cannot run (`cove_worker::children`). The
//! control plane links none of the model runtime.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use cove_common::children::model_check::{ARG as CHILD_ARG, CPU_SECONDS};
/// Address space for loading a model: this much, plus four times the model's size.
const BASE_MEMORY_MB: u64 = 1024;
const WALL_TIME: Duration = Duration::from_secs(120);
/// How much address space the child's allocator reserves at a time, well under [`BASE_MEMORY_MB`].
const ARENA_RESERVE: &str = "64MiB";

/// Loads `bytes` as a no-code ONNX model in a limited child process of `exe`; the reason it cannot run.
pub async fn check_onnx(exe: &std::path::Path, bytes: bytes::Bytes) -> Result<(), String> {
    let memory_mb = BASE_MEMORY_MB + 4 * (bytes.len() as u64).div_ceil(1024 * 1024);
    let mut child = tokio::process::Command::new(exe)
        .arg(CHILD_ARG)
        .arg(memory_mb.to_string())
        .env_clear()
        // mimalloc reserves its arenas a gigabyte at a time by default. An address-space limit counts
        // that reservation in full, so the child's first allocations sometimes found no room left under
        // the limit and aborted on a model a few hundred bytes long. Smaller reservations keep the limit
        // a measure of what loading the model really takes.
        .env("MIMALLOC_ARENA_RESERVE", ARENA_RESERVE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the model check ({}): {e}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feed = async move {
        // The child may stop reading early (a refusal): that is its answer, not a failure here.
        let _ = stdin.write_all(&bytes).await;
    };
    let (_, out) = tokio::join!(feed, tokio::time::timeout(WALL_TIME, child.wait_with_output()));
    let out = match out {
        Ok(out) => out.map_err(|e| format!("the model check failed: {e}"))?,
        Err(_) => return Err(format!("loading the model took longer than {} s", WALL_TIME.as_secs())),
    };
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) if !said.is_empty() => Err(said),
        // How it ended is said too: a limit shows as a signal or an allocation failure, and anything
        // else (a check that could not start its work) is then told apart from a model over its limits.
        _ => Err(format!(
            "loading the model needed more than {memory_mb} MB of memory or {CPU_SECONDS} s of CPU, and was stopped ({})",
            out.status
        )),
    }
}
