//! Invocation over the CLI and the scoring URI: routing, idempotency, the Azure ML body, and bad
//! invocations that must fail clearly and create nothing.

use crate::support::{Project, Workspace, LIST_SCRIPT};
use serde_json::json;

#[test]
fn bad_invocations_get_clear_errors_and_create_no_job() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "inv", LIST_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml")]).ok();
    let data = p.inputs(2).display().to_string();

    ws.cove(&["endpoint", "invoke", "inv", "--input", &data]).fails_with(2, "No valid deployments to route to");
    ws.cove(&["endpoint", "invoke", "inv", "--input", &data, "-d", "green"])
        .fails_with(5, "deployment `green` does not exist");
    ws.cove(&["endpoint", "invoke", "nope", "--input", &data]).fails_with(5, "endpoint `nope` does not exist");
    ws.cove(&["endpoint", "invoke", "inv", "-d", "blue", "--input", "/no/such/folder"])
        .fails_with(2, "--input: `/no/such/folder` does not exist");
    ws.cove(&[
        "endpoint",
        "invoke",
        "inv",
        "-d",
        "blue",
        "--input",
        "azureml://datastores/workspaceblobstore/paths/../../state",
    ])
    .fails_with(2, "not allowed (paths cannot leave their datastore)");
    ws.cove(&[
        "endpoint",
        "invoke",
        "inv",
        "-d",
        "blue",
        "--input",
        "azureml://datastores/workspaceblobstore/paths/missing",
    ])
    .fails_with(2, "is not a folder holding files");
    ws.cove(&["endpoint", "invoke", "inv", "-d", "blue", "--input", "azureml://datastores/secret/paths/x"])
        .fails_with(2, "datastore `secret` does not exist");
    ws.cove(&["endpoint", "invoke", "inv", "-d", "blue", "--input", &data, "--set", "mini_batch_size=0"])
        .fails_with(2, "mini_batch_size");
    ws.cove(&["endpoint", "invoke", "inv", "-d", "blue", "--input", &data, "--set", "mini_bach_size=3"])
        .fails_with(2, "mini_batch_size");
    ws.cove(&["endpoint", "invoke", "inv", "-d", "blue", "--input", "file:///etc/passwd"])
        .fails_with(2, "is not a datastore URI");
    let (status, body) =
        ws.http("POST", "/endpoints/inv/jobs", Some(json!({"input": 5})), &[("azureml-model-deployment", "blue")]);
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_argument")), "{body}");
    let (status, _) = ws.http_as("wrong-token", "POST", "/endpoints/inv/jobs", Some(json!({})), &[]);
    assert_eq!(status, 401);
    assert_eq!(ws.job_count(), 0, "no bad invocation may create a job");
}

#[test]
fn the_scoring_uri_routes_by_header_honours_idempotency_keys_and_takes_the_azure_body() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "http", LIST_SCRIPT, "mini_batch_size: 5");
    p.deploy(&ws);
    let data = p.inputs(4);
    // Put the inputs in the datastore through a first CLI invocation, then reuse its input URI.
    let first = ws.cove(&["--json", "endpoint", "invoke", "http", "--input", &data.display().to_string()]);
    first.ok();
    let input_uri = first.json()["input"]["uri"].as_str().unwrap().to_string();

    let azure = json!({"properties": {
        "InputData": {"UriFolder": {"JobInputType": "UriFolder", "Uri": input_uri}},
        "miniBatchSize": 2,
        "OutputFileName": "scores.csv"
    }});
    let headers = [("azureml-model-deployment", "blue"), ("repeatability_request-id", "key-1")];
    let (s1, job1) = ws.http("POST", "/endpoints/http/jobs", Some(azure.clone()), &headers);
    let (s2, job2) = ws.http("POST", "/endpoints/http/jobs", Some(azure), &headers);
    assert_eq!((s1, s2), (201, 200), "{job1} {job2}");
    assert_eq!(job1["name"], job2["name"], "a retried POST with the same key returns the same job");
    assert_eq!(job1["settings"]["mini_batch_size"], 2);
    assert_eq!(job1["output_file_name"], "scores.csv");
    let done = ws.wait_job(job1["name"].as_str().unwrap());
    assert_eq!(done["status"], "Completed");
    assert_eq!(done["progress"]["batches_total"], 2);
    assert_eq!(ws.output_lines(&done).len(), 4);
    assert_eq!(ws.job_count(), 2);

    // The output location must be unique: invoking into an existing output is refused.
    let existing = done["output_uri"].as_str().unwrap();
    let (status, body) = ws.http(
        "POST",
        "/endpoints/http/jobs",
        Some(json!({"input": {"uri": input_uri, "type": "uri_folder"}, "output_path": existing, "overrides": {"output_file_name": "scores.csv"}})),
        &[("azureml-model-deployment", "blue")],
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("already holds files; an output location must be new"),
        "{body}"
    );
}

