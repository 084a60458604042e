//! The `slurm` compute backend: a job's workers run as one Slurm array job with `instance_count`
//! tasks, each a `cove worker` bound to the job. Slurm is driven through its own commands (`sinfo`,
//! `sbatch`, `scontrol`, `scancel`), so Cove works with any Slurm the host's clients can reach.
//!
//! Nothing runs on the cluster between jobs. This is the scheduler's client; the tracker that follows
//! each submitted array job for its Cove job is `cove_jobs::slurm`.

use crate::{ComputeError, JobWorkers};
use cove_api::ComputeSpec;
use cove_workspace::CredentialSource;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

fn command(spec: &ComputeSpec, program: &str) -> Command {
    let mut c = Command::new(program);
    if let Some(conf) = &spec.slurm_conf {
        c.env("SLURM_CONF", conf);
    }
    c.kill_on_drop(true);
    c
}

async fn run(mut c: Command, what: &str) -> Result<String, ComputeError> {
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .map_err(|_| ComputeError::Unreachable(format!("`{what}` did not answer within 30 s")))?
        .map_err(|e| {
            ComputeError::Unreachable(format!("`{what}` cannot be run (are Slurm's client commands installed?): {e}"))
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(ComputeError::Refused(err.trim().lines().last().unwrap_or("failed").to_string()))
    }
}

/// The resource arguments every submission (and the validation) uses.
fn resources(spec: &ComputeSpec) -> Vec<String> {
    let mut a = vec![
        "-p".to_string(),
        spec.partition.clone(),
        "--nodes=1".into(),
        "--ntasks=1".into(),
        format!("--cpus-per-task={}", spec.cpus_per_task),
        format!("--mem={}M", spec.mem_per_task_mb),
        format!("--time={}", spec.time_limit),
    ];
    if let Some(account) = &spec.account {
        a.push(format!("--account={account}"));
    }
    if let Some(qos) = &spec.qos {
        a.push(format!("--qos={qos}"));
    }
    a
}

/// Checks that the controller answers, the partition exists, and it accepts the limits.
pub async fn validate(spec: &ComputeSpec) -> Result<(), ComputeError> {
    let mut c = command(spec, "sinfo");
    c.args(["-h", "-o", "%R"]);
    let partitions =
        run(c, "sinfo").await.map_err(|e| ComputeError::Unreachable(format!("cannot reach slurmctld: {e}")))?;
    let names: Vec<&str> = partitions.lines().map(str::trim).collect();
    if !names.contains(&spec.partition.as_str()) {
        return Err(ComputeError::Invalid(format!(
            "partition `{}` does not exist (partitions: {})",
            spec.partition,
            names.join(", ")
        )));
    }
    let mut c = command(spec, "sbatch");
    c.arg("--test-only").args(resources(spec)).args(["--wrap", "true"]);
    run(c, "sbatch --test-only")
        .await
        .map_err(|e| ComputeError::Invalid(format!("partition `{}` refuses these limits: {e}", spec.partition)))?;
    Ok(())
}

/// Whether the cluster's controller answers `sinfo` (within 30 s).
pub async fn reachable(spec: &ComputeSpec) -> Result<(), ComputeError> {
    let mut c = command(spec, "sinfo");
    c.args(["-h", "-o", "%R"]);
    run(c, "sinfo").await.map(|_| ()).map_err(|e| ComputeError::Unreachable(format!("cannot reach slurmctld: {e}")))
}

pub struct Submission<'a> {
    pub job: &'a str,
    pub instances: u32,
    pub concurrency: u32,
    pub exe: &'a Path,
    pub url: &'a str,
    pub credential: &'a cove_workspace::WorkerCredential,
    pub dir: &'a Path,
}

/// A copy of the cluster's credential files in the job's folder, which the nodes see (their logs and
/// working directory are there too), where the workspace's own `tls/` folder is the control plane's.
fn shared_credential(s: &Submission<'_>) -> Result<cove_workspace::WorkerCredential, String> {
    let dir = s.dir.join("credential");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let copy = |from: &Path, name: &str| -> Result<std::path::PathBuf, String> {
        let to = dir.join(name);
        let text = std::fs::read_to_string(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        cove_workspace::tls::write_private(&to, &text).map_err(|e| format!("{e:#}"))?;
        Ok(to)
    };
    let c = s.credential;
    Ok(cove_workspace::WorkerCredential {
        token: c.token.clone(),
        cert: copy(&c.cert, "client.pem")?,
        key: copy(&c.key, "client.key")?,
        trust: copy(&c.trust, "ca.pem")?,
    })
}

/// Submits the job's workers as an array job; returns the Slurm job id.
pub async fn submit(spec: &ComputeSpec, s: &Submission<'_>) -> Result<String, ComputeError> {
    tokio::fs::create_dir_all(s.dir)
        .await
        .map_err(|e| ComputeError::Credential(format!("cannot create {}: {e}", s.dir.display())))?;
    let script = format!(
        "exec '{}' worker --job '{}' --node slurm-$SLURM_ARRAY_TASK_ID --concurrency {} --work-dir '{}'/task-$SLURM_ARRAY_TASK_ID",
        s.exe.display(),
        s.job,
        s.concurrency,
        s.dir.display()
    );
    let mut c = command(spec, "sbatch");
    c.arg("--parsable")
        .arg(format!("--job-name=cove-{}", s.job))
        .arg(format!("--array=0-{}", s.instances.saturating_sub(1)))
        .args(resources(spec))
        // A lost task is Cove's to handle (its leases expire and others take them), not Slurm's to requeue.
        .arg("--no-requeue")
        .arg(format!("--output={}/slurm-%A_%a.out", s.dir.display()))
        .arg(format!("--chdir={}", s.dir.display()))
        .args(["--wrap", &script])
        .env("COVE_URL", s.url)
        .envs(shared_credential(s).map_err(ComputeError::Credential)?.env())
        .env_remove("COVE_TOKEN");
    let out = run(c, "sbatch").await.map_err(|e| ComputeError::Refused(format!("sbatch refused the job: {e}")))?;
    Ok(out.split(';').next().unwrap_or(&out).trim().to_string())
}

pub async fn cancel(spec: &ComputeSpec, id: &str) {
    let mut c = command(spec, "scancel");
    c.arg(id);
    let _ = run(c, "scancel").await;
}

/// One array task as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub index: String,
    pub state: String,
    pub reason: String,
    pub nodes: String,
    /// `code:signal`, as Slurm reports a task's exit.
    pub exit: String,
}

