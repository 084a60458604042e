//! One scorer process: the deployment's interpreter running `driver.py`, which hosts the scoring script.
//!
//! The scorer gets its own process group, so a timeout or a stop ends everything the script started,
//! and its stdout and stderr go straight to the per-process log files the reference lays out.

use crate::sandbox::{self, FileView, IsolationRecord};
use anyhow::{bail, Context};
use cove_api::worker::{EgressTarget, SandboxMode};
use cove_spec::Limits;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The driver, with the egress helper it shares with environment builds.
pub const DRIVER: &str = concat!(include_str!("egress.py"), include_str!("driver.py"));

/// Everything a scorer process needs to start.
pub struct ScorerSpec<'a> {
    pub python: &'a str,
    pub driver: &'a Path,
    pub code_dir: &'a Path,
    pub script: &'a str,
    pub model_dir: &'a Path,
    pub output_dir: &'a Path,
    pub parts_dir: &'a Path,
    pub inputs_dir: &'a Path,
    pub work_dir: &'a Path,
    pub stdout_log: &'a Path,
    pub stderr_log: &'a Path,
    pub logging_level: &'a str,
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub sandbox: SandboxMode,
    pub limits: Limits,
    /// Private endpoints the scoring code may reach, each through a forwarder of this worker.
    pub egress: &'a [EgressTarget],
}

/// A short folder for the egress sockets of one scorer: socket paths must fit in 108 bytes, which a
/// worker's work folder need not.
pub(crate) fn egress_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("cove-egress-{}-{n}", std::process::id()))
}

/// Host variables a scorer keeps inside the sandbox: locale, time zone and numeric-library tuning.
const PASSED_THROUGH: &[&str] = &[
    "LANG",
    "LC_ALL",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
];

pub struct Scorer {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
    pub pid: u32,
    pub isolation: IsolationRecord,
    /// The egress forwarders serving this scorer, and their socket folder; they end with it.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    sockets: Option<PathBuf>,
    /// The scorer's stderr log (a file of the worker's, outside the sandbox's view).
    stderr_log: PathBuf,
}

impl Drop for Scorer {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
        if let Some(dir) = &self.sockets {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Serves one allowed egress target: every connection the sandbox makes to the socket is joined to a
/// new TCP connection to the target, and to nothing else.
pub(crate) fn forward(socket: &Path, target: std::net::SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(socket);
    let listener =
        tokio::net::UnixListener::bind(socket).with_context(|| format!("failed to listen on {}", socket.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outside) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    }))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Answer {
    Ready {},
    InitFailed {
        error: String,
    },
    Done {
        items: u64,
        #[serde(default)]
        failed: Option<u64>,
        #[serde(default)]
        observed: Vec<String>,
    },
    Error {
        error: String,
        #[serde(default)]
        observed: Vec<String>,
    },
}

/// How a `run()` call ended.
pub enum RunResult {
    Done {
        items: u64,
        /// Files the script itself counted as failed; otherwise, files minus items.
        failed: Option<u64>,
        observed: Vec<String>,
    },
    /// `run()` raised: the traceback, and the network attempts the sandbox observed.
    Raised(String, Vec<String>),
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
        Self::spawn(spec).await.map_err(StartError::Other)?.wait_ready().await
    }

