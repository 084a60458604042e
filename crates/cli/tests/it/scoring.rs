//! The scoring-script contract: init() once per process, run(mini_batch) per mini-batch, the append_row
//! output format, retries, thresholds, timeouts and crashed scorer processes.

use crate::support::{self, Backend, Project, Workspace, LIST_SCRIPT};

fn invoke(ws: &Workspace, endpoint: &str, input: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "endpoint", "invoke", endpoint, "--input"];
    let input = input.display().to_string();
    args.push(&input);
    args.extend_from_slice(extra);
    let run = ws.cove(&args);
    run.ok();
    let name = run.json()["name"].as_str().unwrap().to_string();
    ws.wait_job(&name)
}

#[test]
fn a_list_returning_script_yields_one_line_per_element_in_mini_batch_order() {
    list_returning_script_on(Backend::Local);
}

/// The behaviour tests below run on every backend: here, and in `slurm.rs` on Slurm.
pub fn list_returning_script_on(backend: Backend) {
    let ws = backend.workspace();
    let p = Project::new(ws.dir.path(), "lists", LIST_SCRIPT, "mini_batch_size: 3\nmax_concurrency_per_instance: 2")
        .on(backend);
    p.deploy(&ws);
    let job = invoke(&ws, "lists", &p.inputs(7), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let expected: Vec<String> = (0..7).map(|i| format!("file-{i:03}.txt {}", i * 2)).collect();
    assert_eq!(ws.output_lines(&job), expected);
    assert_eq!(job["progress"]["batches_total"], 3);
    assert_eq!(job["progress"]["items_ok"], 7);
    // The reference's log layout: per-attempt report, result, per-process logs.
    let name = job["name"].as_str().unwrap();
    let report = ws.log(name, "sys/job_report/processed_mini-batches.csv");
    assert_eq!(report.lines().filter(|l| l.contains(",succeeded,")).count(), 3, "{report}");
    assert!(ws.log(name, "job_result.txt").contains("Status: Completed"));
    assert!(ws.log(name, &format!("sys/node/{}/process000.txt", backend.first_node())).contains("outcome=succeeded"));
}

const FRAME_SCRIPT: &str = r#"
import os
import pandas as pd

def init():
    pass

def run(mini_batch):
    rows = []
    for path in mini_batch:
        with open(path) as f:
            value = int(f.read())
        rows.append({"file": os.path.basename(path), "value": value, "label": "even number" if value % 2 == 0 else "odd"})
    return pd.DataFrame(rows)
"#;

#[test]
fn a_dataframe_returning_script_yields_space_separated_rows_without_header_or_index() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "frames", FRAME_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let job = invoke(&ws, "frames", &p.inputs(3), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(
        ws.output_lines(&job),
        vec!["file-000.txt 0 \"even number\"", "file-001.txt 1 odd", "file-002.txt 2 \"even number\""]
    );
}

const ENV_SCRIPT: &str = r#"
import os, sys, logging
count = 0

def init():
    global count
    count += 1

def run(mini_batch):
    logging.debug("debug is on")
    print("printed by run", flush=True)
    return [f"{os.path.basename(p)} init={count} level={sys.argv[sys.argv.index('--logging_level') + 1]} greeting={os.environ['GREETING']} model_dir={os.path.isdir(os.path.join(os.environ['AZUREML_MODEL_DIR'], 'model'))}" for p in mini_batch]
"#;

#[test]
fn scripts_see_the_reference_environment_and_init_runs_once_per_process() {
    let ws = Workspace::start();
    let settings = "mini_batch_size: 1\nlogging_level: debug\nenvironment_variables:\n    GREETING: hello";
    let p = Project::new(ws.dir.path(), "envs", ENV_SCRIPT, settings);
    p.deploy(&ws);
    let job = invoke(&ws, "envs", &p.inputs(3), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let expected: Vec<String> =
        (0..3).map(|i| format!("file-{i:03}.txt init=1 level=debug greeting=hello model_dir=True")).collect();
    assert_eq!(ws.output_lines(&job), expected);
    let name = job["name"].as_str().unwrap();
    let stdout = ws.log(name, "user/stdout/local-0/process000.stdout.txt");
    assert_eq!(stdout.matches("printed by run").count(), 3, "{stdout}");
    assert!(stdout.contains("debug is on"), "{stdout}");
}

const FLAKY_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    for p in mini_batch:
        if os.path.basename(p) == "file-001.txt":
            raise ValueError("cannot score file-001")
    return [os.path.basename(p) for p in mini_batch]
"#;

#[test]
fn a_failing_mini_batch_is_retried_then_reported_in_the_status() {
    failing_mini_batch_on(Backend::Local);
}

pub fn failing_mini_batch_on(backend: Backend) {
    let ws = backend.workspace();
    let p =
        Project::new(ws.dir.path(), "flaky", FLAKY_SCRIPT, "mini_batch_size: 1\nretry_settings:\n    max_retries: 2")
            .on(backend);
    p.deploy(&ws);
    let job = invoke(&ws, "flaky", &p.inputs(3), &[]);
    // error_threshold -1 ignores failed items: the job completes without the failed mini-batch.
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job), vec!["file-000.txt", "file-002.txt"]);
    let failed = &job["failed_batches"][0];
    assert_eq!(failed["index"], 1);
    assert_eq!(failed["first_file"].as_str().unwrap().rsplit('/').next().unwrap(), "file-001.txt");
    assert!(
        failed["reason"].as_str().unwrap().contains("ValueError: cannot score file-001 (attempt 2 of 2)"),
        "{failed}"
    );
    let name = job["name"].as_str().unwrap();
    let report = ws.log(name, "sys/job_report/processed_mini-batches.csv");
    assert_eq!(report.lines().filter(|l| l.starts_with("1,")).count(), 2, "two attempts of mini-batch 1:\n{report}");
    assert!(ws.log(name, &format!("user/error/{}/process000.txt", backend.first_node())).contains("Traceback"));

    // With a threshold of 0 the same failure fails the job, and nothing is published.
    let strict = invoke(&ws, "flaky", &p.dir.join("data"), &["--set", "error_threshold=0"]);
    assert_eq!(strict["status"], "Failed", "{strict:#}");
    assert!(strict["error"].as_str().unwrap().contains("error_threshold exceeded"), "{strict}");
    let (status, _) =
        ws.http("GET", &format!("/api/v1/jobs/{}/outputs/score", strict["name"].as_str().unwrap()), None, &[]);
    assert_eq!(status, 200);
    assert!(!ws
        .path()
        .join("datastores/workspaceblobstore/azureml")
        .join(strict["name"].as_str().unwrap())
        .join("score/predictions.csv")
        .exists());
}

