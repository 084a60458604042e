//! The worker side of the control plane's child processes (`cove_common::children`): code that loads
//! models or runs the environment toolchain, run in a process of its own so the control plane never
//! links it.

use crate::environment::Toolchain;
use cove_common::children::{model_check, EnvironmentAnswer, EnvironmentTask};
use std::io::{Read, Write};

/// The model check's side: limits itself, reads the model from stdin, loads it. Exit code 0: it can
/// run; 1: it cannot, with the reason on stdout; anything else: it was stopped by a limit.
pub fn model_check_main(memory_mb: &str) -> i32 {
    use nix::sys::resource::{setrlimit, Resource};
    let Ok(memory_mb) = memory_mb.parse::<u64>() else { return 2 };
    let memory = memory_mb.saturating_mul(1024 * 1024);
    if setrlimit(Resource::RLIMIT_AS, memory, memory).is_err()
        || setrlimit(Resource::RLIMIT_CPU, model_check::CPU_SECONDS, model_check::CPU_SECONDS + 1).is_err()
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

/// The environment child's side: one task from stdin, its answer on stdout. Exit code 0 whenever an
/// answer was written (a failed build is an answer); 2 when the task could not be read.
pub fn environment_main() -> i32 {
    let mut text = String::new();
    if std::io::stdin().read_to_string(&mut text).is_err() {
        return 2;
    }
    let task: EnvironmentTask = match serde_json::from_str(&text) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("cove {}: not a task: {e}", cove_common::children::ENVIRONMENT_ARG);
            return 2;
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return 2 };
    let answer = runtime.block_on(environment_task(task));
    let written = serde_json::to_string(&answer).map(|json| writeln!(std::io::stdout(), "{json}"));
    if matches!(written, Ok(Ok(()))) {
        0
    } else {
        2
    }
}

async fn environment_task(task: EnvironmentTask) -> EnvironmentAnswer {
    match task {
        EnvironmentTask::Resolve {
            python,
            sandbox,
            interpreter,
            packages,
            overrides,
            source,
            allow_source_builds,
            scratch,
        } => {
            let tools = match Toolchain::find(&python, sandbox) {
                Ok(tools) => tools,
                Err(message) => return EnvironmentAnswer::NoToolchain { message },
            };
            match tools.resolve(&interpreter, &packages, &overrides, &source, allow_source_builds, &scratch).await {
                Ok(lock) => EnvironmentAnswer::Resolved { lock },
                Err(message) => EnvironmentAnswer::Failed { message, log: None },
            }
        }
        EnvironmentTask::Ensure { python, sandbox, build } => {
            let tools = match Toolchain::find(&python, sandbox) {
                Ok(tools) => tools,
                Err(message) => return EnvironmentAnswer::NoToolchain { message },
            };
            match tools.ensure(&build).await {
                Ok(_) => EnvironmentAnswer::Built,
                Err(failure) => EnvironmentAnswer::Failed { message: failure.message, log: Some(failure.log) },
            }
        }
    }
}
