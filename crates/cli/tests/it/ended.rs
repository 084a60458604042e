//! What a job says once it has ended, and what the client does around it: leases of an ended job are
//! gone (no expiry is reported, before or after a restart), an ended job shows what became of every
//! mini-batch, downloading an output that holds nothing says so, a closed pipe ends a command quietly,
//! and an invocation that would be refused uploads nothing.

use crate::support::{ControlPlane, Project, Workspace, COVE, LIST_SCRIPT, SLEEPER};
use std::time::{Duration, Instant};

fn lines_with(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

/// A job canceled while its mini-batches are leased gives the leases back when it ends: when their
/// deadlines pass nothing expires (no log line, before or after a restart), and the job shows every
/// mini-batch as not run.
#[test]
fn a_canceled_job_holds_no_lease_and_shows_what_did_not_run() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("control-plane.log");
    let mut cp = ControlPlane::start_logging(&dir.path().join("ws"), Some(log.clone()));
    let p = Project::new(
        dir.path(),
        "sleepers",
        SLEEPER,
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nretry_settings:\n    timeout: 2",
    );
    cp.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let run = cp.cove(&["--json", "endpoint", "invoke", "sleepers", "--input", &p.inputs(4).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
        if shown["progress"]["batches_running"] == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "two mini-batches were never leased: {shown:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cp.cove(&["job", "cancel", &job]).ok();
    // The leases would have expired 2 s (timeout) + 10 s (grace) after they were last renewed.
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(lines_with(&log, "lease expired"), 0, "{}", std::fs::read_to_string(&log).unwrap());
    let shown = cp.cove(&["job", "show", &job]);
    assert!(
        shown.ok().stdout.contains("Mini-batches: 4 total, 0 succeeded, 0 failed, 4 not run (the job ended first)"),
        "{}",
        shown.stdout
    );
    let json = cp.cove(&["--json", "job", "show", &job]).ok().json();
    assert_eq!(
        (json["progress"]["batches_running"].clone(), json["progress"]["batches_pending"].clone()),
        (0.into(), 0.into())
    );
    assert!(cp.stop().success());
    cp.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines_with(&log, "lease expired"), 0, "{}", std::fs::read_to_string(&log).unwrap());
    assert!(lines_with(&log, "WARN") < 5, "the log stays quiet:\n{}", std::fs::read_to_string(&log).unwrap());
}

const FAILS_ON_TWO: &str = r#"
import os, time

def init():
    pass

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "file-001.txt":
        raise RuntimeError("this one fails")
    time.sleep(1)
    return [name]
"#;

/// A failed job says what became of each mini-batch, downloading its `score` output says there is
/// nothing and what there is instead, and a summary_only job without files says why.
#[test]
fn an_ended_job_says_what_there_is_to_download() {
    let ws = Workspace::start();
    let p = Project::new(
        ws.dir.path(),
        "failing",
        FAILS_ON_TWO,
        "mini_batch_size: 1\nerror_threshold: 0\nretry_settings:\n    max_retries: 1",
    );
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "failing", "--input", &p.inputs(6).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed");
    let name = job["name"].as_str().unwrap();
    let p_ = &job["progress"];
    let (ok, failed, not_run) = (
        p_["batches_succeeded"].as_u64().unwrap(),
        p_["batches_failed"].as_u64().unwrap(),
        p_["batches_not_run"].as_u64().unwrap(),
    );
    assert_eq!((failed, ok + failed + not_run), (1, 6), "{p_}");
    assert!(not_run > 0, "the job failed before every mini-batch ran: {p_}");
    let shown = ws.cove(&["job", "show", name]);
    assert!(
        shown.stdout.contains(&format!("6 total, {ok} succeeded, 1 failed, {not_run} not run (the job ended first)")),
        "{}",
        shown.stdout
    );
    let dl = ws.dir.path().join("dl");
    let got = ws.cove(&["job", "download", name, "--download-path", &dl.display().to_string()]);
    got.fails_with(5, &format!("job {name} has nothing in output `score`: it is Failed, and a job that did not complete publishes nothing; its logs can be downloaded: cove job download {name} --output-name logs"));
    assert!(!dl.exists(), "nothing was written");
    ws.cove(&["job", "download", name, "--output-name", "logs", "--download-path", &dl.display().to_string()]).ok();
    assert!(dl.join("artifacts/logs/job_result.txt").is_file());
    ws.cove(&["job", "download", name, "--output-name", "nope"])
        .fails_with(5, "has no output `nope` (outputs: score, logs)");

    let q = Project::new(ws.dir.path(), "summary", LIST_SCRIPT, "output_action: summary_only");
    q.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "summary", "--input", &q.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed");
    let name = job["name"].as_str().unwrap();
    ws.cove(&["job", "download", name]).fails_with(
        5,
        "it completed, but its deployment's output_action is summary_only and its script wrote no files",
    );
}

fn sh(script: &str) -> (String, String) {
    let out = std::process::Command::new("bash").args(["-c", script]).env("CI", "1").output().unwrap();
    (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// A reader that goes away ends the command quietly, as `ls | head` does: no panic, no error.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "piped", FAILS_ON_TWO, "mini_batch_size: 1\nerror_threshold: -1");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "piped", "--input", &p.inputs(4).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let cove = format!("{COVE} --workspace {}", ws.path().display());
    let (out, err) = sh(&format!("{cove} job stream {job} --json | head -n 1; echo \"status=${{PIPESTATUS[0]}}\""));
    assert_eq!(out.lines().count(), 2, "one progress line, then the status: {out}");
    assert!(out.lines().last().unwrap() == "status=141" || out.ends_with("status=0\n"), "{out}");
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
    ws.wait_job(&job);
    let (out, err) =
        sh(&format!("{cove} job list --json | (exec 0<&-; sleep 0.5); echo \"status=${{PIPESTATUS[0]}}\""));
    assert!(out == "status=141\n" || out == "status=0\n", "{out}");
    assert!(err.is_empty(), "{err}");
}

/// An invocation the control plane would refuse uploads nothing; a folder with subfolders is scored
/// by its top-level files, and the user is told what is left out.
#[test]
fn a_refused_invocation_uploads_nothing_and_subfolders_are_named() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "careful", LIST_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let data = p.inputs(3);
    std::fs::create_dir_all(data.join("nested")).unwrap();
    std::fs::write(data.join("nested/deep.txt"), "9\n").unwrap();
    let data = data.display().to_string();
    let uploads = ws.path().join("datastores/workspaceblobstore/LocalUpload");
    let count = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    let before = count();
    ws.cove(&["endpoint", "invoke", "careful", "--input", &data]).fails_with(2, "No valid deployments to route to");
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let after_deploy = count();
    assert!(after_deploy > before, "the deployment's model and code were uploaded (so the count is live)");
    ws.cove(&["endpoint", "invoke", "careful", "--input", &data, "--set", "mini_bach_size=3"])
        .fails_with(2, "--set mini_bach_size: unknown setting `mini_bach_size`, did you mean `mini_batch_size`?");
    ws.cove(&["endpoint", "invoke", "careful", "--input", &data, "-d", "green"])
        .fails_with(5, "deployment `green` does not exist");
    assert_eq!(count(), after_deploy, "a refused invocation left an upload behind");
    let run = ws.cove(&["--json", "endpoint", "invoke", "careful", "--input", &data]);
    assert!(run.stderr.contains("warning: 1 file(s) in subfolders of"), "{}", run.stderr);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["progress"]["files_total"], 3);
    assert_eq!(count(), after_deploy + 1);
}
