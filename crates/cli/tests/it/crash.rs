//! Crash safety: `kill -9` of the control plane, workers and scorer processes at seeded random points
//! of a job. After every restart the job resumes, and it completes with each input item exactly once,
//! in mini-batch order. CI runs a few seeds; `COVE_CRASH_SEEDS=50 cargo nextest run -E 'test(crash)'`
//! runs more, and `COVE_CRASH_SEED=N` replays one.

use crate::support::{self, pids_with_args, ControlPlane};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift), so a printed seed replays the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// A control plane that the test may kill and start again on the same directory and port.
const SCRIPT: &str = r#"
import os, time, zlib

def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        time.sleep(0.3 + (zlib.crc32(name.encode()) % 100) / 1000)
        out.append(f"{name} {open(path).read().strip()}")
    return out
"#;

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("COVE_CRASH_SEED") {
        return vec![one.parse().expect("COVE_CRASH_SEED is a number")];
    }
    let n: u64 = std::env::var("COVE_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    (1..=n).map(|i| 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i) | 1).collect()
}

fn crash_run(seed: u64) {
    eprintln!("crash test seed {seed} (replay with COVE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("ws"));
    let project = support::Project::new(
        dir.path(),
        "crashy",
        SCRIPT,
        "mini_batch_size: 2\nmax_concurrency_per_instance: 2\nretry_settings:\n    max_retries: 10\n    timeout: 5",
    );
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let data = project.inputs(30).display().to_string();
    let run = cp.cove(&["--json", "endpoint", "invoke", "crashy", "--input", &data]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();

    // Three blows at random moments: the control plane, a worker, a scorer, in a seeded order. Each
    // blow must land: its target is waited for, and must be gone after it.
    for round in 0..3 {
        std::thread::sleep(rng.millis(100, 1200));
        match rng.next() % 3 {
            0 => {
                eprintln!("seed {seed} round {round}: kill -9 the control plane");
                support::kill9_and_confirm(cp.pid());
                cp.kill9();
                std::thread::sleep(rng.millis(10, 500));
                cp.restart();
            }
            1 => {
                let pid = wait_for_one(|| pids_with_args(&["worker", "--job", &job]), "a worker");
                eprintln!("seed {seed} round {round}: kill -9 worker {pid}");
                support::kill9_and_confirm(pid);
            }
            _ => {
                let pid = wait_for_one(|| scorers_of(&job), "a scorer");
                eprintln!("seed {seed} round {round}: kill -9 scorer {pid}");
                support::kill9_and_confirm(pid);
            }
        }
    }
    completes_exactly_once(&cp, &job, 30);
}

/// The scorer processes of a job: the interpreter running the driver under the job's work folder (not
/// the bubblewrap process around it).
fn scorers_of(job: &str) -> Vec<u32> {
    support::pids_with_args_containing(&["cove_driver.py", job])
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "bwrap"))
        .collect()
}

/// Waits until `find` finds a process; returns the first.
fn wait_for_one(find: impl Fn() -> Vec<u32>, what: &str) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = find().first() {
            return *pid;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} never ran, so nothing could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the crash project's job to its end in `cp` and checks every item is in the output once.
fn completes_exactly_once(cp: &ControlPlane, job: &str, files: usize) {
    let start = Instant::now();
    let done = loop {
        let shown = cp.cove(&["--json", "job", "show", job]);
        if shown.code == 0 {
            let j = shown.json();
            if ["Completed", "Failed", "Canceled"].contains(&j["status"].as_str().unwrap()) {
                break j;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the job did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "Completed", "{done:#}");
    let out = cp.dir.join("datastores/workspaceblobstore/azureml").join(job).join("score/predictions.csv");
    let lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    let expected: Vec<String> = (0..files).map(|i| format!("file-{i:03}.txt {i}")).collect();
    assert_eq!(lines, expected, "every item exactly once, in mini-batch order: {done:#}");
}

/// A control plane paused at `point`, with the crash project deployed and a job of `files` files started.
fn paused_job(point: &str, dir: &Path, files: usize) -> (ControlPlane, String, std::path::PathBuf) {
    let markers = dir.join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let cp = ControlPlane::pausing_at(&dir.join("ws"), point, &markers);
    let project = support::Project::new(
        dir,
        "paused",
        SCRIPT,
        "mini_batch_size: 2\nmax_concurrency_per_instance: 2\nretry_settings:\n    max_retries: 10\n    timeout: 2",
    );
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let data = project.inputs(files).display().to_string();
    let job = cp.cove(&["--json", "endpoint", "invoke", "paused", "--input", &data]).ok().json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    (cp, job, markers)
}

/// `kill -9` of the control plane while it plans a job (the manifest written, the mini-batches not):
/// the restart plans it again, and every item is scored once.
#[test]
fn crash_kill_9_while_planning() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut cp, job, markers) = paused_job("planning", dir.path(), 6);
    let pid = support::paused_at(&markers, "planning");
    assert_eq!(pid, cp.pid(), "the control plane itself paused while planning");
    support::kill9_and_confirm(pid);
    cp.kill9();
    cp.env.clear();
    cp.restart();
    completes_exactly_once(&cp, &job, 6);
}

