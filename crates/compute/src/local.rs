//! The `local` compute cluster: worker processes on this host, started per job (scale to zero between jobs).

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How many times a crashed worker of one instance is started again before the instance gives up.
const MAX_RESTARTS: u32 = 3;

use cove_workspace::CredentialSource;

/// The `local` cluster. Its capacity is `max_instances` workers at a time; jobs beyond it wait in
/// submission order (the job stays Queued) and start as running jobs' workers finish.
#[derive(Clone)]
pub struct LocalCompute {
    inner: Arc<Inner>,
}

struct Inner {
    exe: PathBuf,
    url: String,
    credential: CredentialSource,
    dir: PathBuf,
    /// Node names are `<prefix>-<instance>`: `local-0`, or a named cluster's `cpu-cluster-0`.
    node_prefix: String,
    capacity: std::sync::atomic::AtomicU32,
    state: Mutex<State>,
    /// Jobs whose every instance gave up, with why; the control plane fails them.
    lost: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

#[derive(Default)]
struct State {
    /// Per running job: its stop signal, its instance count, and the task that waits for its workers.
    running: HashMap<String, (watch::Sender<bool>, u32, Option<tokio::task::JoinHandle<()>>)>,
    /// Jobs waiting for capacity, oldest first: (job, instances, concurrency).
    waiting: VecDeque<(String, u32, u32)>,
    used: u32,
}

impl LocalCompute {
    /// Returns the backend and the channel on which it reports jobs that lost all their workers.
    pub fn new(
        exe: PathBuf,
        url: String,
        credential: CredentialSource,
        dir: PathBuf,
        node_prefix: &str,
        capacity: u32,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
        let (lost, lost_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Inner {
            exe,
            url,
            credential,
            dir,
            node_prefix: node_prefix.to_string(),
            capacity: std::sync::atomic::AtomicU32::new(capacity.max(1)),
            state: Mutex::new(State::default()),
            lost,
        };
        (Self { inner: Arc::new(inner) }, lost_rx)
    }

    /// Changes how many workers may run at once; waiting jobs start if they now fit.
    pub fn set_capacity(&self, capacity: u32) {
        self.inner.capacity.store(capacity.max(1), std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state();
        self.start_waiting(&mut state);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `instances` workers for a job, each running `concurrency` scorer processes, or queues the
    /// job until there is room. Launching a job that is already running or waiting does nothing.
    pub fn launch(&self, job: &str, instances: u32, concurrency: u32) {
        let mut state = self.state();
        if state.running.contains_key(job) || state.waiting.iter().any(|(j, _, _)| j == job) {
            return;
        }
        state.waiting.push_back((job.to_string(), instances, concurrency));
        self.start_waiting(&mut state);
    }

    /// Starts waiting jobs, oldest first, while they fit.
    fn start_waiting(&self, state: &mut State) {
        while let Some((_, instances, _)) = state.waiting.front() {
            let capacity = self.inner.capacity.load(std::sync::atomic::Ordering::Relaxed);
            let fits = state.used + instances <= capacity || state.used == 0;
            if !fits {
                return;
            }
            let (job, instances, concurrency) = state.waiting.pop_front().expect("peeked");
            state.used += instances;
            let (stop_tx, stop_rx) = watch::channel(false);
            let this = self.clone();
            let name = job.clone();
            let waiter = tokio::spawn(async move { this.run_instances(name, instances, concurrency, stop_rx).await });
            state.running.insert(job, (stop_tx, instances, Some(waiter)));
        }
    }

    async fn run_instances(self, job: String, instances: u32, concurrency: u32, stop: watch::Receiver<bool>) {
        let (gave_up_tx, mut gave_up_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let monitors: Vec<_> = (0..instances)
            .map(|k| {
                let spec = WorkerSpec {
                    exe: self.inner.exe.clone(),
                    url: self.inner.url.clone(),
                    credential: self.inner.credential.clone(),
                    job: job.clone(),
                    compute: self.inner.node_prefix.clone(),
                    node: format!("{}-{k}", self.inner.node_prefix),
                    concurrency,
                    work_dir: self.inner.dir.join(&job).join(format!("{}-{k}", self.inner.node_prefix)),
                };
                tokio::spawn(keep_alive(spec, stop.clone(), gave_up_tx.clone()))
            })
            .collect();
        drop(gave_up_tx);
        for m in monitors {
            let _ = m.await;
        }
        let mut reasons = Vec::new();
        while let Ok(reason) = gave_up_rx.try_recv() {
            reasons.push(reason);
        }
        if reasons.len() == instances as usize && instances > 0 {
            let _ = self.inner.lost.send((job.clone(), reasons.swap_remove(0)));
        }
        let mut state = self.state();
        if let Some((_, n, _)) = state.running.remove(&job) {
            state.used -= n;
        }
        self.start_waiting(&mut state);
    }

    /// Stops a job's workers (SIGTERM, then SIGKILL after a grace period), or takes it off the queue,
    /// and waits until its workers are gone.
    pub async fn stop(&self, job: &str) {
        let waiter = {
            let mut state = self.state();
            state.waiting.retain(|(j, _, _)| j != job);
            match state.running.get_mut(job) {
                Some((stop, _, waiter)) => {
                    let _ = stop.send(true);
                    waiter.take()
                }
                None => None,
            }
        };
        if let Some(w) = waiter {
            let _ = w.await;
        }
    }

    pub async fn stop_all(&self) {
        let names: Vec<String> = {
            let mut state = self.state();
            state.waiting.clear();
            state.running.keys().cloned().collect()
        };
        for name in names {
            self.stop(&name).await;
        }
    }
}

struct WorkerSpec {
    exe: PathBuf,
    url: String,
    credential: CredentialSource,
    job: String,
    /// The cluster's name, for the logs.
    compute: String,
    node: String,
    concurrency: u32,
    work_dir: PathBuf,
}

/// Runs one instance's worker, starting it again if it crashes while the job still runs.
async fn keep_alive(
    spec: WorkerSpec,
    mut stop: watch::Receiver<bool>,
    gave_up: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut restarts = 0;
    loop {
        let stopped = *stop.borrow();
        if stopped {
            return;
        }
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(job = %spec.job, node = %spec.node, %error, "failed to start worker");
                let _ = gave_up.send(format!("failed to start a worker process: {error}"));
                return;
            }
        };
        let pid = child.id();
        tracing::info!(job = %spec.job, compute = %spec.compute, node = %spec.node, pid, "worker started");
        let exit = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        match exit {
            None => {
                terminate(pid, &mut child).await;
                tracing::info!(job = %spec.job, compute = %spec.compute, node = %spec.node, pid, "worker stopped");
                return;
            }
            Some(Ok(s)) if s.success() => {
                tracing::info!(job = %spec.job, compute = %spec.compute, node = %spec.node, pid, "worker finished");
                return;
            }
            Some(Ok(s)) => {
                tracing::warn!(job = %spec.job, node = %spec.node, status = %s, "worker exited, starting it again")
            }
            Some(Err(error)) => {
                tracing::warn!(job = %spec.job, node = %spec.node, %error, "lost the worker")
            }
        }
        restarts += 1;
        if restarts > MAX_RESTARTS {
            tracing::error!(job = %spec.job, node = %spec.node, "worker keeps crashing, giving up on this instance");
            let log = spec.work_dir.join("worker.log");
            let _ = gave_up.send(format!(
                "the worker process kept crashing ({} restarts); see {}",
                MAX_RESTARTS,
                log.display()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spawn(spec: &WorkerSpec) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(&spec.work_dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(spec.work_dir.join("worker.log"))?;
    tokio::process::Command::new(&spec.exe)
        .arg("worker")
        .arg("--url")
        .arg(&spec.url)
        .arg("--job")
        .arg(&spec.job)
        .arg("--node")
        .arg(&spec.node)
        .arg("--concurrency")
        .arg(spec.concurrency.to_string())
        .arg("--work-dir")
        .arg(&spec.work_dir)
        .envs((spec.credential)().map_err(std::io::Error::other)?.env())
        .env_remove("COVE_TOKEN")
        .env_remove(cove_common::sandbox_probe::PROBED_ON_THIS_HOST)
        .envs(
            matches!(cove_common::sandbox_probe::probed(), Some(Ok(())))
                .then_some((cove_common::sandbox_probe::PROBED_ON_THIS_HOST, "1")),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so that stopping a job reaches everything the worker started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// Asks the worker to stop (it then stops its scorer processes), and kills its group if it lingers.
async fn terminate(pid: Option<u32>, child: &mut tokio::process::Child) {
    let Some(pid) = pid else { return };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

#[async_trait::async_trait]
impl crate::Backend for LocalCompute {
    /// Starts the workers (or queues the job for capacity) before it returns: callers that await it
    /// have the job's workers on their way, in order with any later stop.
    async fn start(&self, w: crate::JobWorkers<'_>) -> Result<Option<String>, crate::ComputeError> {
        self.launch(w.job, w.instances, w.concurrency);
        Ok(None)
    }

    async fn stop(&self, job: &str, _reference: Option<&str>) {
        LocalCompute::stop(self, job).await
    }
}
