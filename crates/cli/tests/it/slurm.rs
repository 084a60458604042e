//! The Slurm backend against the real one-node Slurm cluster on this host (`scripts/slurm-up`): the
//! behaviour tests of the local cluster, configuration errors, two instances, cancellation, and a node
//! taken down in the middle of a job. Each test holds the cluster (`support::slurm_cluster`), so they run
//! one at a time under any test runner.

use crate::scoring;
use crate::support::{self, Backend, Project, Workspace, LIST_SCRIPT, SLURM_CONF};
use std::process::Command;

fn scontrol(args: &[&str]) -> String {
    let out = Command::new("scontrol").args(args).env("SLURM_CONF", SLURM_CONF).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn node() -> String {
    String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string()
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs() < secs, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn slurm_list_returning_script() {
    scoring::list_returning_script_on(Backend::Slurm);
}

#[test]
fn slurm_failing_mini_batch() {
    scoring::failing_mini_batch_on(Backend::Slurm);
}

#[test]
fn slurm_killed_scorer() {
    scoring::killed_scorer_on(Backend::Slurm);
}

#[test]
fn slurm_configuration_errors_name_the_cause() {
    let _cluster = support::slurm_cluster();
    let ws = Workspace::start_with(&[], &[("SLURM_CONF", SLURM_CONF)]);
    let write = |name: &str, text: &str| {
        let path = ws.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let missing = write("missing.yml", "name: hpc\ntype: slurm\npartition: gpu\n");
    ws.cove(&["compute", "create", "-f", &missing]).fails_with(2, "partition `gpu` does not exist (partitions: debug)");
    let greedy = write("greedy.yml", "name: hpc\ntype: slurm\npartition: debug\nmem_per_task_mb: 100000000\n");
    ws.cove(&["compute", "create", "-f", &greedy]).fails_with(2, "partition `debug` refuses these limits");
    let conf = std::fs::read_to_string(SLURM_CONF).unwrap().replace("SlurmctldPort=6817", "SlurmctldPort=6899");
    let dead = ws.dir.path().join("dead.conf");
    std::fs::write(&dead, conf).unwrap();
    let unreachable = write(
        "unreachable.yml",
        &format!("name: hpc\ntype: slurm\npartition: debug\nslurm_conf: {}\n", dead.display()),
    );
    ws.cove(&["compute", "create", "-f", &unreachable]).fails_with(2, "cannot reach slurmctld");
    let typo = write("typo.yml", "name: hpc\ntype: slurm\npartiton: debug\n");
    ws.cove(&["compute", "create", "-f", &typo]).fails_with(2, "unknown field `partiton`");
    assert_eq!(ws.cove(&["--json", "compute", "list"]).ok().json().as_array().unwrap().len(), 1, "only `local` exists");
}

#[test]
fn slurm_runs_a_job_on_two_instances_and_scales_to_zero() {
    let ws = Backend::Slurm.workspace();
    let p = Project::new(ws.dir.path(), "twin", LIST_SCRIPT, "").on(Backend::Slurm);
    let yaml = std::fs::read_to_string(p.dir.join("deployment.yml")).unwrap();
    let yaml = yaml.replace("settings:\n  mini_batch_size: 2\n", "settings:\n  mini_batch_size: 1\n");
    std::fs::write(p.dir.join("deployment.yml"), format!("{yaml}resources:\n  instance_count: 2\n")).unwrap();
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "twin", "--input", &p.inputs(6).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let expected: Vec<String> = (0..6).map(|i| format!("file-{i:03}.txt {}", i * 2)).collect();
    assert_eq!(ws.output_lines(&job), expected);
    // The nodes read the cluster's credential from a copy in the job's folder: the same bytes, readable
    // by the workspace's owner alone.
    let name = job["name"].as_str().unwrap();
    let copies = ws.path().join("compute/hpc").join(name).join("credential");
    use std::os::unix::fs::PermissionsExt;
    for (copy, original) in
        [("client.key", "compute-hpc.key"), ("client.pem", "compute-hpc.pem"), ("ca.pem", "trust.pem")]
    {
        let path = copies.join(copy);
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {:o}", path.display(), mode & 0o777);
        let source = std::fs::read(ws.path().join("tls").join(original)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), source, "{copy} is a copy of tls/{original}");
    }
    let state = job["compute_state"].as_str().unwrap().to_string();
    assert!(state.starts_with("slurm job "), "{state}");
    let id = state.trim_start_matches("slurm job ").split(':').next().unwrap().to_string();
    // Both array tasks ran and ended: nothing stays on the cluster after the job.
    wait_for("the array job to end", 30, || {
        let text = scontrol(&["-o", "show", "job", &id]);
        text.matches("JobState=COMPLETED").count() == 2
    });
    let nodes: std::collections::BTreeSet<String> =
        job["attempts"].as_array().unwrap().iter().map(|a| a["node"].as_str().unwrap().to_string()).collect();
    assert!(nodes.iter().all(|n| n == "slurm-0" || n == "slurm-1"), "{nodes:?}");
    // More instances than the cluster allows is refused when invoking.
    ws.cove(&[
        "endpoint",
        "invoke",
        "twin",
        "--input",
        &p.dir.join("data").display().to_string(),
        "--instance-count",
        "3",
    ])
    .fails_with(2, "instance_count: 3 is more than compute `hpc` allows (2)");
}

#[test]
fn slurm_cancelling_the_job_cancels_the_slurm_job() {
    let ws = Backend::Slurm.workspace();
    let slow =
        "import time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    print('scoring', flush=True)\n    time.sleep(300)\n    return mini_batch\n";
    let p = Project::new(ws.dir.path(), "slowhpc", slow, "retry_settings:\n    timeout: 600").on(Backend::Slurm);
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "slowhpc", "--input", &p.inputs(1).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let mut id = String::new();
    wait_for("the Slurm task to run", 60, || {
        let job = ws.cove(&["--json", "job", "show", &name]).ok().json();
        let state = job["compute_state"].as_str().unwrap_or("").to_string();
        id = state.trim_start_matches("slurm job ").split(':').next().unwrap_or("").to_string();
        state.contains("RUNNING") && job["progress"]["batches_running"] == 1
    });
    // Cancel while the scorer is inside run(), so the worker cannot notice the cancel by itself.
    let log = ws
        .path()
        .join("compute/hpc")
        .join(&name)
        .join("task-0/jobs")
        .join(&name)
        .join("logs/user/stdout/slurm-0/process000.stdout.txt");
    wait_for("the scorer to be inside run()", 60, || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("scoring")
    });
    ws.cove(&["job", "cancel", &name]).ok();
    // Slurm ends the task (CANCELLED, or FAILED when the stopped worker exits first) within seconds,
    // not after the scorer's 300 s of sleep.
    let mut last = String::new();
    let start = std::time::Instant::now();
    while !(last.contains("JobState=CANCELLED") || last.contains("JobState=FAILED")) {
        assert!(start.elapsed().as_secs() < 30, "Slurm did not end array job {id}: {last}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        last = scontrol(&["-o", "show", "job", &id]);
    }
    assert!(!last.contains("JobState=COMPLETED"), "a cancelled job's worker did not finish normally: {last}");
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Canceled");
    wait_for("the job to show the Slurm task cancelled", 30, || {
        let job = ws.cove(&["--json", "job", "show", &name]).ok().json();
        let state = job["compute_state"].as_str().unwrap_or("").to_string();
        state.contains("CANCELLED") || state.contains("FAILED")
    });
}

/// The Slurm job id in a Cove job's compute state (`slurm job 12: ...`).
fn slurm_job_id(job: &serde_json::Value) -> Option<String> {
    let state = job["compute_state"].as_str()?;
    Some(state.strip_prefix("slurm job ")?.split(':').next()?.to_string())
}

/// Takes the node down while a job's tasks run on it: the lost tasks give their leases back at once
/// (long before the leases' 30 s would run out), the array job is submitted again, and once the node is
/// back every file is scored exactly once.
#[test]
fn slurm_node_down_mid_job_loses_its_tasks_and_the_job_still_scores_every_file_once() {
    let ws = Backend::Slurm.workspace();
    let script = "import os, time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep(0.5)\n    return [os.path.basename(p) for p in mini_batch]\n";
    let p = Project::new(
        ws.dir.path(),
        "downhpc",
        script,
        "mini_batch_size: 1\nretry_settings:\n    max_retries: 5\n    timeout: 20",
    )
    .on(Backend::Slurm);
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "downhpc", "--input", &p.inputs(8).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let show = || ws.cove(&["--json", "job", "show", &name]).ok().json();
    wait_for("two mini-batches", 60, || show()["progress"]["batches_succeeded"].as_u64().unwrap() >= 2);
    let first = slurm_job_id(&show()).expect("the job runs as a Slurm job");
    let taken = NodeOut::take(&node(), "DOWN");
    let down = std::time::Instant::now();
    // The lease of the mini-batch the lost task held comes back at once: a lease lasts timeout (20 s)
    // plus 10 s of grace from the task's last heartbeat.
    wait_for("the lost task's lease to be given back", 15, || {
        show()["attempts"].as_array().unwrap().iter().any(|a| a["outcome"] == "lease_expired")
    });
    assert!(down.elapsed().as_secs() < 15);
    wait_for("the array job to be submitted again", 30, || slurm_job_id(&show()).is_some_and(|id| id != first));
    drop(taken);
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let expected: Vec<String> = (0..8).map(|i| format!("file-{i:03}.txt")).collect();
    assert_eq!(ws.output_lines(&job), expected, "every file exactly once");
    wait_for("the node to be idle again", 60, node_idle);
}

/// The cluster's node taken out of service for a test, and put back when the test ends however it
/// ends (a failed assertion included), so one failing test never leaves the node out for the others.
struct NodeOut(String);

impl NodeOut {
    fn take(node: &str, state: &str) -> NodeOut {
        let out = scontrol(&["update", &format!("NodeName={node}"), &format!("State={state}"), "Reason=cove-test"]);
        assert!(!out.contains("error"), "{out}");
        NodeOut(node.to_string())
    }
}

impl Drop for NodeOut {
    fn drop(&mut self) {
        // A down node whose slurmd answers may have come back by itself (ReturnToService=2); Slurm
        // then refuses RESUME, and what matters is that the node is in service.
        let out = scontrol(&["update", &format!("NodeName={}", self.0), "State=RESUME"]);
        let state = Command::new("sinfo").args(["-h", "-o", "%T"]).env("SLURM_CONF", SLURM_CONF).output().unwrap();
        let state = String::from_utf8_lossy(&state.stdout).to_lowercase();
        if (state.contains("drain") || state.contains("down")) && !std::thread::panicking() {
            panic!("the node {} is still out of service ({state}): {out}", self.0);
        }
    }
}

fn node_idle() -> bool {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).env("SLURM_CONF", SLURM_CONF).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "idle"
}

/// With the node kept down, the job cannot get capacity: every submission fails to run it, and the
/// job fails saying so.
#[test]
fn slurm_a_node_kept_down_fails_the_job_for_lack_of_capacity() {
    let _cluster = support::slurm_cluster();
    let ws = Workspace::start_with(&[], &[("SLURM_CONF", SLURM_CONF)]);
    let file = ws.dir.path().join("compute.yml");
    std::fs::write(&file, "name: hpc\ntype: slurm\npartition: debug\nmem_per_task_mb: 512\ncapacity_wait: 5\n")
        .unwrap();
    ws.cove(&["compute", "create", "-f", &file.display().to_string()]).ok();
    let p = Project::new(ws.dir.path(), "nocap", LIST_SCRIPT, "mini_batch_size: 1").on(Backend::Slurm);
    p.deploy(&ws);
    // Drained rather than down: a down node whose slurmd still answers comes back by itself here
    // (ReturnToService=2), a drained one stays out until resumed.
    let taken = NodeOut::take(&node(), "DRAIN");
    let run = ws.cove(&["--json", "endpoint", "invoke", "nocap", "--input", &p.inputs(2).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let job = ws.wait_job(&name);
    drop(taken);
    assert_eq!(job["status"], "Failed", "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("no Slurm capacity: the workers waited 5 s (capacity_wait) for nodes that are down, drained or reserved: task 0 PENDING"), "{error}");
    assert_eq!(job["progress"]["items_ok"], 0, "nothing ran: {job:#}");
    wait_for("the node to be idle again", 60, node_idle);
}

#[test]
fn slurm_a_controller_gone_when_a_job_starts_fails_the_job_with_the_cause() {
    let _cluster = support::slurm_cluster();
    let ws = Workspace::start_with(&[], &[("SLURM_CONF", SLURM_CONF)]);
    // The compute's own copy of slurm.conf: valid when the compute is created, broken before the job.
    let conf = ws.dir.path().join("hpc-slurm.conf");
    std::fs::copy(SLURM_CONF, &conf).unwrap();
    let file = ws.dir.path().join("compute.yml");
    std::fs::write(
        &file,
        format!("name: hpc\ntype: slurm\npartition: debug\nmem_per_task_mb: 512\nslurm_conf: {}\n", conf.display()),
    )
    .unwrap();
    ws.cove(&["compute", "create", "-f", &file.display().to_string()]).ok();
    let p = Project::new(ws.dir.path(), "gone", LIST_SCRIPT, "").on(Backend::Slurm);
    p.deploy(&ws);
    let text = std::fs::read_to_string(&conf).unwrap().replace("SlurmctldPort=6817", "SlurmctldPort=6899");
    std::fs::write(&conf, text).unwrap();
    let run = ws.cove(&["--json", "endpoint", "invoke", "gone", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed", "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("the Slurm compute could not start workers: sbatch refused the job"), "{error}");
}