/// `kill -9` of a worker after its attempt succeeded and before its report: the lease expires, and the
/// mini-batch is scored again.
#[test]
fn crash_kill_9_between_an_attempt_and_its_report() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (cp, job, markers) = paused_job("before-report", dir.path(), 6);
    let pid = support::paused_at(&markers, "before-report");
    assert!(pids_with_args(&["worker", "--job", &job]).contains(&pid), "a worker of the job paused before its report");
    support::kill9_and_confirm(pid);
    completes_exactly_once(&cp, &job, 6);
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    let expired = shown["attempts"].as_array().unwrap().iter().filter(|a| a["outcome"] == "lease_expired").count();
    assert!(expired >= 1, "the killed worker's lease expired and its mini-batch ran again: {shown:#}");
}

/// A script whose result lines are long, so each mini-batch's part is stored as an object (over 64 KiB).
const LONG_LINES_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    return [f"{os.path.basename(p)} {open(p).read().strip()} " + "x" * 40000 for p in mini_batch]
"#;

/// `kill -9` of the control plane and the job's workers after a large part was stored and before its
/// report was applied: the part is an orphan (stored, committed by no attempt); the restart scores its
/// mini-batch again, the orphan never reaches the output, and it is deleted with the job's parts.
#[test]
fn crash_kill_9_between_a_part_stored_and_its_report_applied() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let mut cp = ControlPlane::pausing_at(&dir.path().join("ws"), "part-stored", &markers);
    let project = support::Project::new(
        dir.path(),
        "orphans",
        LONG_LINES_SCRIPT,
        "mini_batch_size: 2
retry_settings:
    max_retries: 10
    timeout: 2",
    );
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let data = project.inputs(6).display().to_string();
    let job = cp.cove(&["--json", "endpoint", "invoke", "orphans", "--input", &data]).ok().json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = support::paused_at(&markers, "part-stored");
    assert_eq!(pid, cp.pid(), "the control plane paused between storing a part and applying its report");
    let parts = cp.dir.join("state/objects/jobs").join(&job).join("parts");
    let stored: Vec<String> =
        std::fs::read_dir(&parts).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    let db = rusqlite::Connection::open(cp.dir.join("state/cove.db")).unwrap();
    let committed: i64 = db
        .query_row("SELECT COUNT(*) FROM batches WHERE job = ?1 AND committed_part IS NOT NULL", [&job], |r| r.get(0))
        .unwrap();
    assert_eq!(committed, 0, "no part is committed yet");
    assert!(!stored.is_empty(), "a part was stored before its report: an orphan until the report is applied");
    let workers = pids_with_args(&["worker", "--job", &job]);
    assert!(!workers.is_empty(), "the job's workers run");
    support::kill9_and_confirm(pid);
    for worker in workers {
        support::kill9_and_confirm(worker);
    }
    cp.kill9();
    cp.env.clear();
    cp.restart();
    let start = Instant::now();
    let done = loop {
        let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
        if ["Completed", "Failed", "Canceled"].contains(&shown["status"].as_str().unwrap()) {
            break shown;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the job did not end: {shown:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "Completed", "{done:#}");
    let out = cp.dir.join("datastores/workspaceblobstore/azureml").join(&job).join("score/predictions.csv");
    let names: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let expected: Vec<String> = (0..6).map(|i| format!("file-{i:03}.txt {i}")).collect();
    assert_eq!(names, expected, "every item once, in order, and nothing of the orphan");
    let start = Instant::now();
    while parts.exists() && std::fs::read_dir(&parts).unwrap().next().is_some() {
        assert!(start.elapsed() < Duration::from_secs(30), "the orphan part was never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -9` of the control plane while it finalizes (the output published, the job not yet
/// Completed): the restart finalizes again, and the output holds every item once.
#[test]
fn crash_kill_9_while_finalizing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut cp, job, markers) = paused_job("finalizing", dir.path(), 6);
    let pid = support::paused_at(&markers, "finalizing");
    assert_eq!(pid, cp.pid(), "the control plane itself paused while finalizing");
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    assert_eq!(shown["status"], "Finalizing", "{shown:#}");
    support::kill9_and_confirm(pid);
    cp.kill9();
    cp.env.clear();
    cp.restart();
    completes_exactly_once(&cp, &job, 6);
}

/// `kill -9` of the control plane after a job completed and before its result parts were deleted: the
/// restart deletes them, and the output stays whole.
#[test]
fn crash_kill_9_before_a_completed_jobs_parts_are_deleted() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut cp, job, markers) = paused_job("collecting", dir.path(), 6);
    let pid = support::paused_at(&markers, "collecting");
    assert_eq!(pid, cp.pid(), "the control plane itself paused before deleting the parts");
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    assert_eq!(shown["status"], "Completed", "{shown:#}");
    let ws_dir = cp.dir.clone();
    let parts_kept = || support::part_bodies_kept(&ws_dir, &job);
    assert_eq!(parts_kept(), 3, "the three mini-batches' parts are still kept");
    support::kill9_and_confirm(pid);
    cp.kill9();
    cp.env.clear();
    cp.restart();
    let start = Instant::now();
    while parts_kept() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the restart left the parts of an ended job");
        std::thread::sleep(Duration::from_millis(100));
    }
    completes_exactly_once(&cp, &job, 6);
}