impl Task {
    pub fn is_live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "RESIZING" | "SUSPENDED" | "REQUEUED"
        )
    }
    /// Pending because the nodes it needs are down, drained or reserved: waiting for capacity that
    /// may never come, unlike a task waiting its turn.
    pub fn lacks_nodes(&self) -> bool {
        self.state == "PENDING"
            && ["DOWN", "DRAIN", "ReqNodeNotAvail", "Nodes_required", "PartitionDown", "NodeDown"]
                .iter()
                .any(|why| self.reason.contains(why))
    }

    pub fn was_lost(&self) -> bool {
        matches!(
            self.state.as_str(),
            "NODE_FAIL" | "FAILED" | "BOOT_FAIL" | "TIMEOUT" | "OUT_OF_MEMORY" | "PREEMPTED" | "DEADLINE"
        )
    }
}

/// Parses `scontrol -o show job ID`: one line per array task, `key=value` fields.
pub fn parse_tasks(text: &str) -> Vec<Task> {
    text.lines()
        .filter(|l| l.contains("JobState="))
        .map(|line| {
            let field = |key: &str| {
                line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or("").to_string()
            };
            Task {
                index: field("ArrayTaskId"),
                state: field("JobState"),
                reason: field("Reason"),
                nodes: field("NodeList"),
                exit: field("ExitCode"),
            }
        })
        .collect()
}

pub async fn tasks(spec: &ComputeSpec, id: &str) -> Result<Vec<Task>, ComputeError> {
    let mut c = command(spec, "scontrol");
    c.args(["-o", "show", "job", id]);
    match run(c, "scontrol").await {
        Ok(text) => Ok(parse_tasks(&text)),
        // A job Slurm no longer knows (purged) has no live task.
        Err(ComputeError::Refused(e)) if e.contains("Invalid job id") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub fn describe(id: &str, tasks: &[Task]) -> String {
    let parts: Vec<String> = tasks
        .iter()
        .map(|t| {
            let mut s = format!("task {} {}", t.index, t.state);
            if t.state == "PENDING" && !t.reason.is_empty() && t.reason != "None" {
                s.push_str(&format!(" ({})", t.reason));
            }
            if !t.nodes.is_empty() && t.nodes != "(null)" {
                s.push_str(&format!(" on {}", t.nodes));
            }
            if !t.is_live() && !t.exit.is_empty() {
                s.push_str(&format!(", exit {}", t.exit));
            }
            s
        })
        .collect();
    format!("slurm job {id}: {}", if parts.is_empty() { "gone".to_string() } else { parts.join("; ") })
}

/// A Slurm cluster as a backend: a job's workers are one array job, submitted with the cluster's
/// current worker credential.
pub struct Slurm {
    pub spec: ComputeSpec,
    /// The `cove` executable the tasks run as `cove worker`.
    pub exe: PathBuf,
    /// The control plane's URL, as the workers reach it.
    pub url: String,
    pub credential: CredentialSource,
    /// The compute's folder; each job's submission gets its own folder in it.
    pub dir: PathBuf,
}

#[async_trait::async_trait]
impl crate::Backend for Slurm {
    async fn start(&self, w: JobWorkers<'_>) -> Result<Option<String>, ComputeError> {
        let credential = (self.credential)()
            .map_err(|e| ComputeError::Credential(format!("the compute's worker credential is missing: {e:#}")))?;
        let dir = self.dir.join(w.job);
        let submission = Submission {
            job: w.job,
            instances: w.instances,
            concurrency: w.concurrency,
            exe: &self.exe,
            url: &self.url,
            credential: &credential,
            dir: &dir,
        };
        submit(&self.spec, &submission).await.map(Some)
    }

    async fn stop(&self, _job: &str, reference: Option<&str>) {
        if let Some(id) = reference {
            cancel(&self.spec, id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scontrol_lines_become_tasks() {
        let text = "JobId=13 ArrayJobId=12 ArrayTaskId=1 JobName=cove-x JobState=PENDING Reason=Resources Dependency=(null) NodeList=(null)\n\
                    JobId=12 ArrayJobId=12 ArrayTaskId=0 JobName=cove-x JobState=RUNNING Reason=None NodeList=vm\n";
        let tasks = super::parse_tasks(text);
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            (tasks[0].index.as_str(), tasks[0].state.as_str(), tasks[0].reason.as_str()),
            ("1", "PENDING", "Resources")
        );
        assert_eq!(super::describe("12", &tasks), "slurm job 12: task 1 PENDING (Resources); task 0 RUNNING on vm");
        assert!(tasks.iter().all(super::Task::is_live));
        let lost =
            super::parse_tasks("JobId=14 ArrayTaskId=2 JobState=NODE_FAIL Reason=NodeDown NodeList=vm ExitCode=0:15\n");
        assert!(lost[0].was_lost() && !lost[0].is_live());
        assert_eq!(super::describe("14", &lost), "slurm job 14: task 2 NODE_FAIL on vm, exit 0:15");
    }
}
