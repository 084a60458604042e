//! Test support: a real control plane (`cove up`) on an ephemeral loopback port in a temporary workspace,
//! the real `cove` binary to drive it, and a builder for scoring projects on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const COVE: &str = env!("CARGO_BIN_EXE_cove");

pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub url: String,
    server: Child,
    /// The network namespace the control plane (and so its workers) runs in, when not the test's own.
    netns: Option<String>,
    /// The host's Slurm cluster, held while this workspace uses it (see [`slurm_cluster`]).
    pub cluster: Option<std::fs::File>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    pub fn fails_with(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "wrong exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl Workspace {
    /// Starts `cove up` on 127.0.0.1:0 and waits until it says where it listens.
    pub fn start() -> Workspace {
        Self::start_in(None, &[], &[])
    }

    /// Starts `cove up` in a folder under /tmp that every user of the host can reach (mode 0755), so
    /// that only the workspace's own modes stand between it and other users.
    pub fn start_reachable() -> Workspace {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self::start_at(dir, None, &[], &[])
    }

    /// Starts `cove up` with extra arguments and environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Workspace {
        Self::start_in(None, args, env)
    }

    /// Starts `cove up` inside a network namespace the test built; the CLI then runs there too.
    pub fn start_in_netns(netns: &str) -> Workspace {
        Self::start_in(Some(netns.to_string()), &[], &[])
    }

    /// [`Workspace::start_in_netns`] with extra arguments for `cove up`.
    pub fn start_in_netns_with(netns: &str, args: &[&str]) -> Workspace {
        Self::start_in(Some(netns.to_string()), args, &[])
    }

    fn command(netns: &Option<String>) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, COVE]);
                c
            }
            None => Command::new(COVE),
        }
    }

    fn start_in(netns: Option<String>, args: &[&str], env: &[(&str, &str)]) -> Workspace {
        // Under the target folder rather than /tmp, as a real workspace would be: the sandbox gives
        // scorers a private /tmp, which would hide what a scorer can or cannot reach of the workspace.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        Self::start_at(dir, netns, args, env)
    }

    fn start_at(dir: tempfile::TempDir, netns: Option<String>, args: &[&str], env: &[(&str, &str)]) -> Workspace {
        let mut server = Self::command(&netns)
            .args(["up", "--dir"])
            // Tests stop control planes with work in flight all the time; a planned stop waits this long
            // for it (the tests of planned stops set their own).
            .env("COVE_SHUTDOWN_GRACE", "2")
            .arg(dir.path().join("ws"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("cove up exited before listening").unwrap();
            if let Some(url) = line.strip_prefix("API and scoring URIs: ") {
                break url.to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Workspace { dir, url, server, netns, cluster: None }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// Stops the control plane and starts it again on the same workspace with other arguments (a new
    /// network configuration, say); the URL may change.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.stop_server();
        self.serve_again(args);
    }

    /// Stops the control plane (SIGTERM) and waits for it to end; `serve_again` starts it.
    pub fn stop_server(&mut self) {
        assert!(self.netns.is_none(), "restarts are for workspaces on the test's own network");
        kill(self.server.id(), "TERM");
        self.server.wait().unwrap();
    }

    /// Kills the control plane with SIGKILL, confirms it is gone and reaps it; `serve_again` starts it.
    pub fn kill_server(&mut self) {
        assert!(self.netns.is_none(), "restarts are for workspaces on the test's own network");
        kill9_and_confirm(self.server.id());
        self.server.wait().unwrap();
    }

    /// Starts the control plane again on the same workspace, with `args`.
    pub fn serve_again(&mut self, args: &[&str]) {
        let mut server = Command::new(COVE)
            .args(["up", "--dir"])
            // Tests stop control planes with work in flight all the time; a planned stop waits this long
            // for it (the tests of planned stops set their own).
            .env("COVE_SHUTDOWN_GRACE", "2")
            .arg(self.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        self.url = loop {
            let line = lines.next().expect("cove up exited before listening").unwrap();
            if let Some(url) = line.strip_prefix("API and scoring URIs: ") {
                break url.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        self.server = server;
    }

    /// The control plane's process id (of `cove up`, or of `ip netns exec` around it).
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.path().join("owner.token")).unwrap().trim().to_string()
    }

    /// Runs `cove --workspace <ws> ARGS` and captures everything.
    pub fn cove(&self, args: &[&str]) -> Run {
        Self::command(&self.netns)
            .arg("--workspace")
            .arg(self.path())
            .args(args)
            .env_remove("COVE_URL")
            .env_remove("COVE_TOKEN")
            .env("CI", "1")
            .output()
            .unwrap()
            .into()
    }

    /// Runs `cove compute credential COMPUTE` into a new folder under `credentials/`; returns the worker
    /// token (the folder holds its certificate, see [`identity_of`]).
    pub fn credential(&self, compute: &str) -> String {
        let parent = self.dir.path().join("credentials");
        std::fs::create_dir_all(&parent).unwrap();
        let n = std::fs::read_dir(&parent).unwrap().count();
        let folder = parent.join(format!("{compute}-{n}"));
        self.cove(&["compute", "credential", compute, "--out", &folder.display().to_string()]).ok();
        std::fs::read_to_string(folder.join("token")).unwrap().trim().to_string()
    }

    /// The token of the `local` compute's workers.
    pub fn local_worker_token(&self) -> String {
        std::fs::read_to_string(self.path().join("state/worker-local.token")).unwrap().trim().to_string()
    }

    /// Takes one lease of `job` as a worker of the `local` compute would (node `test-node`, process 7);
    /// returns the lease as granted.
    pub fn lease_as_local_worker(&self, job: &str) -> serde_json::Value {
        let ask = serde_json::json!({"node": "test-node", "process": 7, "job": job, "wait_ms": 10000, "host": {"sandbox": true}});
        let (status, granted) = self.http_as(&self.local_worker_token(), "POST", "/worker/v1/lease", Some(ask), &[]);
        assert_eq!(status, 200, "{granted}");
        assert!(granted["lease"]["lease_id"].is_string(), "no lease: {granted}");
        granted["lease"].clone()
    }

    /// Sends one HTTP request with the owner token; returns (status, JSON body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        self.http_as(&self.token(), method, path, body, headers)
    }

    pub fn http_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = https_builder_as(&self.path(), identity_of(self, token)).build().unwrap();
            let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.url)).bearer_auth(token);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
        })
    }

    /// Sends raw bytes with the owner token; returns (status, body text).
    pub fn http_bytes(&self, method: &str, path: &str, body: String) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let resp = https(&self.path())
                .request(method.parse().unwrap(), format!("{}{path}", self.url))
                .bearer_auth(self.token())
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }

    /// Waits until the job ends; returns its final JSON.
    pub fn wait_job(&self, job: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let body = if self.netns.is_some() {
                self.cove(&["--json", "job", "show", job]).ok().json()
            } else {
                let (status, body) = self.http("GET", &format!("/api/v1/jobs/{job}"), None, &[]);
                assert_eq!(status, 200, "{body}");
                body
            };
            if ["Completed", "Failed", "Canceled"].contains(&body["status"].as_str().unwrap()) {
                return body;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "job {job} did not end: {body:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a job reaches `status` (one it passes through, such as `Finalizing`).
    pub fn wait_status(&self, job: &str, status: &str) {
        let start = Instant::now();
        loop {
            let (_, body) = self.http("GET", &format!("/api/v1/jobs/{job}"), None, &[]);
            if body["status"] == status {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "job {job} never reached {status}: {body:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn job_count(&self) -> usize {
        let (_, body) = self.http("GET", "/api/v1/jobs?limit=1000", None, &[]);
        body.as_array().unwrap().len()
    }

    /// Reads a job's `score` output file from the workspace's datastore on disk.
    pub fn output_lines(&self, job: &serde_json::Value) -> Vec<String> {
        let uri = job["output_uri"].as_str().unwrap();
        let rel = uri.strip_prefix("azureml://datastores/workspaceblobstore/paths/").unwrap();
        let file = job["output_file_name"].as_str().unwrap();
        let path = self.path().join("datastores/workspaceblobstore").join(rel).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Reads one of a job's log files, waiting briefly for it: logs of a failed or canceled job are
    /// written just after the job ends.
    pub fn log(&self, job: &str, rel: &str) -> String {
        let path = self.path().join("state/objects/jobs").join(job).join("logs").join(rel);
        let start = Instant::now();
        while !path.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Only a control plane still running: the PID of one already waited for may be another's now.
        if let Ok(None) = self.server.try_wait() {
            let _ = nix_kill(self.server.id());
            let _ = self.server.wait();
        }
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status().map(|_| ())
}

/// Where a test's jobs run: the embedded local cluster, or the real Slurm cluster on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Slurm,
}

pub const SLURM_CONF: &str = "/tmp/slurm-ci/slurm.conf";

/// Holds the one-node Slurm cluster of this host for one test: the Slurm tests share it (and one takes
/// its node down), so they run one at a time whatever runs them (nextest, or plain `cargo test`).
/// A client builder whose TLS trusts the workspace's CA (its `tls/trust.pem`) and nothing else, as
/// every client of Cove must.
pub fn https_builder(ws: &Path) -> reqwest::ClientBuilder {
    https_builder_as(ws, None)
}

/// The same, presenting a worker's client certificate and key (mutual TLS).
pub fn https_builder_as(ws: &Path, identity: Option<(PathBuf, PathBuf)>) -> reqwest::ClientBuilder {
    let ca = std::fs::read_to_string(ws.join("tls").join("trust.pem")).expect("the workspace's CA");
    let identity = identity.map(|(c, k)| (std::fs::read_to_string(c).unwrap(), std::fs::read_to_string(k).unwrap()));
    let pair = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    let tls = cove_tls::client_config("the workspace CA", &ca, pair).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(tls)
}

/// The client certificate a worker token is used with, as a worker host holds them together: the
/// `local` cluster's files for its token, or the folder `cove compute credential` wrote it in (see
/// [`Workspace::credential`]). None for any other token.
pub fn identity_of(ws: &Workspace, token: &str) -> Option<(PathBuf, PathBuf)> {
    let local = std::fs::read_to_string(ws.path().join("state/worker-local.token")).unwrap_or_default();
    if local.trim() == token {
        return Some((ws.path().join("tls/compute-local.pem"), ws.path().join("tls/compute-local.key")));
    }
    let folders = std::fs::read_dir(ws.dir.path().join("credentials")).ok()?;
    folders.flatten().map(|f| f.path()).find_map(|f| {
        let held = std::fs::read_to_string(f.join("token")).ok()?;
        (held.trim() == token).then(|| (f.join("client.pem"), f.join("client.key")))
    })
}

/// A client for the test's own plain-HTTP servers (an S3 emulator), with the process's TLS provider set
/// as every reqwest client needs.
pub fn plain_http() -> reqwest::Client {
    cove_tls::install_provider();
    reqwest::Client::new()
}

pub fn https(ws: &Path) -> reqwest::Client {
    https_builder(ws).build().unwrap()
}

pub fn slurm_cluster() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("cove-slurm-tests.lock"))
        .unwrap();
    lock.lock().unwrap();
    lock
}

impl Backend {
    /// Starts a workspace; for Slurm, also registers the `hpc` compute cluster.
    pub fn workspace(self) -> Workspace {
        match self {
            Backend::Local => Workspace::start(),
            Backend::Slurm => {
                let cluster = slurm_cluster();
                let mut ws = Workspace::start_with(&[], &[("SLURM_CONF", SLURM_CONF)]);
                ws.cluster = Some(cluster);
                let file = ws.dir.path().join("compute.yml");
                std::fs::write(&file, "name: hpc\ntype: slurm\npartition: debug\nmax_nodes: 2\nmem_per_task_mb: 512\ntime_limit: '00:10:00'\n").unwrap();
                ws.cove(&["compute", "create", "-f", &file.display().to_string()]).ok();
                ws
            }
        }
    }

    pub fn compute(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Slurm => "hpc",
        }
    }

    /// The node name of a backend's first worker, as it appears in log paths.
    pub fn first_node(self) -> &'static str {
        match self {
            Backend::Local => "local-0",
            Backend::Slurm => "slurm-0",
        }
    }
}