#[test]
fn jobs_are_listed_shown_streamed_downloaded_and_canceled() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "life", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let data = p.inputs(5).display().to_string();
    let run = ws.cove(&["endpoint", "invoke", "life", "--input", &data, "--stream"]);
    run.ok();
    assert!(run.stdout.contains("Status:       Completed"), "{}", run.stdout);
    assert!(run.stderr.contains("5 items succeeded"), "{}", run.stderr);
    let list = ws.cove(&["job", "list", "--endpoint-name", "life"]);
    list.ok();
    assert!(list.stdout.starts_with("NAME"), "{}", list.stdout);
    assert!(list.stdout.contains("Completed"));
    let name = list.stdout.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let dl = ws.dir.path().join("download");
    ws.cove(&["job", "download", &name, "--all", "--download-path", &dl.display().to_string()]).ok();
    let predictions = std::fs::read_to_string(dl.join("named-outputs/score/predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 5);
    assert!(dl.join("artifacts/logs/job_result.txt").is_file());
    assert!(dl.join("artifacts/logs/sys/job_report/processed_mini-batches.csv").is_file());
    ws.cove(&["job", "list", "--deployment-name", "green"]).ok();

    // Cancel a job that cannot finish: its scorer sleeps far longer than the test.
    let q = Project::new(ws.dir.path(), "slowpoke", crate::support::SLEEPER, "retry_settings:\n    timeout: 600");
    q.deploy(&ws);
    let started = ws.cove(&["--json", "endpoint", "invoke", "slowpoke", "--input", &q.inputs(1).display().to_string()]);
    started.ok();
    let slow_name = started.json()["name"].as_str().unwrap().to_string();
    ws.cove(&["job", "cancel", &slow_name]).ok();
    let job = ws.wait_job(&slow_name);
    assert_eq!(job["status"], "Canceled");
    ws.cove(&["job", "stream", &slow_name]).fails_with(1, "");
    ws.cove(&["job", "show", "batchjob-nope"]).fails_with(5, "does not exist");
}

/// A caller following a job asks with the status it last saw and a wait: the answer comes when the job
/// leaves that status (here: canceled), not at the end of the wait, and at the end of the wait when
/// nothing changed.
#[test]
fn a_job_read_with_a_wait_is_answered_when_its_status_changes() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "waiting", crate::support::SLEEPER, "retry_settings:\n    timeout: 600");
    p.deploy(&ws);
    let started = ws.cove(&["--json", "endpoint", "invoke", "waiting", "--input", &p.inputs(1).display().to_string()]);
    started.ok();
    let name = started.json()["name"].as_str().unwrap().to_string();
    let path = |status: &str, wait: u64| format!("/api/v1/jobs/{name}?attempts=false&wait_ms={wait}&status={status}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ws.http("GET", &format!("/api/v1/jobs/{name}"), None, &[]).1["status"] != "Running" {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Nothing changes: the answer comes at the end of the wait, with the same status.
    let t = std::time::Instant::now();
    let (code, job) = ws.http("GET", &path("Running", 400), None, &[]);
    assert_eq!((code, job["status"].as_str()), (200, Some("Running")), "{job}");
    assert!(t.elapsed() >= std::time::Duration::from_millis(400), "answered after {:?}", t.elapsed());
    // Another status than the job's: answered at once.
    let (code, job) = ws.http("GET", &path("Queued", 20_000), None, &[]);
    assert_eq!((code, job["status"].as_str()), (200, Some("Running")), "{job}");
    // A cancel while a caller waits: the caller hears of it then, long before its wait ends.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = std::time::Instant::now();
            let (code, job) = ws.http("GET", &path("Running", 20_000), None, &[]);
            (code, job, t.elapsed())
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        ws.cove(&["job", "cancel", &name]).ok();
        let (code, job, took) = waiter.join().unwrap();
        assert_eq!(code, 200, "{job}");
        assert_ne!(job["status"], "Running", "{job}");
        assert!(took < std::time::Duration::from_secs(10), "answered after {took:?}, not when the job was canceled");
    });
}