    async fn spawn(spec: &ScorerSpec<'_>) -> anyhow::Result<Scorer> {
        // A scorer of this job may have left a link where its log was: never open through it.
        let open = |p: &Path| -> anyhow::Result<std::fs::File> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            crate::leftovers::open_append(p).with_context(|| format!("failed to open the log {}", p.display()))
        };
        for dir in [spec.output_dir, spec.parts_dir, spec.inputs_dir, spec.work_dir] {
            std::fs::create_dir_all(dir)?;
        }
        let stderr = open(spec.stderr_log)?;
        open(spec.stdout_log)?;
        let mut isolation = IsolationRecord {
            sandbox: spec.sandbox.as_str().to_string(),
            memory_mb: spec.limits.memory_mb,
            cpu_seconds: spec.limits.cpu_seconds,
            ..IsolationRecord::default()
        };
        let mut forwarders = Vec::new();
        let mut sockets = None;
        let mut egress_args: Vec<String> = Vec::new();
        let mut command = match spec.sandbox {
            SandboxMode::Namespaces => {
                sandbox::available().map_err(anyhow::Error::msg)?;
                let interp = sandbox::interpreter(spec.python).map_err(anyhow::Error::msg)?;
                let mut writable_extra = Vec::new();
                if !spec.egress.is_empty() {
                    let dir = egress_dir();
                    std::fs::create_dir_all(&dir)?;
                    writable_extra.push(dir.clone());
                    sockets = Some(dir.clone());
                    for target in spec.egress {
                        let socket = dir.join(format!("{}.sock", plain_name(&target.name)?));
                        forwarders.push(forward(&socket, target.address)?);
                        egress_args.push(format!(
                            "{},{},{},{}",
                            target.name,
                            target.address.ip(),
                            target.address.port(),
                            socket.display()
                        ));
                        isolation.egress.push(format!("{} {}", target.name, target.address));
                    }
                }
                let view = FileView {
                    read_only: vec![
                        spec.driver.to_path_buf(),
                        spec.code_dir.to_path_buf(),
                        spec.model_dir.to_path_buf(),
                        spec.inputs_dir.to_path_buf(),
                    ],
                    writable: vec![
                        spec.output_dir.to_path_buf(),
                        spec.parts_dir.to_path_buf(),
                        spec.stdout_log.parent().expect("logs sit in folders").to_path_buf(),
                    ]
                    .into_iter()
                    .chain(writable_extra)
                    .collect(),
                };
                isolation.namespaces = sandbox::NAMESPACES.to_string();
                isolation.read_only = ["/usr (system runtime)".to_string()]
                    .into_iter()
                    .chain(interp.roots.iter().map(|p| format!("{} (interpreter)", p.display())))
                    .chain(view.read_only.iter().map(|p| p.display().to_string()))
                    .collect();
                isolation.writable = ["/tmp (private)".to_string()]
                    .into_iter()
                    .chain(view.writable.iter().map(|p| p.display().to_string()))
                    .collect();
                let mut c = tokio::process::Command::new(sandbox::BWRAP);
                c.args(sandbox::bwrap_args(&interp, &view, !spec.egress.is_empty())).arg(&interp.executable);
                c.env_clear().env("HOME", "/tmp");
                c
            }
            SandboxMode::None => {
                // The real executable, not a launcher that would need the worker's environment.
                let interp = sandbox::interpreter(spec.python).map_err(anyhow::Error::msg)?;
                let mut c = tokio::process::Command::new(&interp.executable);
                c.current_dir(spec.work_dir).env_clear().env("HOME", spec.work_dir);
                c
            }
        };
        // Exactly the variables the reference defines and the deployment's own, plus locale and
        // numeric-library tuning from the host; nothing else of the worker's environment (its
        // credential least of all). `-I` keeps the interpreter from reading `PYTHON*` variables and
        // the user's site folder, `-B` from writing bytecode next to the code, `-u` from buffering.
        command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        for var in PASSED_THROUGH {
            if let Some(v) = std::env::var_os(var) {
                command.env(var, v);
            }
        }
        command
            .args(["-I", "-B", "-u"])
            .arg(spec.driver)
            .arg("--cove-code-dir")
            .arg(spec.code_dir)
            .arg("--cove-script")
            .arg(spec.script)
            .arg("--cove-stdout-log")
            .arg(spec.stdout_log)
            .args(egress_args.iter().flat_map(|e| ["--cove-egress", e.as_str()]))
            .arg("--logging_level")
            .arg(spec.logging_level)
            .envs(spec.env)
            .env("AZUREML_MODEL_DIR", spec.model_dir)
            .env("AZUREML_BI_OUTPUT_PATH", spec.output_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        restrict(&mut command, spec.limits);
        let mut child =
            command.spawn().with_context(|| format!("failed to start the scorer with `{}`", spec.python))?;
        let pid = child.id().context("the scorer exited at once")?;
        crate::register_group(pid);
        let stdin = child.stdin.take().expect("stdin is piped");
        let answers = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        Ok(Scorer {
            child,
            stdin,
            answers,
            pid,
            isolation,
            forwarders,
            sockets,
            stderr_log: spec.stderr_log.to_path_buf(),
        })
    }