#[test]
fn crash_kill_9_anywhere_still_completes_every_item_exactly_once() {
    for seed in seeds() {
        crash_run(seed);
    }
}

#[test]
fn crash_an_idempotency_key_survives_a_control_plane_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("ws"));
    let project = support::Project::new(dir.path(), "again", support::LIST_SCRIPT, "");
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let input = cp
        .cove(&["--json", "endpoint", "invoke", "again", "--input", &project.inputs(2).display().to_string()])
        .ok()
        .json()["input"]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(dir.path().join("ws/owner.token")).unwrap().trim().to_string();
    let url = format!("https://127.0.0.1:{}/endpoints/again/jobs", cp.port);
    let post = || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let resp = support::https(&dir.path().join("ws"))
                .post(&url)
                .bearer_auth(&token)
                .header("repeatability-request-id", "nightly-2026-11-26")
                .json(&serde_json::json!({"input": {"uri": input, "type": "uri_folder"}}))
                .send()
                .await
                .unwrap();
            resp.json::<serde_json::Value>().await.unwrap()["name"].as_str().unwrap().to_string()
        })
    };
    let first = post();
    cp.kill9();
    cp.restart();
    assert_eq!(post(), first, "the same key returns the same job after a restart");
    let list = cp.cove(&["--json", "job", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2, "the first CLI invocation and the keyed one");
}