/// A scoring project on disk: endpoint and deployment YAML, code, model, and input files.
pub struct Project {
    pub dir: PathBuf,
}

impl Project {
    /// Creates a project whose scoring script is `script`, with `settings` lines appended under `settings:`.
    pub fn new(root: &Path, endpoint: &str, script: &str, settings: &str) -> Project {
        let dir = root.join(format!("project-{endpoint}"));
        std::fs::create_dir_all(dir.join("code")).unwrap();
        std::fs::create_dir_all(dir.join("model")).unwrap();
        std::fs::write(dir.join("model/weights.txt"), "2\n").unwrap();
        std::fs::write(dir.join("code/score.py"), script).unwrap();
        std::fs::write(dir.join("endpoint.yml"), format!("name: {endpoint}\ndescription: test endpoint\n")).unwrap();
        let mut deployment = format!(
            "name: blue\nendpoint_name: {endpoint}\ntype: model\nmodel:\n  name: {endpoint}-model\n  path: model\n\
             code_configuration:\n  code: code\n  scoring_script: score.py\ncompute: azureml:local\nsettings:\n"
        );
        for line in settings.lines().filter(|l| !l.trim().is_empty()) {
            deployment.push_str("  ");
            deployment.push_str(line);
            deployment.push('\n');
        }
        if settings.trim().is_empty() {
            deployment.push_str("  mini_batch_size: 2\n");
        }
        std::fs::write(dir.join("deployment.yml"), deployment).unwrap();
        Project { dir }
    }

