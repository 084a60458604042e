//! The `local` compute cluster: worker processes on this host, started per job (scale to zero between jobs).

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How many times a crashed worker of one instance is started again before the instance gives up.
const MAX_RESTARTS: u32 = 3;

pub struct LocalCompute {
    exe: PathBuf,
    url: String,
    token: String,
    dir: PathBuf,
    /// Per job: a stop signal, and the monitor tasks of its instances.
    jobs: Mutex<HashMap<String, (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>)>>,
    /// Jobs whose every instance gave up, with why; the control plane fails them.
    lost: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl LocalCompute {
    /// Returns the backend and the channel on which it reports jobs that lost all their workers.
    pub fn new(
        exe: PathBuf,
        url: String,
        token: String,
        dir: PathBuf,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
        let (lost, lost_rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { exe, url, token, dir, jobs: Mutex::new(HashMap::new()), lost }, lost_rx)
    }

    /// Starts `instances` workers for a job, each running `concurrency` scorer processes. Starting a
    /// job that already has workers here does nothing.
    pub fn launch(&self, job: &str, instances: u32, concurrency: u32) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.contains_key(job) {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (gave_up_tx, mut gave_up_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let monitors = (0..instances)
            .map(|k| {
                let spec = WorkerSpec {
                    exe: self.exe.clone(),
                    url: self.url.clone(),
                    token: self.token.clone(),
                    job: job.to_string(),
                    node: format!("local-{k}"),
                    concurrency,
                    work_dir: self.dir.join(job).join(format!("local-{k}")),
                };
                tokio::spawn(keep_alive(spec, stop_rx.clone(), gave_up_tx.clone()))
            })
            .collect();
        drop(gave_up_tx);
        let (lost, job_name) = (self.lost.clone(), job.to_string());
        tokio::spawn(async move {
            let mut reasons = Vec::new();
            while let Some(reason) = gave_up_rx.recv().await {
                reasons.push(reason);
            }
            if reasons.len() == instances as usize && instances > 0 {
                let _ = lost.send((job_name, reasons.swap_remove(0)));
            }
        });
        jobs.insert(job.to_string(), (stop_tx, monitors));
    }

    /// Stops a job's workers (SIGTERM, then SIGKILL after a grace period) and waits until they are gone.
    pub async fn stop(&self, job: &str) {
        let entry = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(job);
        if let Some((stop, monitors)) = entry {
            let _ = stop.send(true);
            for m in monitors {
                let _ = m.await;
            }
        }
    }

    pub async fn stop_all(&self) {
        let names: Vec<String> = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }
}

struct WorkerSpec {
    exe: PathBuf,
    url: String,
    token: String,
    job: String,
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
        let exit = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        match exit {
            None => {
                terminate(pid, &mut child).await;
                return;
            }
            Some(Ok(s)) if s.success() => return,
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
        .env("COVE_WORKER_TOKEN", &spec.token)
        .env_remove("COVE_TOKEN")
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