#[test]
fn crash_sigterm_stops_the_control_plane_and_leaves_no_process_behind() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("ws"));
    let slow = "import subprocess, sys, time\n\ndef init():\n    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', 'cove-sigterm-child'])\n\ndef run(mini_batch):\n    time.sleep(600)\n    return mini_batch\n";
    let project = support::Project::new(
        dir.path(),
        "sleepy",
        slow,
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nretry_settings:\n    timeout: 900",
    );
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let run = cp.cove(&["--json", "endpoint", "invoke", "sleepy", "--input", &project.inputs(4).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let start = Instant::now();
    while pids_with_args(&["cove-sigterm-child"]).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "the scorers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = cp.stop();
    assert!(status.success(), "SIGTERM is an orderly stop: {status}");
    let start = Instant::now();
    loop {
        let left: Vec<u32> =
            [pids_with_args(&["worker", "--job", &job]), pids_with_args(&["cove-sigterm-child"])].concat();
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "processes outlived the control plane: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The job was interrupted, not lost: a restart resumes it.
    cp.restart();
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    assert!(["Running", "Queued"].contains(&shown["status"].as_str().unwrap()), "{shown:#}");
    cp.cove(&["job", "cancel", &job]).ok();
}

/// The crash script, also writing a file per input to `AZUREML_BI_OUTPUT_PATH`, so a job publishes a
/// set of several files.
const WRITING_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        content = open(path).read().strip()
        with open(os.path.join(os.environ["AZUREML_BI_OUTPUT_PATH"], f"extra-{name}"), "w") as f:
            f.write(f"extra {content}\n")
        out.append(f"{name} {content}")
    return out
"#;

/// A control plane paused in the middle of publishing a job's set (after its first file), with the
/// job's output folder and its private staging folder.
fn paused_mid_publish(dir: &Path) -> (ControlPlane, String, PathBuf, PathBuf) {
    let markers = dir.join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let cp = ControlPlane::pausing_at(&dir.join("ws"), "publishing", &markers);
    let project = support::Project::new(dir, "publishing", WRITING_SCRIPT, "mini_batch_size: 2");
    cp.cove(&["endpoint", "create", "-f", &project.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &project.file("deployment.yml"), "--set-default"]).ok();
    let data = project.inputs(4).display().to_string();
    let run = cp.cove(&["--json", "endpoint", "invoke", "publishing", "--input", &data]).ok().json();
    let job = run["name"].as_str().unwrap().to_string();
    let pid = support::paused_at(&markers, "publishing");
    assert_eq!(pid, cp.pid(), "the control plane itself paused while publishing");
    let datastore = cp.dir.join("datastores/workspaceblobstore");
    let (output, staging) = (
        datastore.join("azureml").join(&job).join("score"),
        datastore.join("azureml").join(&job).join(format!(".cove-publishing-{job}")),
    );
    // Between two files of the set: one is written, in the job's private folder, and no reader of the
    // output location sees anything.
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    assert_eq!(shown["status"], "Finalizing", "{shown:#}");
    let staged: Vec<String> =
        std::fs::read_dir(&staging).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert_eq!(staged, ["extra-file-000.txt"], "one file of the set is written, in the private folder");
    assert!(!output.exists(), "a reader sees part of the set at {}", output.display());
    (cp, job, output, staging)
}

/// The files of a folder, with their contents, sorted by name.
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into(), std::fs::read_to_string(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

/// `kill -9` of the control plane between two files of a job's published set, on the default (local)
/// datastore: no reader ever sees part of the set, and the restart publishes it whole, once.
#[test]
fn crash_kill_9_mid_publish_publishes_the_whole_set_once() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut cp, job, output, staging) = paused_mid_publish(dir.path());
    support::kill9_and_confirm(cp.pid());
    cp.kill9();
    cp.env.clear();
    cp.restart();
    completes_exactly_once(&cp, &job, 4);
    let mut expected: Vec<(String, String)> =
        (0..4).map(|i| (format!("extra-file-{i:03}.txt"), format!("extra {i}\n"))).collect();
    expected.push(("predictions.csv".into(), (0..4).map(|i| format!("file-{i:03}.txt {i}\n")).collect()));
    assert_eq!(contents(&output), expected, "the whole set, each file once");
    assert!(!staging.exists(), "the private folder is gone");
    let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
    let download = dir.path().join("download");
    cp.cove(&["job", "download", &job, "--download-path", &download.display().to_string()]).ok();
    assert_eq!(contents(&download.join("named-outputs/score")), expected, "{shown:#}");
}

/// A cancel that arrives while a set is being published, then `kill -9`: the restart publishes nothing
/// and deletes what was written, and the job ends Canceled.
#[test]
fn crash_kill_9_mid_publish_after_a_cancel_publishes_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut cp, job, output, staging) = paused_mid_publish(dir.path());
    let canceled = cp.cove(&["--json", "job", "cancel", &job]).ok().json();
    assert_eq!(canceled["status"], "CancelRequested", "{canceled:#}");
    support::kill9_and_confirm(cp.pid());
    cp.kill9();
    cp.env.clear();
    cp.restart();
    let start = Instant::now();
    let shown = loop {
        let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
        if shown["status"] != "CancelRequested" {
            break shown;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the cancel never took: {shown:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shown["status"], "Canceled", "{shown:#}");
    assert!(
        !output.exists() && !staging.exists(),
        "a canceled job left files at {} or {}",
        output.display(),
        staging.display()
    );
}
