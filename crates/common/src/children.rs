//! The child processes through which the control plane has worker-side code do work for it, so that
//! the control plane links none of that code: each child is the `cove` binary started with its first
//! argument naming the task, before anything else runs in it.

use cove_api::worker::{EnvironmentBuild, PackageSource, SandboxMode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Loading a user's ONNX model under memory and CPU limits: `cove __check-onnx-model MEMORY_MB`, the
/// model on stdin; exit 0 when it can run, 1 with the reason on stdout, anything else when a limit
/// stopped it.
pub mod model_check {
    /// The first argument that makes `cove` the model-checking child.
    pub const ARG: &str = "__check-onnx-model";
    /// CPU seconds the child may use loading the model.
    pub const CPU_SECONDS: u64 = 60;
}

/// Resolving or building an environment with the worker's toolchain: `cove __environment`, one
/// [`EnvironmentTask`] as JSON on stdin, one [`EnvironmentAnswer`] as JSON on stdout.
pub const ENVIRONMENT_ARG: &str = "__environment";

/// What the environment child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum EnvironmentTask {
    /// Resolve requirements into a lock for `interpreter`.
    Resolve {
        python: String,
        sandbox: SandboxMode,
        interpreter: String,
        packages: Vec<String>,
        overrides: Vec<String>,
        source: PackageSource,
        allow_source_builds: bool,
        scratch: PathBuf,
    },
    /// Build a resolved environment (a no-op when it is built already).
    Ensure { python: String, sandbox: SandboxMode, build: EnvironmentBuild },
}

/// What the environment child answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EnvironmentAnswer {
    /// Resolved into this lock.
    Resolved { lock: String },
    /// Built (or found built).
    Built,
    /// No installer for the interpreter: the reason.
    NoToolchain { message: String },
    /// Resolving or building failed: why, and the build's log when there is one.
    Failed { message: String, log: Option<PathBuf> },
}
