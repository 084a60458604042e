//! Cove as a service an operator runs: its log lines (JSON for machines, plain text without colour
//! codes for people, with the job's fields), and its health and readiness answers.

use crate::support::{https, ControlPlane, Project, Workspace, LIST_SCRIPT};

/// Runs one job on a control plane that logs to `log` with `format` (none: the default for a service
/// whose stdout is not a terminal); returns the job's name.
fn run_one_job(root: &std::path::Path, log: &std::path::Path, format: Option<&str>) -> String {
    let env: Vec<(&str, &str)> = format.iter().map(|f| ("COVE_LOG_FORMAT", *f)).collect();
    let cp = ControlPlane::start_logging_with(&root.join("ws"), Some(log.into()), &env);
    let p = Project::new(root, "logged", LIST_SCRIPT, "mini_batch_size: 2");
    cp.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let run = cp.cove(&["--json", "endpoint", "invoke", "logged", "--input", &p.inputs(4).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let shown = cp.cove(&["job", "stream", &job]);
    assert!(shown.ok().stdout.contains("Completed"), "{}", shown.stdout);
    // The job's end is logged after its status is set: wait for the line rather than race it.
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(log).unwrap().contains("job ended") {
        assert!(start.elapsed().as_secs() < 30, "no `job ended` line:\n{}", std::fs::read_to_string(log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    job
}

/// A service's stderr is JSON lines by default when stdout is no terminal: every line parses, none
/// holds a colour code, and the job's lifecycle is there at info level with the job, its deployment
/// and its compute as fields. The worker logs the same way.
#[test]
fn the_control_plane_logs_the_job_lifecycle_as_json_lines() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("up.log");
    let job = run_one_job(dir.path(), &log, None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "a colour code in a log file:\n{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let of = |message: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["message"] == message && l["job"] == job.as_str()).collect()
    };
    for step in ["job accepted", "job planned", "job finalizing", "job ended"] {
        let found = of(step);
        assert_eq!(found.len(), 1, "one `{step}` line for {job}:\n{text}");
        let line = found[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(
            (&line["deployment"], &line["compute"], &line["endpoint"]),
            (&"blue".into(), &"local".into(), &"logged".into()),
            "{line}"
        );
    }
    assert_eq!(of("job ended")[0]["status"], "Completed");
    assert!(!of("starting workers").is_empty(), "{text}");
    assert!(!of("worker started").is_empty(), "{text}");
    let granted: u64 = of("leases granted").iter().map(|l| l["leases"].as_u64().unwrap()).sum();
    assert_eq!(granted, 2, "both mini-batches were leased once:\n{text}");

    let worker_log = dir.path().join("ws/compute/local").join(&job).join("local-0/worker.log");
    let worker = std::fs::read_to_string(&worker_log).unwrap();
    let started: Vec<serde_json::Value> = worker
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["message"] == "worker started")
        .collect();
    assert_eq!(started.len(), 1, "{worker}");
    assert_eq!((&started[0]["job"], &started[0]["node"]), (&job.as_str().into(), &"local-0".into()));
}

/// `--log-format text` (here through its variable, which the workers inherit) writes plain lines with
/// the fields after the message, and no colour codes when stderr is a file.
#[test]
fn text_logs_carry_the_fields_and_no_colour_codes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("up.log");
    let job = run_one_job(dir.path(), &log, Some("text"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "a colour code in a log file:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with('{')), "JSON lines in a text log:\n{text}");
    let accepted = text.lines().find(|l| l.contains("job accepted") && l.contains(&format!("job={job}")));
    let accepted = accepted.unwrap_or_else(|| panic!("no `job accepted` line:\n{text}"));
    assert!(
        accepted.contains(" INFO ") && accepted.contains("deployment=blue") && accepted.contains("compute=local"),
        "{accepted}"
    );
}

/// `/healthz` answers while the process runs; `/readyz` names every check and turns 503 while the state
/// store cannot take a write (another process holds its write lock), then 200 again. Neither needs a
/// token, and neither shows one.
#[test]
fn health_and_readiness_need_no_token_and_name_what_is_not_ready() {
    let ws = Workspace::start();
    let client = https(&ws.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let get = |path: &str| -> (u16, serde_json::Value) {
        rt.block_on(async {
            let r = client.get(format!("{}{path}", ws.url)).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(!text.contains(&ws.token()), "a token in {path}: {text}");
            (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {text}")))
        })
    };
    assert_eq!(get("/healthz"), (200, serde_json::json!({ "status": "ok" })));
    let (status, ready) = get("/readyz");
    assert_eq!((status, &ready["ready"]), (200, &true.into()), "{ready:#}");
    let names: Vec<&str> = ready["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for expected in ["state store", "certificates", "compute local"] {
        assert!(names.contains(&expected), "{expected} is not checked: {ready:#}");
    }

    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (status, ready) = get("/readyz");
    assert_eq!((status, &ready["ready"]), (503, &false.into()), "{ready:#}");
    let store = ready["checks"].as_array().unwrap().iter().find(|c| c["name"] == "state store").unwrap();
    assert_eq!(store["ready"], false, "{ready:#}");
    assert!(store["detail"].as_str().unwrap().contains("did not finish within 2 s"), "{store}");
    let others_ready =
        ready["checks"].as_array().unwrap().iter().filter(|c| c["name"] != "state store").all(|c| c["ready"] == true);
    assert!(others_ready, "only the store is not ready: {ready:#}");
    db.execute_batch("ROLLBACK").unwrap();
    let start = std::time::Instant::now();
    loop {
        let (status, ready) = get("/readyz");
        if status == 200 {
            assert_eq!(ready["ready"], true);
            break;
        }
        assert!(start.elapsed().as_secs() < 20, "still not ready once the lock is gone: {ready:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Scores each file after `secs` seconds: the name of the file, one line each.
fn slow_script(secs: u32) -> String {
    format!("import os, time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep({secs})\n    return [os.path.basename(p) for p in mini_batch]\n")
}

/// Starts a job of `files` one-file mini-batches, one attempt each (`max_retries: 1`, so an attempt a
/// stop charged would lose its file), and waits until two run.
fn start_slow_job(cp: &ControlPlane, root: &std::path::Path, secs: u32, files: usize) -> String {
    let settings =
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nretry_settings:\n    max_retries: 1\n    timeout: 300";
    let p = Project::new(root, "slow", &slow_script(secs), settings);
    cp.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    cp.cove(&["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let run = cp.cove(&["--json", "endpoint", "invoke", "slow", "--input", &p.inputs(files).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    loop {
        let shown = cp.cove(&["--json", "job", "show", &job]).ok().json();
        if shown["progress"]["batches_running"] == 2 {
            return job;
        }
        assert!(start.elapsed().as_secs() < 60, "two mini-batches never ran: {shown:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits for the job to end after a restart and returns it with its output's lines, sorted.
fn finished(cp: &ControlPlane, job: &str) -> (serde_json::Value, Vec<String>) {
    let shown = cp.cove(&["job", "stream", job]);
    assert!(shown.ok().stdout.contains("Completed"), "{}", shown.stdout);
    let json = cp.cove(&["--json", "job", "show", job]).ok().json();
    let out = cp.dir.join("datastores/workspaceblobstore/azureml").join(job).join("score/predictions.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    (json, lines)
}

fn outcomes(job: &serde_json::Value) -> Vec<String> {
    let mut o: Vec<String> =
        job["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap().to_string()).collect();
    o.sort();
    o
}

/// SIGTERM while mini-batches run: the control plane grants no more leases, waits for the workers to
/// report the two they hold, then stops; started again, it finishes the job with every file scored
/// exactly once and no attempt spent on the stop.
#[test]
fn a_planned_stop_lets_workers_finish_what_they_hold() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("up.log");
    let mut cp =
        ControlPlane::start_logging_with(&dir.path().join("ws"), Some(log.clone()), &[("COVE_SHUTDOWN_GRACE", "60")]);
    let job = start_slow_job(&cp, dir.path(), 3, 6);
    let stopping = std::time::Instant::now();
    assert!(cp.stop().success());
    assert!(stopping.elapsed().as_secs_f64() > 1.0, "the stop waited for the running mini-batches");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("stopping: workers drained") && said.contains("\"interrupted\":0"), "{said}");
    cp.restart();
    let (shown, lines) = finished(&cp, &job);
    let expected: Vec<String> = (0..6).map(|i| format!("file-{i:03}.txt")).collect();
    assert_eq!(lines, expected, "every file once");
    assert_eq!(outcomes(&shown), vec!["succeeded"; 6], "one attempt per mini-batch: {shown:#}");
}

/// A stop whose grace ends before the workers report ends their leases as interrupted: their
/// mini-batches go back to the queue without spending an attempt, so with one attempt allowed the job
/// still completes with every file once after the restart.
#[test]
fn leases_a_stop_cuts_short_spend_no_attempt() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cp = ControlPlane::start_logging_with(&dir.path().join("ws"), None, &[("COVE_SHUTDOWN_GRACE", "1")]);
    let job = start_slow_job(&cp, dir.path(), 6, 2);
    assert!(cp.stop().success());
    cp.restart();
    let (shown, lines) = finished(&cp, &job);
    assert_eq!(lines, vec!["file-000.txt", "file-001.txt"], "every file once");
    assert_eq!(outcomes(&shown), vec!["interrupted", "interrupted", "succeeded", "succeeded"], "{shown:#}");
    assert!(!shown["attempts"].to_string().contains("lease_expired"), "{shown:#}");
}

/// `/metrics` in the Prometheus text format: `promtool check metrics` finds nothing to lint, a real
/// Prometheus scrapes it over TLS (trusting only the workspace CA) with a reader's token and sees a
/// job's counters move, and the same scrape with a wrong token is refused.
#[test]
fn prometheus_scrapes_the_metrics_over_tls_with_a_token() {
    let ws = Workspace::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = Project::new(dir.path(), "watched", LIST_SCRIPT, "mini_batch_size: 1");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "watched", "--input", &p.inputs(3).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");

    let reader = ws.cove(&["token", "create", "--role", "reader"]).ok().stdout.trim().to_string();
    let client = https(&ws.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scrape = |token: &str| -> (u16, String) {
        rt.block_on(async {
            let r = client.get(format!("{}/metrics", ws.url)).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, exposition) = scrape(&reader);
    assert_eq!(status, 200, "{exposition}");
    assert_eq!(scrape("not-a-token").0, 401);
    // The exposition covers every endpoint's deployments: a token scoped to one endpoint reads none of it.
    let scoped =
        ws.cove(&["token", "create", "--role", "reader", "--endpoint-name", "watched"]).ok().stdout.trim().to_string();
    let (status, refused) = scrape(&scoped);
    assert_eq!(status, 403, "{refused}");
    assert!(refused.contains("endpoint-scoped"), "{refused}");
    for line in [
        "cove_jobs{status=\"Completed\"} 1",
        "cove_minibatch_attempts_total{compute=\"local\",outcome=\"succeeded\"} 3",
        "cove_minibatch_duration_seconds_count{compute=\"local\"} 3",
        "cove_refusals_total{reason=\"unauthenticated\"}",
        "cove_http_requests_total{method=\"POST\",route=\"/endpoints/{endpoint}/jobs\",status=\"201\"} 1",
    ] {
        assert!(exposition.contains(line), "{line} missing:\n{exposition}");
    }
    assert!(!exposition.contains(job["name"].as_str().unwrap()), "a job's name is no label:\n{exposition}");
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/setup)");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), exposition.as_bytes()).unwrap();
    let linted = lint.wait_with_output().unwrap();
    assert!(
        linted.status.success() && linted.stdout.is_empty() && linted.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    // A real Prometheus, scraping over TLS with the workspace CA: one job with the reader's token, one
    // with a wrong one.
    let port = ws.url.rsplit(':').next().unwrap().to_string();
    std::fs::write(dir.path().join("token"), &reader).unwrap();
    std::fs::write(dir.path().join("wrong"), "not-a-token").unwrap();
    let ca = ws.path().join("tls/trust.pem");
    let scrape_config = |name: &str, token_file: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    metrics_path: /metrics\n    tls_config: {{ca_file: {}}}\n    authorization: {{type: Bearer, credentials_file: {}}}\n    static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]\n",
            ca.display(),
            dir.path().join(token_file).display()
        )
    };
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}{}",
        scrape_config("cove", "token"),
        scrape_config("intruder", "wrong")
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let checked = std::process::Command::new("promtool").args(["check", "config"]).arg(&config_file).output().unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let log = dir.path().join("prometheus.log");
    let prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _stops = StopsOnDrop(prometheus);
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    let api = loop {
        let text = said();
        if let Some(at) = text.lines().find_map(|l| l.split("msg=\"Listening on\" address=").nth(1)) {
            break format!("http://{}", at.split_whitespace().next().unwrap());
        }
        assert!(start.elapsed().as_secs() < 20, "Prometheus did not listen:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let query = |q: &str| -> serde_json::Value {
        let url = format!("{api}/api/v1/query?query={}", cove_api::encode(q));
        rt.block_on(async { crate::support::plain_http().get(url).send().await.unwrap().json().await.unwrap() })
    };
    let value = |q: &str| -> Option<String> {
        query(q)["data"]["result"]
            .as_array()
            .and_then(|r| r.first().cloned())
            .map(|s| s["value"][1].as_str().unwrap().to_string())
    };
    let start = std::time::Instant::now();
    loop {
        let up = (value("up{job=\"cove\"}"), value("up{job=\"intruder\"}"));
        let attempts = value("sum(cove_minibatch_attempts_total{job=\"cove\",outcome=\"succeeded\"})");
        if up == (Some("1".into()), Some("0".into())) && attempts.as_deref() == Some("3") {
            break;
        }
        assert!(start.elapsed().as_secs() < 40, "Prometheus did not see Cove: {up:?} {attempts:?}\n{}", said());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A process the test started, stopped by its PID when the test ends, passing or not.
struct StopsOnDrop(std::process::Child);

impl Drop for StopsOnDrop {
    fn drop(&mut self) {
        crate::support::kill(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

/// The systemd unit in `deploy/` is one systemd accepts as it is (`systemd-analyze verify`, pointed at
/// the binary the tests built, reports nothing at all: unknown keys and bad values are only warnings
/// there), and systemd waits longer before it kills Cove than Cove's own grace for a planned stop.
#[test]
fn the_service_unit_verifies_and_outwaits_the_shutdown_grace() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("deploy/cove.service")).unwrap();
    let setting = |key: &str| -> String {
        let found = unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")));
        found.unwrap_or_else(|| panic!("no {key}= in the unit")).to_string()
    };
    let grace: u64 = setting("Environment=COVE_SHUTDOWN_GRACE").parse().unwrap();
    let stop_timeout: u64 = setting("TimeoutStopSec").parse().unwrap();
    assert!(stop_timeout >= grace + 10, "TimeoutStopSec={stop_timeout} leaves no time after the grace ({grace} s)");
    assert_eq!(setting("KillMode"), "mixed", "SIGTERM goes to the control plane, which stops its workers itself");

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let here = unit.replace("/usr/local/bin/cove", crate::support::COVE);
    assert_ne!(here, unit, "the unit runs /usr/local/bin/cove");
    let copy = dir.path().join("cove.service");
    std::fs::write(&copy, here).unwrap();
    let verified =
        std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let said = String::from_utf8_lossy(&verified.stderr).to_string() + &String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // The check is real: a misspelt key is reported.
    std::fs::write(&copy, std::fs::read_to_string(&copy).unwrap().replace("TimeoutStopSec=", "TimeoutStpSec="))
        .unwrap();
    let misspelt =
        std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    assert!(String::from_utf8_lossy(&misspelt.stderr).contains("Unknown key"), "{misspelt:?}");
}

/// Job history: `cove job list` filters by status and creation time and takes the newest
/// `--max-results`; the API pages with `limit` and continues with `before=<the page's last job>`,
/// every job once, newest first.
#[test]
fn job_history_filters_and_pages() {
    let ws = Workspace::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = Project::new(dir.path(), "history", LIST_SCRIPT, "");
    p.deploy(&ws);
    let inputs = p.inputs(1).display().to_string();
    let mut jobs: Vec<serde_json::Value> = Vec::new();
    for _ in 0..5 {
        let run = ws.cove(&["--json", "endpoint", "invoke", "history", "--input", &inputs]);
        jobs.push(ws.wait_job(run.ok().json()["name"].as_str().unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let names = |list: &serde_json::Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap().to_string()).collect()
    };
    let newest_first: Vec<String> = jobs.iter().rev().map(|j| j["name"].as_str().unwrap().to_string()).collect();

    let two = ws.cove(&["--json", "job", "list", "--max-results", "2"]).ok().json();
    assert_eq!(names(&two), newest_first[..2]);
    let done = ws.cove(&["--json", "job", "list", "--status", "completed"]).ok().json();
    assert_eq!(names(&done), newest_first);
    let failed = ws.cove(&["--json", "job", "list", "--status", "Failed"]).ok().json();
    assert_eq!(names(&failed), Vec::<String>::new());
    ws.cove(&["job", "list", "--status", "Finished"]).fails_with(2, "status: `Finished` is not a job status");
    let since = jobs[3]["created_at"].as_str().unwrap();
    let recent = ws.cove(&["--json", "job", "list", "--since", since]).ok().json();
    assert_eq!(names(&recent), newest_first[..2], "created at or after {since}");

    let mut paged: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let path = match paged.last() {
            Some(last) => format!("/api/v1/jobs?limit=2&before={last}"),
            None => "/api/v1/jobs?limit=2".to_string(),
        };
        let (status, page) = ws.http("GET", &path, None, &[]);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let got = names(&page);
        let last_page = got.len() < 2;
        paged.extend(got);
        if last_page {
            break;
        }
    }
    assert_eq!((paged, pages), (newest_first, 3));
    let (status, body) = ws.http("GET", "/api/v1/jobs?before=no-such-job", None, &[]);
    assert_eq!(status, 400, "{body}");
}

/// A workspace a newer Cove wrote is refused by this one at start, with the reason, and left as it was.
#[test]
fn a_newer_workspace_is_refused_and_left_alone() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ws = dir.path().join("ws");
    let mut cp = ControlPlane::start(&ws);
    assert!(cp.stop().success());
    let db = rusqlite::Connection::open(ws.join("state/cove.db")).unwrap();
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert!(version > 0, "the store has a schema version");
    db.pragma_update(None, "user_version", version + 1).unwrap();
    drop(db);
    let out = std::process::Command::new(crate::support::COVE)
        .args(["up", "--dir"])
        .arg(&ws)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a newer store must not be served: {said}");
    assert!(
        said.contains(&format!("schema version {}, newer than this Cove knows ({version})", version + 1)),
        "{said}"
    );
    let db = rusqlite::Connection::open(ws.join("state/cove.db")).unwrap();
    let after: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(after, version + 1, "left as it was");
}

/// While a planned stop waits for workers, `/readyz` says so (503, `serving` not ready), so a load
/// balancer sends invocations elsewhere.
#[test]
fn readiness_turns_off_while_a_stop_drains() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cp = ControlPlane::start_logging_with(&dir.path().join("ws"), None, &[("COVE_SHUTDOWN_GRACE", "60")]);
    let job = start_slow_job(&cp, dir.path(), 4, 2);
    let client = https(&cp.dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ready = || -> (u16, serde_json::Value) {
        rt.block_on(async {
            let r = client.get(format!("https://127.0.0.1:{}/readyz", cp.port)).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    assert_eq!(ready().0, 200);
    crate::support::kill(cp.pid(), "TERM");
    let start = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = ready();
        if status == 503 {
            break (status, body);
        }
        assert!(start.elapsed().as_secs() < 3, "still ready while stopping: {body:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let serving = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "serving").unwrap();
    assert_eq!((status, &serving["ready"]), (503, &false.into()), "{body:#}");
    assert!(cp.stop().success());
    cp.restart();
    let (shown, lines) = finished(&cp, &job);
    assert_eq!(lines, vec!["file-000.txt", "file-001.txt"]);
    assert_eq!(outcomes(&shown), vec!["succeeded"; 2], "{shown:#}");
}

/// `cove job logs` prints what the scoring script printed, file by file; `--follow`, started while the
/// job runs, prints each line once as the workers upload it and ends when the job does.
#[test]
fn job_logs_print_and_follow_what_the_script_printed() {
    let ws = Workspace::start();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = "import os, time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    for p in mini_batch:\n        print('scored ' + os.path.basename(p), flush=True)\n    time.sleep(1)\n    return [os.path.basename(p) for p in mini_batch]\n";
    let p = Project::new(dir.path(), "chatty", script, "mini_batch_size: 1\nmax_concurrency_per_instance: 1");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "chatty", "--input", &p.inputs(3).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let followed = ws.cove(&["job", "logs", &job, "--follow"]);
    let shown = ws.cove(&["--json", "job", "show", &job]).ok().json();
    assert_eq!(shown["status"], "Completed", "--follow ends with the job: {shown:#}");
    let text = followed.ok().stdout.clone();
    for i in 0..3 {
        let line = format!("scored file-{i:03}.txt");
        assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{line} once:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("==> user/stdout/local-0/process000")).count(), 1, "{text}");
    let again = ws.cove(&["job", "logs", &job]);
    assert_eq!(again.ok().stdout, text, "the same logs, printed once the job ended");
}
