//! A model a user sends is loaded and checked in a child process with memory and CPU limits, never in
//! the control plane: a tiny ONNX file (a `ConstantOfShape` of a huge shape, say) can make its loader
//! allocate gigabytes, and the control plane must not allocate without bound for anyone.
//!
//! The child is the `cove` binary itself, started with [`CHILD_ARG`] before anything else runs in it
//! (no runtime, no threads): it limits its own address space and CPU time, reads the model from stdin,
//! loads it, and says why it cannot run.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The first argument that makes `cove` the model-checking child.
pub const CHILD_ARG: &str = "__check-onnx-model";
/// Address space for loading a model: this much, plus four times the model's size.
const BASE_MEMORY_MB: u64 = 1024;
const CPU_SECONDS: u64 = 60;
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

/// The child's side: limits itself, reads the model from stdin, loads it. Exit code 0: it can run;
/// 1: it cannot, with the reason on stdout; anything else: it was stopped by a limit.
pub fn child_main(memory_mb: &str) -> i32 {
    use nix::sys::resource::{setrlimit, Resource};
    use std::io::{Read, Write};
    let Ok(memory_mb) = memory_mb.parse::<u64>() else { return 2 };
    let memory = memory_mb.saturating_mul(1024 * 1024);
    if setrlimit(Resource::RLIMIT_AS, memory, memory).is_err()
        || setrlimit(Resource::RLIMIT_CPU, CPU_SECONDS, CPU_SECONDS + 1).is_err()
    {
        return 2;
    }
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return 2;
    }
    match cove_onnx::OnnxModel::load(&bytes) {
        Ok(_) => 0,
        Err(reason) => {
            let _ = writeln!(std::io::stdout(), "{reason}");
            1
        }
    }
}
