//! The scorer processes: the deployment's interpreter running `driver.py`, one host per job and worker,
//! which forks a scorer per slot to host the scoring script.
//!
//! Each scorer gets its own process group, so a timeout or a stop ends everything the script started,
//! and its stdout and stderr go straight to the per-process log files the reference lays out.

use crate::sandbox::{self, FileView, IsolationRecord};
use anyhow::{bail, Context};
use cove_api::worker::{EgressTarget, SandboxMode};
use cove_spec::Limits;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::Child;

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

/// The scorer host of one job on this worker: one interpreter in one sandbox, which imports the
/// libraries the scoring script needs once and forks a scorer process per slot (see `driver.py`).
///
/// Scorers of one job on one worker share the host's sandbox: they run the same code for the same
/// job, so there is nothing between them to guard, and every other boundary is the sandbox's. The
/// host is our code; what a scorer can do to it (kill it, stop it) ends or stalls only its own job's
/// scorers on this worker, and a host that does not answer is ended with everything in it.
pub struct ScorerHost {
    pub job: String,
    /// The sandbox's (or, without one, the interpreter's) process, and its process group.
    child: std::sync::Mutex<Child>,
    pid: u32,
    control: std::os::fd::OwnedFd,
    state: Arc<HostState>,
    reader: tokio::task::JoinHandle<()>,
    pub isolation: IsolationRecord,
    /// The egress forwarders serving this sandbox, and their socket folder; they end with it.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    sockets: Option<PathBuf>,
    next: std::sync::atomic::AtomicU64,
}

