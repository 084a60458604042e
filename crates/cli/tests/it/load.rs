//! A bounded load test: hundreds of jobs queued across several endpoints while clients list jobs and
//! follow their progress. No request fails, no job is lost or duplicated, jobs start in the order they
//! were queued (the local cluster runs `max_instances` at a time), and the API keeps answering. What it
//! measured (jobs/s, API latency percentiles) is written as a benchmark result, never asserted.
//! `COVE_LOAD_JOBS=1000 cargo nextest run -E 'test(load)'` runs a bigger one.

use crate::support::{Project, Workspace};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOOP: &str = "def init():\n    pass\n\ndef run(mini_batch):\n    return mini_batch\n";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn load_hundreds_of_queued_jobs_lose_nothing_and_start_in_order() {
    let jobs: usize = std::env::var("COVE_LOAD_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(120);
    let ws = Arc::new(Workspace::start());
    let endpoints = ["load-a", "load-b", "load-c"];
    let mut inputs = Vec::new();
    for e in endpoints {
        let p = Project::new(ws.dir.path(), e, NOOP, "mini_batch_size: 1");
        p.deploy(&ws);
        let run = ws.cove(&["--json", "endpoint", "invoke", e, "--input", &p.inputs(1).display().to_string()]);
        let first = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
        inputs.push(first["input"]["uri"].as_str().unwrap().to_string());
    }
    let before = ws.job_count();

    // Readers list jobs and follow one while the jobs are submitted and run.
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (ws, stop, latencies, errors) = (ws.clone(), stop.clone(), latencies.clone(), errors.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (status, body) = ws.http("GET", "/api/v1/jobs?limit=50", None, &[]);
                    latencies.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
                    if status != 200 {
                        errors.lock().unwrap().push(format!("list: {status} {body}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut names = Vec::new();
    for i in 0..jobs {
        let e = endpoints[i % endpoints.len()];
        let body = serde_json::json!({"input": {"uri": inputs[i % endpoints.len()], "type": "uri_folder"}});
        let t = Instant::now();
        let (status, job) = ws.http(
            "POST",
            &format!("/endpoints/{e}/jobs"),
            Some(body),
            &[("repeatability-request-id", &format!("load-{i}"))],
        );
        latencies.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 201, "{job}");
        names.push(job["name"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut finished: Vec<serde_json::Value> = Vec::new();
    for name in &names {
        loop {
            let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{name}"), None, &[]);
            if ["Completed", "Failed", "Canceled"].contains(&job["status"].as_str().unwrap_or("")) {
                finished.push(job);
                break;
            }
            assert!(Instant::now() < deadline, "the load did not drain");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());
    assert!(finished.iter().all(|j| j["status"] == "Completed"), "every job completes");
    assert_eq!(ws.job_count(), before + jobs, "no job lost or duplicated");
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), jobs);

    // Jobs start in submission order, give or take the cluster's capacity (8 jobs run at once).
    let db = started_order(&ws, &names);
    for i in 0..db.len() {
        for j in (i + 8)..db.len() {
            assert!(db[i] <= db[j], "job {j} started before job {i}, queued 8 or more places earlier");
        }
    }

    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let report = format!(
        "# Load\n\n{jobs} one-file jobs over {} endpoints on the local cluster (8 workers at a time), 2 readers listing jobs.\n\n\
         | measure | value |\n| --- | --- |\n| jobs/s | {:.1} |\n| API p50 ms | {:.1} |\n| API p95 ms | {:.1} |\n| API p99 ms | {:.1} |\n| API requests | {} |\n",
        endpoints.len(),
        jobs as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat.len()
    );
    println!("{report}");
    let out = std::env::var("COVE_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("load.md"), report).unwrap();
}

/// When each job started (its first lease), in submission order, from `cove job show`'s attempts.
fn started_order(ws: &Workspace, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{n}"), None, &[]);
            job["attempts"][0]["started_at"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

#[test]
fn load_a_job_canceled_while_queued_for_capacity_never_runs_and_publishes_nothing() {
    let ws = Workspace::start();
    let slow =
        "import time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep(30)\n    return mini_batch\n";
    let p = Project::new(ws.dir.path(), "busy", slow, "retry_settings:\n    timeout: 60");
    p.deploy(&ws);
    let data = p.inputs(1).display().to_string();
    // Eight jobs fill the local cluster; the ninth waits for capacity.
    let mut names = Vec::new();
    for _ in 0..9 {
        let run = ws.cove(&["--json", "endpoint", "invoke", "busy", "--input", &data]);
        names.push(run.ok().json()["name"].as_str().unwrap().to_string());
    }
    let last = names.last().unwrap().clone();
    let start = Instant::now();
    loop {
        let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{last}"), None, &[]);
        if job["status"] == "Queued" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{job:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (_, job) = ws.http("GET", &format!("/api/v1/jobs/{last}"), None, &[]);
    assert_eq!(job["status"], "Queued", "the ninth job waits while eight run: {job:#}");
    ws.cove(&["job", "cancel", &last]).ok();
    let job = ws.wait_job(&last);
    assert_eq!(job["status"], "Canceled");
    assert!(job["attempts"].as_array().unwrap().is_empty(), "it never ran");
    assert!(!ws.path().join("datastores/workspaceblobstore/azureml").join(&last).exists(), "nothing is published");
    for name in &names[..8] {
        ws.cove(&["job", "cancel", name]).ok();
    }
    for name in &names[..8] {
        assert_eq!(ws.wait_job(name)["status"], "Canceled");
        assert!(
            !ws.path().join("datastores/workspaceblobstore/azureml").join(name).exists(),
            "a canceled job publishes nothing"
        );
    }
    let start = Instant::now();
    while !crate::support::pids_with_args(&["worker"]).iter().all(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        !names.iter().any(|n| String::from_utf8_lossy(&cmd).contains(n.as_str()))
    }) {
        assert!(start.elapsed() < Duration::from_secs(20), "workers of canceled jobs linger");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn load_a_job_canceled_as_soon_as_it_is_submitted_ends_canceled_with_nothing_published() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "early", NOOP, "mini_batch_size: 1");
    p.deploy(&ws);
    // A big input written straight into the datastore, so planning takes a moment.
    let folder = ws.path().join("datastores/workspaceblobstore/big");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..3000 {
        std::fs::write(folder.join(format!("f{i:05}.txt")), "x").unwrap();
    }
    let body = serde_json::json!({"input": {"uri": "azureml://datastores/workspaceblobstore/paths/big", "type": "uri_folder"}});
    let (status, job) = ws.http("POST", "/endpoints/early/jobs", Some(body), &[]);
    assert_eq!(status, 201, "{job}");
    let name = job["name"].as_str().unwrap().to_string();
    let (status, canceled) = ws.http("POST", &format!("/api/v1/jobs/{name}/cancel"), Some(serde_json::json!({})), &[]);
    assert_eq!(status, 200, "{canceled}");
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Canceled", "{job:#}");
    std::thread::sleep(Duration::from_secs(1));
    let (_, again) = ws.http("GET", &format!("/api/v1/jobs/{name}"), None, &[]);
    assert_eq!(again["status"], "Canceled", "a canceled job stays canceled (planning does not revive it)");
    assert!(again["progress"]["batches_succeeded"].as_u64().unwrap() < 3000, "it did not run to the end");
    assert!(!ws.path().join("datastores/workspaceblobstore/azureml").join(&name).exists(), "nothing is published");
}