    async fn wait_ready(mut self) -> Result<Scorer, StartError> {
        match self.answers.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Answer>(&line) {
                Ok(Answer::Ready { .. }) => {
                    // The pid it reports is its own inside the sandbox's PID namespace, not ours to use.
                    Ok(self)
                }
                Ok(Answer::InitFailed { error }) => {
                    self.kill().await;
                    Err(StartError::InitFailed(error))
                }
                _ => {
                    self.kill().await;
                    Err(StartError::Other(anyhow::anyhow!("unexpected answer from the scorer: {line}")))
                }
            },
            _ => {
                let how = self.exit_description().await;
                let tail = stderr_tail(&self.stderr_log);
                let said = if tail.is_empty() { String::new() } else { format!("; its stderr ends: {tail}") };
                Err(StartError::InitFailed(format!("the scorer process {how} during init(){said}")))
            }
        }
    }

    /// Runs one mini-batch, killing the process when `timeout` passes first.
    pub async fn run(&mut self, files: &[PathBuf], output: Option<&Path>, timeout: Duration) -> RunResult {
        let request = serde_json::json!({ "type": "run", "files": files, "output": output });
        let sent = async {
            self.stdin.write_all(format!("{request}\n").as_bytes()).await?;
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
                Ok(Answer::Done { items, failed, observed }) => RunResult::Done { items, failed, observed },
                Ok(Answer::Error { error, observed }) => RunResult::Raised(error, observed),
                _ => RunResult::Died(format!("sent an unexpected answer: {line}")),
            },
            Ok(_) => RunResult::Died(self.exit_description().await),
        }
    }

    async fn exit_description(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("was killed by signal {sig}{}", signal_meaning(sig)),
                // bubblewrap reports a command killed by a signal as 128 + the signal.
                (Some(code), _) if code > 128 && self.isolation.sandbox == "namespaces" => {
                    format!("was killed by signal {}{}", code - 128, signal_meaning(code - 128))
                }
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

/// The last lines of a scorer's stderr log, on one line: why an interpreter that never reached
/// `init()` stopped (a script it cannot open, a module it cannot import) is there and nowhere else.
fn stderr_tail(log: &Path) -> String {
    let Ok((bytes, _)) = crate::leftovers::read_log(log, 64 * 1024) else { return String::new() };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Explains the signals the limits raise.
fn signal_meaning(sig: i32) -> &'static str {
    match sig {
        24 => " (SIGXCPU: the CPU-time limit was reached)",
        9 => " (SIGKILL)",
        _ => "",
    }
}

/// Applies the deployment's limits and makes the scorer die with the worker that started it, so a
/// worker killed with SIGKILL leaves no scorer running on a mini-batch whose lease is about to be given
/// to someone else.
#[allow(unsafe_code)]
fn restrict(command: &mut tokio::process::Command, limits: Limits) {
    use nix::sys::resource::{setrlimit, Resource};
    let memory = limits.memory_mb.saturating_mul(1024 * 1024);
    let cpu = limits.cpu_seconds;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2) and setrlimit(2), which
    // are async-signal-safe, on values computed before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            setrlimit(Resource::RLIMIT_AS, memory, memory)?;
            // SIGXCPU at the soft limit names the cause; the hard limit a second later is the backstop.
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
            Ok(())
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