    /// Writes `n` input files named `file-000.txt`… each holding its index.
    pub fn inputs(&self, n: usize) -> PathBuf {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for i in 0..n {
            std::fs::write(data.join(format!("file-{i:03}.txt")), format!("{i}\n")).unwrap();
        }
        data
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Points the deployment at another compute cluster.
    pub fn on(self, backend: Backend) -> Project {
        let path = self.dir.join("deployment.yml");
        let yaml = std::fs::read_to_string(&path)
            .unwrap()
            .replace("compute: azureml:local", &format!("compute: azureml:{}", backend.compute()));
        std::fs::write(path, yaml).unwrap();
        self
    }

    /// Creates the endpoint and its default deployment in the workspace.
    pub fn deploy(&self, ws: &Workspace) {
        ws.cove(&["endpoint", "create", "-f", &self.file("endpoint.yml")]).ok();
        ws.cove(&["deployment", "create", "-f", &self.file("deployment.yml"), "--set-default"]).ok();
    }
}

/// A scoring script whose run() sleeps far longer than any test: its jobs end only when canceled.
pub const SLEEPER: &str =
    "import time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep(600)\n    return mini_batch\n";

/// A scoring script that returns one line per input file: `<file name> <content * weight>`.
pub const LIST_SCRIPT: &str = r#"
import os
weight = None

def init():
    global weight
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.txt")) as f:
        weight = int(f.read())

def run(mini_batch):
    out = []
    for path in mini_batch:
        with open(path) as f:
            out.append(f"{os.path.basename(path)} {int(f.read()) * weight}")
    return out
"#;

/// Waits for the first pause marker `<point>.<pid>` in `dir`; returns the paused process's pid.
pub fn paused_at(dir: &Path, point: &str) -> u32 {
    let start = Instant::now();
    loop {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix(&format!("{point}.")) {
                return pid.parse().unwrap();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no process paused at {point}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a process of the test's own with SIGKILL and waits until it is gone (or a zombie), so a
/// kill that killed nothing fails the test.
pub fn kill9_and_confirm(pid: u32) {
    kill(pid, "KILL");
    let start = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = state.is_empty() || state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if gone {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "process {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// PIDs of the processes (started by the tests' own control planes) with an argument containing each
/// of `parts`.
pub fn pids_with_args_containing(parts: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        if parts.iter().all(|want| argv.iter().any(|a| a.contains(want))) {
            out.push(pid);
        }
    }
    out
}

/// PIDs of the processes (started by the tests' own control planes) with an argument ending in each of `args`.
pub fn pids_with_args(args: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        if args.iter().all(|want| argv.iter().any(|a| a.ends_with(want))) {
            out.push(pid);
        }
    }
    out
}

/// A loopback port nothing listens on now, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until a server the test started (`what`) listens on loopback `port`.
pub fn wait_for_listener(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server a test runs as a child process on a loopback port; ended, by its PID, when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub port: u16,
}

impl ChildServer {
    /// Starts `command` (which listens on `port`) and waits until it does; `what` names it if it never does.
    pub fn start(command: &mut Command, port: u16, what: &str) -> ChildServer {
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let server = ChildServer { child, port };
        wait_for_listener(port, what);
        server
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate for `127.0.0.1` and its key, issued by a CA of its own, written to `<stem>.pem`,
/// `<stem>.key` and `<stem>-ca.pem` in `dir`: a store or an index serving HTTPS on loopback.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub fn tls_files(dir: &Path, stem: &str) -> TlsFiles {
    let (authority, ca) = cove_tls::Authority::create(stem, &cove_tls::NameScope::loopback()).unwrap();
    let issued = authority.issue_server(&["127.0.0.1".into()], 2).unwrap();
    let write = |name: String, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    TlsFiles {
        cert: write(format!("{stem}.pem"), &issued.cert_pem),
        key: write(format!("{stem}.key"), &issued.key_pem),
        ca: write(format!("{stem}-ca.pem"), &ca.cert_pem),
    }
}

/// Writes `network.yml` in `dir` for a workspace on loopback whose datastore `datastore` is served over
/// HTTPS at `port`, its private endpoint naming the CA in `store-ca.pem` ([`tls_files`] with stem
/// `store`), and whose datastore `plain` is reached at the same address with no CA named.
pub fn https_store_network(dir: &Path, datastore: &str, port: u16) -> PathBuf {
    let network = dir.join("network.yml");
    std::fs::write(
        &network,
        format!(
            "networks:\n  - name: workspace\n    address_space: [127.0.0.0/8]\nprivate_endpoints:\n  - name: api\n    service: api\n    \
             address: 127.0.0.1:0\n    network: workspace\n  - name: {datastore}-pe\n    service: 'datastore:{datastore}'\n    \
             address: 127.0.0.1:{port}\n    network: workspace\n    ca_file: store-ca.pem\n  - name: plain-pe\n    \
             service: 'datastore:plain'\n    address: 127.0.0.1:{port}\n    network: workspace\n"
        ),
    )
    .unwrap();
    network
}

/// How many result parts of `job` the state store of the workspace at `ws` keeps.
pub fn part_bodies_kept(ws: &Path, job: &str) -> i64 {
    let db = rusqlite::Connection::open(ws.join("state/cove.db")).unwrap();
    db.query_row(
        "SELECT COUNT(*) FROM part_bodies WHERE lease_id IN (SELECT lease_id FROM attempts WHERE job = ?1)",
        [job],
        |r| r.get(0),
    )
    .unwrap()
}

/// Sends a signal to one process by PID.
pub fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// A control plane on a fixed port over a workspace folder the test keeps, so it can be killed and
/// started again on the same workspace; with `log`, its stderr is appended there.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    pub log: Option<PathBuf>,
    /// Environment of the next start (and so of the workers it starts).
    pub env: Vec<(String, String)>,
}

impl ControlPlane {
    pub fn start(dir: &Path) -> ControlPlane {
        Self::start_logging(dir, None)
    }

    pub fn start_logging(dir: &Path, log: Option<PathBuf>) -> ControlPlane {
        Self::start_logging_with(dir, log, &[])
    }

    /// The same, with `env` set for `cove up` (and so for the workers it starts).
    pub fn start_logging_with(dir: &Path, log: Option<PathBuf>, env: &[(&str, &str)]) -> ControlPlane {
        let port = free_port();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut cp = ControlPlane { dir: dir.to_path_buf(), port, child: None, log, env };
        cp.restart();
        cp
    }

    /// Starts `cove up` once: a start that fails fails the test, showing what `cove up` said (its
    /// stderr goes to `log`, or to `<dir>.stderr`, appended, so every start's words are kept).
    pub fn restart(&mut self) {
        let log = self.log.clone().unwrap_or_else(|| {
            let mut name = self.dir.clone().into_os_string();
            name.push(".stderr");
            PathBuf::from(name)
        });
        let said_before = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut child = Command::new(COVE)
            .args(["up", "--dir"])
            // Tests stop control planes with work in flight all the time; a planned stop waits this long
            // for it (the tests of planned stops set their own).
            .env("COVE_SHUTDOWN_GRACE", "2")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        if lines.any(|l| l.map(|l| l.starts_with("API and scoring URIs")).unwrap_or(false)) {
            std::thread::spawn(move || for _ in lines {});
            self.child = Some(child);
            return;
        }
        let status = child.wait().unwrap();
        let said = std::fs::read(&log).unwrap_or_default();
        panic!(
            "the control plane did not come back ({status}):\n{}",
            String::from_utf8_lossy(&said[said_before as usize..])
        );
    }

    /// Stops it with SIGTERM; returns how it ended.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the control plane runs");
        kill(child.id(), "TERM");
        child.wait().unwrap()
    }

    /// The running control plane's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the control plane runs").id()
    }

    /// Starts it with a pause at `point` (see `cove_api::pause`), its markers written to `dir`.
    pub fn pausing_at(dir: &Path, point: &str, markers: &Path) -> ControlPlane {
        let port = free_port();
        let env = vec![
            ("COVE_PAUSE_AT".to_string(), point.to_string()),
            ("COVE_PAUSE_DIR".to_string(), markers.display().to_string()),
            ("COVE_PAUSE_MS".to_string(), "8000".to_string()),
        ];
        let mut cp = ControlPlane { dir: dir.to_path_buf(), port, child: None, log: None, env };
        cp.restart();
        cp
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    pub fn cove(&self, args: &[&str]) -> Run {
        Command::new(COVE).arg("--workspace").arg(&self.dir).args(args).env("CI", "1").output().unwrap().into()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

/// An HTTPS server on loopback (`openssl s_server -www`) whose certificate the workspace CA's own key
/// signed for `sans` (openssl's `subjectAltName` syntax), as someone holding the key would.
pub struct ForgedServer {
    child: Child,
    pub port: u16,
}

impl ForgedServer {
    pub fn start(ws: &Path, dir: &Path, stem: &str, sans: &str) -> ForgedServer {
        let tls = ws.join("tls");
        let file = |ext: &str| dir.join(format!("{stem}.{ext}")).display().to_string();
        let (key, csr, cert, ext) = (file("key"), file("csr"), file("pem"), file("ext"));
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key]);
        openssl(&["req", "-new", "-key", &key, "-subj", &format!("/CN={stem}"), "-out", &csr]);
        std::fs::write(&ext, format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")).unwrap();
        let (ca, ca_key) = (tls.join("ca.pem").display().to_string(), tls.join("ca.key").display().to_string());
        let serial = file("srl");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAserial",
            &serial,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ]);
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}"), "-cert", &cert, "-key", &key])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_listener(port, "openssl s_server");
        ForgedServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for ForgedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