/// What the host has told of its scorers, kept by the task reading its control socket.
#[derive(Default)]
struct HostState {
    /// How each scorer ended, by its number.
    ended: std::sync::Mutex<HashMap<u64, String>>,
    /// The host itself ended (its control socket closed).
    gone: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Drop for ScorerHost {
    fn drop(&mut self) {
        self.end();
        self.reader.abort();
        for f in &self.forwarders {
            f.abort();
        }
        if let Some(dir) = &self.sockets {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One scorer process, forked by its host.
pub struct Scorer {
    host: Arc<ScorerHost>,
    number: u64,
    requests: tokio::net::unix::OwnedWriteHalf,
    answers: Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    /// The scorer's stderr log (a file of the worker's, outside the sandbox's view).
    stderr_log: PathBuf,
    done: bool,
}

impl Drop for Scorer {
    fn drop(&mut self) {
        if !self.done {
            self.host.kill(self.number);
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

/// A scorer's log, opened for appending: a scorer of this job may have left a link where its log was,
/// so it is never opened through one.
fn open_log(p: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::leftovers::open_append(p).with_context(|| format!("failed to open the log {}", p.display()))
}

impl ScorerHost {
    /// Starts the host of `job` in its sandbox: the view holds what every slot's scorer needs (the
    /// slots' output folders lie in one folder, their part folders in another, their logs in a third).
    pub fn start(spec: &ScorerSpec<'_>, job: &str) -> anyhow::Result<ScorerHost> {
        let outputs = spec.output_dir.parent().context("output folders sit in a folder")?;
        let parts = spec.parts_dir.parent().context("part folders sit in a folder")?;
        let stdout_logs = spec.stdout_log.parent().context("logs sit in folders")?;
        for dir in [outputs, parts, stdout_logs, spec.inputs_dir, spec.work_dir] {
            std::fs::create_dir_all(dir)?;
        }
        // Until a scorer is forked, what the host says (a library's warning on import) goes to the log of
        // the slot that started it.
        let log = open_log(spec.stderr_log)?;
        // The control socket keeps message boundaries, so each request arrives whole with its descriptors.
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )?;
        nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        let reading = ours.try_clone()?;
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
                    writable: vec![outputs.to_path_buf(), parts.to_path_buf(), stdout_logs.to_path_buf()]
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
            .args(egress_args.iter().flat_map(|e| ["--cove-egress", e.as_str()]))
            .arg("--logging_level")
            .arg(spec.logging_level)
            .envs(spec.env)
            .env("AZUREML_MODEL_DIR", spec.model_dir)
            .env("AZUREML_BI_OUTPUT_PATH", spec.output_dir)
            .stdin(Stdio::from(theirs))
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        restrict(&mut command, spec.limits);
        let child =
            command.spawn().with_context(|| format!("failed to start the scorer host with `{}`", spec.python))?;
        let pid = child.id().context("the scorer host exited at once")?;
        crate::register_group(pid);
        let state = Arc::new(HostState::default());
        let reading = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(reading))?;
        let reader = tokio::spawn(read_control(reading, state.clone()));
        Ok(ScorerHost {
            job: job.to_string(),
            child: std::sync::Mutex::new(child),
            pid,
            control: ours,
            state,
            reader,
            isolation,
            forwarders,
            sockets,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether the host still serves (a scorer may have killed it).
    pub fn alive(&self) -> bool {
        !self.state.gone.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sends one request on the control socket, with file descriptors. The messages are small and the
    /// socket's buffer holds many, so a send that cannot go at once means the host stopped reading: it
    /// is ended.
    fn tell(&self, message: &serde_json::Value, fds: &[std::os::fd::RawFd]) -> bool {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        use std::os::fd::AsRawFd;
        let bytes = message.to_string();
        let iov = [std::io::IoSlice::new(bytes.as_bytes())];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        let sent = sendmsg::<UnixAddr>(self.control.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, None);
        if sent.is_err() {
            self.end();
        }
        sent.is_ok()
    }

    /// Asks the host to end a scorer and everything it started.
    fn kill(&self, number: u64) {
        self.tell(&serde_json::json!({ "kill": number }), &[]);
    }

    /// Ends the host and every scorer in it.
    fn end(&self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        crate::unregister_group(self.pid);
        if let Ok(mut child) = self.child.lock() {
            let _ = child.start_kill();
        }
    }

    /// How scorer `number` ended, once the host has said so (or itself ended), waiting at most `wait`.
    async fn ending_of(&self, number: u64, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.state.changed.notified();
            if let Some(how) = self.state.ended.lock().unwrap_or_else(|p| p.into_inner()).get(&number) {
                return Some(how.clone());
            }
            if !self.alive() {
                return Some("ended with the scorer host".to_string());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// Reads what the host tells of its scorers until it ends: a line of JSON per message.
async fn read_control(control: tokio::net::UnixStream, state: Arc<HostState>) {
    let mut lines = BufReader::new(control).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(told) = serde_json::from_str::<Told>(&line) {
            let how = describe_exit(told.code, told.signal);
            state.ended.lock().unwrap_or_else(|p| p.into_inner()).insert(told.exited, how);
            state.changed.notify_waiters();
        }
    }
    state.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    state.changed.notify_waiters();
}

/// The host's word that a scorer ended.
#[derive(Deserialize)]
struct Told {
    exited: u64,
    code: Option<i32>,
    signal: Option<i32>,
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => format!("was killed by signal {sig}{}", signal_meaning(sig)),
        (Some(code), _) => format!("exited with code {code}"),
        _ => "exited".to_string(),
    }
}

impl Scorer {
    /// Has the host fork a scorer for one slot and waits for its `init()` to return.
    pub async fn start(host: &Arc<ScorerHost>, spec: &ScorerSpec<'_>) -> Result<Scorer, StartError> {
        Self::fork(host, spec).map_err(StartError::Other)?.wait_ready().await
    }

    /// The host's process: the scorer's own PID lies in the sandbox's PID namespace.
    pub fn pid(&self) -> u32 {
        self.host.pid
    }

    /// What the scorer runs under: its host's sandbox.
    pub fn isolation(&self) -> &IsolationRecord {
        &self.host.isolation
    }

    fn fork(host: &Arc<ScorerHost>, spec: &ScorerSpec<'_>) -> anyhow::Result<Scorer> {
        use std::os::fd::AsRawFd;
        for dir in [spec.output_dir, spec.parts_dir, spec.work_dir] {
            std::fs::create_dir_all(dir)?;
        }
        let stderr = open_log(spec.stderr_log)?;
        open_log(spec.stdout_log)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let number = host.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let request = serde_json::json!({
            "fork": number,
            "stdout_log": spec.stdout_log,
            "output_dir": spec.output_dir,
            "home": (spec.sandbox == SandboxMode::None).then_some(spec.work_dir),
        });
        if !host.tell(&request, &[theirs.as_raw_fd(), stderr.as_raw_fd()]) {
            bail!("the scorer host stopped answering");
        }
        drop((theirs, stderr));
        ours.set_nonblocking(true)?;
        let (answers, requests) = tokio::net::UnixStream::from_std(ours)?.into_split();
        Ok(Scorer {
            host: host.clone(),
            number,
            requests,
            answers: BufReader::new(answers).lines(),
            stderr_log: spec.stderr_log.to_path_buf(),
            done: false,
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
            self.requests.write_all(format!("{request}\n").as_bytes()).await?;
            self.requests.flush().await
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
        match self.host.ending_of(self.number, Duration::from_secs(5)).await {
            Some(how) => {
                self.done = true;
                how
            }
            None => {
                self.kill().await;
                "stopped answering".to_string()
            }
        }
    }

    /// Ends the process and everything it started; a host that does not confirm it is ended whole.
    pub async fn kill(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.host.kill(self.number);
        if self.host.ending_of(self.number, Duration::from_secs(5)).await.is_none() {
            self.host.end();
        }
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
