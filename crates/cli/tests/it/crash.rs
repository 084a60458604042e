//! Crash safety: `kill -9` of the control plane, workers and scorer processes at seeded random points
//! of a job. After every restart the job resumes, and it completes with each input item exactly once,
//! in mini-batch order. CI runs a few seeds; `COVE_CRASH_SEEDS=50 cargo nextest run -E 'test(crash)'`
//! runs more, and `COVE_CRASH_SEED=N` replays one.

use crate::support::{self, pids_with_args, ControlPlane};
use std::process::Command;
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
        time.sleep(0.05 + (zlib.crc32(name.encode()) % 100) / 1000)
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

    // Three blows at random moments: the control plane, a worker, a scorer, in a seeded order.
    for round in 0..3 {
        std::thread::sleep(rng.millis(100, 1200));
        match rng.next() % 3 {
            0 => {
                eprintln!("seed {seed} round {round}: kill -9 the control plane");
                cp.kill9();
                std::thread::sleep(rng.millis(10, 500));
                cp.restart();
            }
            1 => {
                let workers = pids_with_args(&["worker", "--job", &job]);
                eprintln!("seed {seed} round {round}: kill -9 a worker of {}", workers.len());
                if let Some(pid) = workers.first() {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
            }
            _ => {
                let scorers: Vec<u32> = pids_with_args(&["cove_driver.py", &job])
                    .into_iter()
                    .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "bwrap"))
                    .collect();
                eprintln!("seed {seed} round {round}: kill -9 a scorer of {}", scorers.len());
                if let Some(pid) = scorers.first() {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
            }
        }
    }
    let start = Instant::now();
    let final_job = loop {
        let shown = cp.cove(&["--json", "job", "show", &job]);
        if shown.code == 0 {
            let j = shown.json();
            if ["Completed", "Failed", "Canceled"].contains(&j["status"].as_str().unwrap()) {
                break j;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(180), "seed {seed}: the job did not end");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(final_job["status"], "Completed", "seed {seed}: {final_job:#}");
    let out = dir.path().join("ws/datastores/workspaceblobstore/azureml").join(&job).join("score/predictions.csv");
    let lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("file-{i:03}.txt {i}")).collect();
    assert_eq!(lines, expected, "seed {seed}: every item exactly once, in mini-batch order");
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
    let url = format!("http://127.0.0.1:{}/endpoints/again/jobs", cp.port);
    let post = || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::new()
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
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "the first CLI invocation and the keyed one");
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
