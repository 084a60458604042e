//! One scorer process: the deployment's interpreter running `driver.py`, which hosts the scoring script.
//!
//! The scorer gets its own process group, so a timeout or a stop ends everything the script started,
//! and its stdout and stderr go straight to the per-process log files the reference lays out.

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub const DRIVER: &str = include_str!("driver.py");

/// Everything a scorer process needs to start.
pub struct ScorerSpec<'a> {
    pub python: &'a str,
    pub driver: &'a Path,
    pub code_dir: &'a Path,
    pub script: &'a str,
    pub model_dir: &'a Path,
    pub output_dir: &'a Path,
    pub work_dir: &'a Path,
    pub stdout_log: &'a Path,
    pub stderr_log: &'a Path,
    pub logging_level: &'a str,
    pub env: &'a std::collections::BTreeMap<String, String>,
}

pub struct Scorer {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
    pub pid: u32,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Answer {
    Ready { pid: u32 },
    InitFailed { error: String },
    Done { items: u64 },
    Error { error: String },
}

/// How a `run()` call ended.
pub enum RunResult {
    Done {
        items: u64,
    },
    /// `run()` raised: the traceback.
    Raised(String),
    TimedOut,
    /// The process ended while running: how it ended.
    Died(String),
}

/// Why a scorer could not start.
pub enum StartError {
    /// `init()` (or importing the script) raised: the traceback.
    InitFailed(String),
    Other(anyhow::Error),
}

impl Scorer {
    /// Starts the process and waits for `init()` to return.
    pub async fn start(spec: &ScorerSpec<'_>) -> Result<Scorer, StartError> {
        Self::spawn(spec)
            .await
            .map_err(StartError::Other)?
            .wait_ready()
            .await
    }

    async fn spawn(spec: &ScorerSpec<'_>) -> anyhow::Result<Scorer> {
        let open = |p: &Path| -> anyhow::Result<std::fs::File> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Ok(std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?)
        };
        std::fs::create_dir_all(spec.output_dir)?;
        let stderr = open(spec.stderr_log)?;
        open(spec.stdout_log)?;
        let mut command = tokio::process::Command::new(spec.python);
        command
            .arg("-u")
            .arg(spec.driver)
            .arg("--cove-code-dir")
            .arg(spec.code_dir)
            .arg("--cove-script")
            .arg(spec.script)
            .arg("--cove-stdout-log")
            .arg(spec.stdout_log)
            .arg("--logging_level")
            .arg(spec.logging_level)
            .current_dir(spec.work_dir)
            .envs(spec.env)
            .env("AZUREML_MODEL_DIR", spec.model_dir)
            .env("AZUREML_BI_OUTPUT_PATH", spec.output_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("COVE_WORKER_TOKEN")
            .env_remove("COVE_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start the scorer with `{}`", spec.python))?;
        let pid = child.id().context("the scorer exited at once")?;
        crate::register_group(pid);
        let stdin = child.stdin.take().expect("stdin is piped");
        let answers = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        Ok(Scorer {
            child,
            stdin,
            answers,
            pid,
        })
    }

    async fn wait_ready(mut self) -> Result<Scorer, StartError> {
        match self.answers.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Answer>(&line) {
                Ok(Answer::Ready { pid }) => {
                    debug_assert_eq!(pid, self.pid);
                    Ok(self)
                }
                Ok(Answer::InitFailed { error }) => {
                    self.kill().await;
                    Err(StartError::InitFailed(error))
                }
                _ => {
                    self.kill().await;
                    Err(StartError::Other(anyhow::anyhow!(
                        "unexpected answer from the scorer: {line}"
                    )))
                }
            },
            _ => {
                let how = self.exit_description().await;
                Err(StartError::InitFailed(format!(
                    "the scorer process {how} during init()"
                )))
            }
        }
    }

    /// Runs one mini-batch, killing the process when `timeout` passes first.
    pub async fn run(
        &mut self,
        files: &[PathBuf],
        output: Option<&Path>,
        timeout: Duration,
    ) -> RunResult {
        let request = serde_json::json!({ "type": "run", "files": files, "output": output });
        let sent = async {
            self.stdin
                .write_all(format!("{request}\n").as_bytes())
                .await?;
            self.stdin.flush().await
        }
        .await;
        if sent.is_err() {
            return RunResult::Died(self.exit_description().await);
        }
        match tokio::time::timeout(timeout, self.answers.next_line()).await {
            Err(_) => {
                self.kill().await;
                RunResult::TimedOut
            }
            Ok(Ok(Some(line))) => match serde_json::from_str::<Answer>(&line) {
                Ok(Answer::Done { items }) => RunResult::Done { items },
                Ok(Answer::Error { error }) => RunResult::Raised(error),
                _ => RunResult::Died(format!("sent an unexpected answer: {line}")),
            },
            Ok(_) => RunResult::Died(self.exit_description().await),
        }
    }

    async fn exit_description(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("was killed by signal {sig}"),
                (Some(code), _) => format!("exited with code {code}"),
                _ => "exited".to_string(),
            },
            _ => {
                self.kill().await;
                "stopped answering".to_string()
            }
        }
    }

    /// Ends the process and everything it started.
    pub async fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.wait().await;
        crate::unregister_group(self.pid);
    }
}

/// Makes the scorer die with the worker that started it, so a worker killed with SIGKILL leaves no
/// scorer running on a mini-batch whose lease is about to be given to someone else.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is async-signal-safe
    // and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Checks that a name taken from the control plane is a plain file name, before it becomes a path.
pub fn plain_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        bail!("`{name}` is not a plain file name");
    }
    Ok(name)
}