#[test]
fn a_job_whose_init_always_fails_fails_with_the_reason() {
    let ws = Workspace::start();
    let script =
        "def init():\n    raise RuntimeError('model file is corrupt')\n\ndef run(mini_batch):\n    return mini_batch\n";
    let p = Project::new(ws.dir.path(), "badinit", script, "");
    p.deploy(&ws);
    let job = invoke(&ws, "badinit", &p.inputs(2), &[]);
    assert_eq!(job["status"], "Failed");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("init() failed") && error.contains("RuntimeError: model file is corrupt"), "{error}");
}

#[test]
fn a_job_with_no_succeeded_item_fails() {
    let ws = Workspace::start();
    let script = "def init():\n    pass\n\ndef run(mini_batch):\n    return []\n";
    let p = Project::new(ws.dir.path(), "empty", script, "");
    p.deploy(&ws);
    let job = invoke(&ws, "empty", &p.inputs(2), &[]);
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["error"], "No succeeded mini batch item returned from run()");
}

/// append_row writes each item of run()'s list as one line, `str()` of it: strings as they are, and
/// anything else (numbers, tuples, objects) as Python prints it.
#[test]
fn a_returned_list_is_written_one_line_per_item() {
    let ws = Workspace::start();
    let script = "import os\n\nclass Row:\n    def __str__(self):\n        return 'row-object'\n\ndef init():\n    pass\n\n\
                  def run(mini_batch):\n    names = [os.path.basename(p) for p in mini_batch]\n    \
                  if 'file-000.txt' in names:\n        return names\n    return [len(names), 2.5, ('t', 1), Row()] + names\n";
    let p = Project::new(ws.dir.path(), "mixed", script, "mini_batch_size: 1");
    p.deploy(&ws);
    let job = invoke(&ws, "mixed", &p.inputs(2), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let mut lines = ws.output_lines(&job);
    lines.sort();
    assert_eq!(lines, ["('t', 1)", "1", "2.5", "file-000.txt", "file-001.txt", "row-object"]);
}

#[test]
fn a_run_over_its_timeout_is_killed_and_retried() {
    let ws = Workspace::start();
    let script = "import os, time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    if any(p.endswith('file-000.txt') for p in mini_batch):\n        time.sleep(60)\n    return mini_batch\n";
    let p = Project::new(
        ws.dir.path(),
        "slow",
        script,
        "mini_batch_size: 1\nretry_settings:\n    max_retries: 2\n    timeout: 1",
    );
    p.deploy(&ws);
    let job = invoke(&ws, "slow", &p.inputs(2), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["progress"]["batches_failed"], 1);
    assert!(job["failed_batches"][0]["reason"].as_str().unwrap().contains("timed out"), "{job}");
}

/// Prints `KILL-ME` and stalls on file-004, unless a scorer of this node already printed it: the
/// script's stdout log folder is the one place its sandbox shares with the next scorer process.
const KILLABLE_SCRIPT: &str = r#"
import os, time

def init():
    pass

def seen(marker):
    logs = os.path.dirname(os.readlink("/proc/self/fd/1"))
    return any(marker in open(os.path.join(logs, f)).read() for f in os.listdir(logs))

def run(mini_batch):
    for p in mini_batch:
        if os.path.basename(p) == "file-004.txt" and not seen("KILL-ME"):
            print("KILL-ME", flush=True)
            time.sleep(60)
    return [os.path.basename(p) for p in mini_batch]
"#;

/// Waits until a scorer of `job` prints `marker`; returns the host PIDs of that scorer's processes.
fn scorer_that_printed(ws: &Workspace, job: &str, marker: &str, backend: Backend) -> Vec<u32> {
    let worker_dir = match backend {
        Backend::Local => ws.path().join("compute/local").join(job).join("local-0"),
        Backend::Slurm => ws.path().join("compute/hpc").join(job).join("task-0"),
    };
    let logs = worker_dir.join("jobs").join(job).join("logs/user/stdout").join(backend.first_node());
    let start = std::time::Instant::now();
    loop {
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            if std::fs::read_to_string(entry.path()).unwrap_or_default().contains(marker) {
                let log = entry.path();
                // The scorer is the process whose stdout is that log (its host and sandbox share its argv).
                let pids: Vec<u32> = support::pids_with_args(&["cove_driver.py"])
                    .into_iter()
                    .filter(|pid| std::fs::read_link(format!("/proc/{pid}/fd/1")).is_ok_and(|out| out == log))
                    .collect();
                assert!(!pids.is_empty(), "found no process writing {}", log.display());
                return pids;
            }
        }
        assert!(start.elapsed().as_secs() < 60, "no scorer printed {marker}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn killing_a_scorer_mid_mini_batch_still_scores_every_file_exactly_once() {
    killed_scorer_on(Backend::Local);
}

pub fn killed_scorer_on(backend: Backend) {
    let ws = backend.workspace();
    let p =
        Project::new(ws.dir.path(), "killme", KILLABLE_SCRIPT, "mini_batch_size: 2\nmax_concurrency_per_instance: 2")
            .on(backend);
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "killme", "--input", &p.inputs(10).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    for pid in scorer_that_printed(&ws, &name, "KILL-ME", backend) {
        support::kill(pid, "KILL");
    }
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let expected: Vec<String> = (0..10).map(|i| format!("file-{i:03}.txt")).collect();
    assert_eq!(ws.output_lines(&job), expected, "every file exactly once, in mini-batch order");
    let report = ws.log(&name, "sys/job_report/processed_mini-batches.csv");
    assert!(report.contains("killed by signal 9"), "{report}");
    assert_eq!(report.lines().filter(|l| l.starts_with("2,")).count(), 2, "mini-batch 2 ran twice:\n{report}");
}

#[test]
fn summary_only_writes_no_output_file_but_keeps_what_the_script_wrote() {
    let ws = Workspace::start();
    let script = "import os\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    for p in mini_batch:\n        with open(os.path.join(os.environ['AZUREML_BI_OUTPUT_PATH'], os.path.basename(p) + '.out'), 'w') as f:\n            f.write('seen')\n    return mini_batch\n";
    let p = Project::new(ws.dir.path(), "summary", script, "output_action: summary_only");
    p.deploy(&ws);
    let job = invoke(&ws, "summary", &p.inputs(3), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert!(job["output_file_name"].is_null());
    let dl = ws.dir.path().join("dl");
    ws.cove(&["job", "download", job["name"].as_str().unwrap(), "--download-path", &dl.display().to_string()]).ok();
    let mut got: Vec<String> = std::fs::read_dir(dl.join("named-outputs/score"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    got.sort();
    assert_eq!(got, vec!["file-000.txt.out", "file-001.txt.out", "file-002.txt.out"]);
}

const WORKER_KILLER_SCRIPT: &str = r#"
import os, time

def init():
    pass

def seen(marker):
    logs = os.path.dirname(os.readlink("/proc/self/fd/1"))
    return any(marker in open(os.path.join(logs, f)).read() for f in os.listdir(logs))

def run(mini_batch):
    if any(os.path.basename(p) == "file-001.txt" for p in mini_batch) and not seen("LOSE-ME"):
        print("LOSE-ME", flush=True)
        time.sleep(60)
    return [os.path.basename(p) for p in mini_batch]
"#;

#[test]
fn a_lost_worker_s_lease_expires_and_its_mini_batch_is_scored_by_another() {
    let ws = Workspace::start();
    let settings = "mini_batch_size: 1\nretry_settings:\n    timeout: 2";
    let p = Project::new(ws.dir.path(), "lostworker", WORKER_KILLER_SCRIPT, settings);
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "lostworker", "--input", &p.inputs(3).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let scorers = scorer_that_printed(&ws, &name, "LOSE-ME", Backend::Local);
    let workers = support::pids_with_args(&["worker", "--job", &name]);
    assert_eq!(workers.len(), 1, "one worker runs the job");
    support::kill(workers[0], "KILL");
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job), vec!["file-000.txt", "file-001.txt", "file-002.txt"]);
    let report = ws.log(&name, "sys/job_report/processed_mini-batches.csv");
    assert!(report.lines().any(|l| l.starts_with("1,1,lease_expired,")), "{report}");
    for pid in scorers {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the lost worker's scorer {pid} died with it");
    }
}

/// Result parts travel three ways, by size: small ones with the report into the state store, larger
/// ones with the report into Cove's object store, the largest streamed on their own first. The output
/// holds every mini-batch's lines, whole and in order, whichever way they came.
#[test]
fn result_parts_of_every_size_reach_the_output_whole_and_in_order() {
    let ws = Workspace::start();
    // The mini-batch of file n returns lines of about 3 KB, 200 KiB or 10 MiB in all, by n % 3.
    let script = r#"
def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        n = int(open(path).read())
        size = [3000, 200 * 1024, 10 * 1024 * 1024][n % 3]
        out.extend(f"{n}:{k}:" + "x" * 1000 for k in range(size // 1000))
    return out
"#;
    let p = Project::new(ws.dir.path(), "sizes", script, "mini_batch_size: 1\nmax_concurrency_per_instance: 2");
    p.deploy(&ws);
    let job = invoke(&ws, "sizes", &p.inputs(6), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let lines = ws.output_lines(&job);
    let mut expected = Vec::new();
    for n in 0..6usize {
        let size = [3000, 200 * 1024, 10 * 1024 * 1024][n % 3];
        expected.extend((0..size / 1000).map(|k| format!("{n}:{k}:{}", "x".repeat(1000))));
    }
    assert_eq!(lines.len(), expected.len());
    assert!(lines == expected, "the output differs from the mini-batches' lines in order");
    // Both ways of keeping a part while the job runs (the state store, objects) are seen in
    // `a_jobs_result_parts_are_deleted_once_it_ends`; here every part, whatever its size, is audited.
    let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
    let puts: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("PUT part"))
        .collect();
    assert_eq!(puts.len(), 6, "every part is audited once: {puts:?}");
}

/// A scoring script whose run() holds the mini-batch with `held` until `release` exists (failing with
/// `never` after 30 s), after running `first`; it returns `result`.
fn held_script(release: &std::path::Path, held: &str, never: &str, first: &str, result: &str) -> String {
    format!(
        r#"
import os, time

def init():
    pass

def run(mini_batch):
    {first}
    if any(os.path.basename(p) == {held:?} for p in mini_batch):
        deadline = time.time() + 30
        while not os.path.exists({release:?}):
            if time.time() > deadline:
                raise TimeoutError({never:?})
            time.sleep(0.02)
    return {result}
"#
    )
}

#[test]
fn a_slot_is_granted_its_next_mini_batch_while_it_works_on_one() {
    // A slot that waited for each report's answer before it could start the next mini-batch would sit
    // idle for a round trip per mini-batch. Here run() holds the first mini-batch until the test sees
    // the second one granted to the job's only slot; a slot that asked only once it was done would
    // never be granted it, and the first mini-batch would fail when its wait ran out.
    let ws = Workspace::start_with(&["--sandbox", "none"], &[]);
    let release = ws.dir.path().join("release");
    let script = held_script(
        &release,
        "file-000.txt",
        "the second mini-batch was never granted while the first ran",
        "",
        "[os.path.basename(p) for p in mini_batch]",
    );
    let p = Project::new(ws.dir.path(), "ahead", &script, "mini_batch_size: 1\nmax_concurrency_per_instance: 1\n");
    p.deploy(&ws);
    let input = p.inputs(6).display().to_string();
    let run = ws.cove(&["--json", "endpoint", "invoke", "ahead", "--input", &input]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let name = name.as_str();
    let start = std::time::Instant::now();
    loop {
        let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{name}"), None, &[]);
        let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
        let first = attempts.iter().find(|a| a["mini_batch"] == 0);
        assert!(
            first.is_none_or(|a| a["outcome"].is_null()),
            "mini-batch 0 ended before mini-batch 1 was granted: {job:#}"
        );
        if first.is_some() && attempts.iter().any(|a| a["mini_batch"] == 1) {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "mini-batch 1 was never granted: {job:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&release, "").unwrap();
    let job = ws.wait_job(name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let mut lines = ws.output_lines(&job);
    lines.sort();
    assert_eq!(lines, (0..6).map(|i| format!("file-{i:03}.txt")).collect::<Vec<_>>());
}

#[test]
fn the_output_is_assembled_in_order_while_the_job_runs() {
    // Each committed part joins the output's assembly once every mini-batch before it is final, so
    // finalizing has only to publish it. Here the last mini-batch is held until the test has seen the
    // assembly hold the others in mini-batch order (whichever slot committed them first), without
    // mini-batch 2, which fails for good; an assembly made only when the job finalizes never shows them.
    let ws = Workspace::start_with(&["--sandbox", "none"], &[]);
    let release = ws.dir.path().join("release");
    let script = held_script(
        &release,
        "file-005.txt",
        "mini-batch 5 was never released",
        "if any(os.path.basename(p) == \"file-002.txt\" for p in mini_batch):\n        raise ValueError(\"mini-batch 2 always fails\")",
        // Parts over 64 KiB: smaller ones wait in the state store for finalizing.
        "[f\"{os.path.basename(p)} row {i:05}\" for p in mini_batch for i in range(5000)]",
    );
    let p = Project::new(
        ws.dir.path(),
        "assembled",
        &script,
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nretry_settings:\n    max_retries: 1\n",
    );
    p.deploy(&ws);
    let input = p.inputs(6).display().to_string();
    let run = ws.cove(&["--json", "endpoint", "invoke", "assembled", "--input", &input]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let assembly = ws.path().join("state/assembly").join(&name);
    let rows = |files: &[u32]| -> Vec<String> {
        files.iter().flat_map(|f| (0..5000).map(move |i| format!("file-{f:03}.txt row {i:05}"))).collect()
    };
    let expected: String = rows(&[0, 1, 3, 4]).iter().map(|l| format!("{l}\n")).collect();
    let start = std::time::Instant::now();
    loop {
        let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{name}"), None, &[]);
        assert!(
            job["status"] == "Queued" || job["status"] == "Running",
            "the job ended before mini-batch 5 was released: {job:#}"
        );
        if std::fs::read_to_string(&assembly).is_ok_and(|held| held == expected) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the assembly never held mini-batches 0 to 4 in order (it holds {:?} bytes)\n{job:#}",
            std::fs::metadata(&assembly).map(|m| m.len()).ok()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&release, "").unwrap();
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert!(
        ws.output_lines(&job) == rows(&[0, 1, 3, 4, 5]),
        "the output is not mini-batches 0, 1, 3, 4 and 5 in order"
    );
    assert!(!assembly.exists(), "the assembly outlived its job");
}

#[test]
fn a_jobs_result_parts_are_deleted_once_it_ends() {
    // Only finalizing reads the parts; kept after the job they would pile up with every job. Mini-batch
    // 1's part is large (an object), the others small (kept in the state store); the last mini-batch is
    // held until the test has seen both kinds stored.
    let ws = Workspace::start_with(&["--sandbox", "none"], &[]);
    let release = ws.dir.path().join("release");
    let script = held_script(
        &release,
        "file-003.txt",
        "mini-batch 3 was never released",
        "",
        "[f\"{os.path.basename(p)} {i}\" for p in mini_batch for i in range(10000 if p.endswith(\"001.txt\") else 1)]",
    );
    let p = Project::new(ws.dir.path(), "collected", &script, "mini_batch_size: 1\nmax_concurrency_per_instance: 2\n");
    p.deploy(&ws);
    let input = p.inputs(4).display().to_string();
    let run = ws.cove(&["--json", "endpoint", "invoke", "collected", "--input", &input]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let objects = ws.path().join("state/objects/jobs").join(&name).join("parts");
    let objects_stored = || std::fs::read_dir(&objects).map(|d| d.count()).unwrap_or(0);
    let bodies_stored = || crate::support::part_bodies_kept(&ws.path(), &name);
    let start = std::time::Instant::now();
    while objects_stored() < 1 || bodies_stored() < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the parts were never stored: {} objects, {} in the state store",
            objects_stored(),
            bodies_stored()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&release, "").unwrap();
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let lines = ws.output_lines(&job);
    assert_eq!(lines.len(), 10_003, "the output holds every part");
    let start = std::time::Instant::now();
    while objects_stored() + bodies_stored() as usize > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the parts outlived their job: {} objects, {} in the state store",
            objects_stored(),
            bodies_stored()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(ws.output_lines(&job), lines, "the output outlived the parts it was assembled from");
}

const PRELOAD_SCRIPT: &str = r#"
import os
import sys
# Evaluated before the imports below run in this process.
SEEN = {name: name in sys.modules for name in ("colorsys", "helper")}
import colorsys
import helper

def init():
    pass

def run(mini_batch):
    return [f"{os.path.basename(p)} colorsys={SEEN['colorsys']} helper={SEEN['helper']} helper_runs={helper.RUNS}" for p in mini_batch]
"#;

#[test]
fn the_libraries_a_script_imports_are_imported_once_per_worker_and_its_own_modules_in_each_scorer() {
    // The scorer host imports what the script imports from outside its code folder, then forks the
    // scorers: each finds such a library already imported. The script's own modules are not the host's
    // to run: each scorer imports them itself, as it would alone. A deployment can turn the sharing off.
    let ws = Workspace::start();
    for (endpoint, extra, colorsys) in
        [("shared", "", true), ("alone", "environment_variables:\n    COVE_SCORER_PRELOAD: \"0\"\n", false)]
    {
        let settings = format!("mini_batch_size: 1\nmax_concurrency_per_instance: 2\n{extra}");
        let p = Project::new(ws.dir.path(), endpoint, PRELOAD_SCRIPT, &settings);
        std::fs::write(p.dir.join("code/helper.py"), "RUNS = 1\n").unwrap();
        p.deploy(&ws);
        let job = invoke(&ws, endpoint, &p.inputs(4), &[]);
        assert_eq!(job["status"], "Completed", "{job:#}");
        let expected: Vec<String> = (0..4)
            .map(|i| {
                let c = if colorsys { "True" } else { "False" };
                format!("file-{i:03}.txt colorsys={c} helper=False helper_runs=1")
            })
            .collect();
        assert_eq!(ws.output_lines(&job), expected, "{endpoint}");
        let processes: std::collections::BTreeSet<u64> =
            job["attempts"].as_array().unwrap().iter().map(|a| a["process"].as_u64().unwrap()).collect();
        assert_eq!(processes.len(), 2, "both scorers ran: {job:#}");
        // The host started at once: no scorer failed to start first.
        assert!(job["attempts"].as_array().unwrap().iter().all(|a| a["outcome"] == "succeeded"), "{job:#}");
    }
}

#[test]
fn a_scorer_killed_at_its_timeout_takes_no_other_scorer_of_its_host_with_it() {
    // Both slots' scorers are forked from one host: the one stopped at its timeout must end alone,
    // while the other goes on scoring in the same process, and its slot gets a fresh scorer.
    let ws = Workspace::start();
    let script = "import os, time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    if any(p.endswith('file-000.txt') for p in mini_batch):\n        time.sleep(60)\n    time.sleep(0.2)\n    return [f'{os.path.basename(p)} {os.getpid()}' for p in mini_batch]\n";
    let p = Project::new(
        ws.dir.path(),
        "onekilled",
        script,
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nretry_settings:\n    max_retries: 1\n    timeout: 1",
    );
    p.deploy(&ws);
    let job = invoke(&ws, "onekilled", &p.inputs(12), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["progress"]["batches_failed"], 1, "{job:#}");
    assert!(job["failed_batches"][0]["reason"].as_str().unwrap().contains("timed out"), "{job:#}");
    let pid_of: std::collections::HashMap<String, String> = ws
        .output_lines(&job)
        .iter()
        .map(|l| {
            let (file, pid) = l.split_once(' ').unwrap();
            (file.to_string(), pid.to_string())
        })
        .collect();
    assert_eq!(pid_of.len(), 11, "every mini-batch but the stopped one was scored: {pid_of:?}");
    let attempts = job["attempts"].as_array().unwrap();
    // One attempt at the stopped mini-batch (the reference's max_retries counts attempts, at least 1).
    let tries: Vec<&serde_json::Value> = attempts.iter().filter(|a| a["mini_batch"] == 0).collect();
    assert_eq!(tries.len(), 1, "{job:#}");
    let stopped = tries[0]["process"].as_u64().unwrap();
    let mut pids_by_process: std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> = Default::default();
    for a in attempts.iter().filter(|a| a["outcome"] == "succeeded") {
        let file = format!("file-{:03}.txt", a["mini_batch"].as_u64().unwrap());
        pids_by_process.entry(a["process"].as_u64().unwrap()).or_default().insert(pid_of[&file].clone());
    }
    let other = pids_by_process.iter().find(|(p, _)| **p != stopped).expect("the other slot scored");
    assert_eq!(other.1.len(), 1, "the other slot's scorer was never restarted: {pids_by_process:?}");
    let again = &pids_by_process[&stopped];
    assert!(!again.is_empty() && !again.contains(other.1.first().unwrap()), "{pids_by_process:?}");
}

/// A script that returns the names of its environment's variables, one line.
const ENV_NAMES_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    return [" ".join(sorted(os.environ)), "HOME=" + os.environ.get("HOME", "")]
"#;

/// The scorer's environment is the reference's variables, the deployment's own, `PATH`, and the host's
/// locale, time zone and numeric-library tuning: nothing else of the worker's environment reaches it.
#[test]
fn a_scorer_sees_no_variable_of_the_workers_environment() {
    let ws = Workspace::start_with(&[], &[("COVE_TEST_WORKER_ONLY", "leaked"), ("TZ", "UTC")]);
    let p = Project::new(
        ws.dir.path(),
        "envnames",
        ENV_NAMES_SCRIPT,
        "mini_batch_size: 1\nenvironment_variables:\n    GREETING: hello",
    );
    p.deploy(&ws);
    let job = invoke(&ws, "envnames", &p.inputs(1), &[]);
    assert_eq!(job["status"], "Completed", "{job:#}");
    let names: Vec<String> = ws.output_lines(&job)[0].split_whitespace().map(str::to_string).collect();
    assert!(names.contains(&"GREETING".to_string()) && names.contains(&"TZ".to_string()), "{names:?}");
    // HOME and PWD are the sandbox's own (its private home and its working folder), not the worker's.
    let home = ws.output_lines(&job)[1].clone();
    let worker_home = std::env::var("HOME").unwrap_or_default();
    assert!(home != format!("HOME={worker_home}") && !home.contains(ws.path().to_str().unwrap()), "{home}");
    let passed = ["PATH", "HOME", "PWD", "GREETING", "LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS"];
    let unexpected: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with("AZUREML_") && !n.starts_with("OPENBLAS_") && !passed.contains(&n.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "the scorer sees variables it should not: {unexpected:?} (all: {names:?})");
}
