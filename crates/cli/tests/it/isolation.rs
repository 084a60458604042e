//! The proof of "private by default", on a real multi-host network built from namespaces: the
//! workspace on a private network, a jump host on a peered network, a worker host on the compute
//! network, and an outside host. The router forwards everything, so what refuses is Cove itself.
//! The test prints the reachability table it proved.

use crate::support::{Project, Run, COVE, LIST_SCRIPT};
use crate::testbed::Testbed;
use std::process::Stdio;

const API: &str = "198.18.1.10:8470";

fn config() -> String {
    format!(
        "public_network_access: disabled
networks:
  - name: workspace
    address_space: [198.18.1.0/24]
  - name: jump
    address_space: [198.18.2.0/24]
  - name: compute
    address_space: [198.18.4.0/24]
peerings:
  - [workspace, jump]
  - [workspace, compute]
private_endpoints:
  - name: api
    service: api
    address: {API}
    network: workspace
computes:
  - name: cluster
    network: compute
    kind: external
"
    )
}

/// Runs the CLI on `host` against the workspace's private endpoint with `token`.
fn cove_on(bed: &Testbed, host: &str, token: &str, args: &[&str]) -> Run {
    bed.command(host, COVE)
        .args(args)
        .env("COVE_URL", format!("http://{API}"))
        .env("COVE_TOKEN", token)
        .env_remove("COVE_WORKSPACE")
        .env("CI", "1")
        .output()
        .unwrap()
        .into()
}

/// Posts to the invocation URL from `host` with a raw HTTP client; returns the status or the error.
fn invoke_raw(bed: &Testbed, host: &str, token: &str, endpoint: &str) -> String {
    let code = format!(
        "import http.client, sys\ntry:\n    c = http.client.HTTPConnection('198.18.1.10', 8470, timeout=5)\n    c.request('POST', '/endpoints/{endpoint}/jobs', body='{{}}', headers={{'Authorization': 'Bearer {token}', 'Content-Type': 'application/json'}})\n    print(c.getresponse().status)\nexcept Exception as e:\n    print(type(e).__name__)\n"
    );
    let out = bed.command(host, "/usr/bin/python3").args(["-c", &code]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_private_workspace_serves_its_networks_and_refuses_everyone_else() {
    let mut bed = Testbed::build(
        "iso",
        &[
            ("ws", "198.18.1.10/24"),
            ("jump", "198.18.2.10/24"),
            ("compute", "198.18.4.10/24"),
            ("outside", "198.19.0.10/24"),
        ],
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config_file = dir.path().join("network.yml");
    std::fs::write(&config_file, config()).unwrap();
    let ws_dir = dir.path().join("ws");
    let mut up = bed.command("ws", COVE);
    up.args(["up", "--dir"]).arg(&ws_dir).arg("--config").arg(&config_file).stderr(Stdio::inherit());
    bed.spawn(up);
    let start = std::time::Instant::now();
    while !ws_dir.join("owner.token").exists() || !ws_dir.join("state/url").exists() {
        assert!(start.elapsed().as_secs() < 30, "cove up did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let owner = std::fs::read_to_string(ws_dir.join("owner.token")).unwrap().trim().to_string();
    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut record =
        |source: &str, service: &str, result: &str| table.push((source.into(), service.into(), result.into()));

    // The jump host (peered) manages the workspace through the API's private endpoint.
    let p = Project::new(dir.path(), "proof", LIST_SCRIPT, "mini_batch_size: 2");
    std::fs::write(
        p.dir.join("deployment.yml"),
        std::fs::read_to_string(p.dir.join("deployment.yml")).unwrap().replace("azureml:local", "azureml:cluster"),
    )
    .unwrap();
    let waited = {
        let start = std::time::Instant::now();
        loop {
            let r = cove_on(&bed, "jump", &owner, &["workspace", "show"]);
            if r.code == 0 || start.elapsed().as_secs() > 20 {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    waited.ok();
    cove_on(&bed, "jump", &owner, &["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    cove_on(&bed, "jump", &owner, &["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let shown = cove_on(&bed, "jump", &owner, &["endpoint", "show", "proof"]);
    assert!(
        shown.ok().stdout.contains(&format!("Scoring URI:        http://{API}/endpoints/proof/jobs")),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("private: reachable only from networks compute, jump, workspace"),
        "{}",
        shown.stdout
    );
    record("jump (198.18.2.10, peered)", "API", "allowed");

    // The worker host dials out with the cluster's credential; it needs no inbound access.
    let worker_token = cove_on(&bed, "jump", &owner, &["compute", "token", "cluster"]).ok().stdout.trim().to_string();
    let mut worker = bed.command("compute", COVE);
    worker
        .args([
            "--url",
            &format!("http://{API}"),
            "worker",
            "--worker-token",
            &worker_token,
            "--node",
            "compute-0",
            "--concurrency",
            "2",
            "--work-dir",
        ])
        .arg(dir.path().join("worker"));
    bed.spawn(worker);

    let data = p.inputs(5).display().to_string();
    let run = cove_on(&bed, "jump", &owner, &["endpoint", "invoke", "proof", "--input", &data, "--stream"]);
    assert!(run.ok().stdout.contains("Completed"), "{}", run.stdout);
    record("jump (198.18.2.10, peered)", "invocation URL", "allowed");
    record("compute (198.18.4.10)", "worker protocol", "allowed");
    let jobs = cove_on(&bed, "jump", &owner, &["--json", "job", "list"]).ok().json();
    let job = jobs[0]["name"].as_str().unwrap().to_string();
    let download = dir.path().join("download");
    cove_on(&bed, "jump", &owner, &["job", "download", &job, "--download-path", &download.display().to_string()]).ok();
    let predictions = std::fs::read_to_string(download.join("named-outputs/score/predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 5);
    let attempts = cove_on(&bed, "jump", &owner, &["--json", "job", "show", &job]).ok().json();
    assert_eq!(attempts["attempts"][0]["node"], "compute-0", "the worker host did the scoring");

    // The outside host is refused by both the API and the invocation URL.
    let outside_api = cove_on(&bed, "outside", &owner, &["endpoint", "list"]);
    assert_eq!(outside_api.code, 3, "the API refuses the outside host:\n{}{}", outside_api.stdout, outside_api.stderr);
    record("outside (198.19.0.10)", "API", "refused");
    let outside_invoke = invoke_raw(&bed, "outside", &owner, "proof");
    assert!(
        outside_invoke.contains("Error") || outside_invoke.contains("Exception"),
        "the invocation URL answered the outside host: {outside_invoke}"
    );
    record("outside (198.19.0.10)", "invocation URL", "refused");
    // Control: the same raw client from the jump host gets an HTTP answer (400: the body is empty).
    assert_eq!(invoke_raw(&bed, "jump", &owner, "proof"), "400");

    // A worker on the wrong network is refused, credential and all.
    let wrong = bed
        .command("jump", COVE)
        .args([
            "--url",
            &format!("http://{API}"),
            "worker",
            "--worker-token",
            &worker_token,
            "--node",
            "rogue",
            "--work-dir",
        ])
        .arg(dir.path().join("rogue"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("accepted only from network `compute`"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    record("jump (198.18.2.10)", "worker protocol (cluster credential)", "refused");

    // Each refusal is in the audit log.
    let audit = cove_on(&bed, "jump", &owner, &["--json", "audit", "list"]).ok().json();
    let entries = audit.as_array().unwrap();
    let has = |source: &str, what: &str| {
        entries.iter().any(|e| e["source"] == source && e["outcome"].as_str().unwrap().contains(what))
    };
    assert!(has("198.19.0.10", "refused: source 198.19.0.10 is outside the workspace's private networks"), "{audit:#}");
    assert!(has("198.18.2.10", "accepted only from network `compute`"), "{audit:#}");
    let diag = cove_on(&bed, "jump", &owner, &["workspace", "diagnose"]);
    assert!(
        diag.stdout
            .contains("OK   public network access: disabled: listening only on private endpoints 198.18.1.10:8470"),
        "{}",
        diag.stdout
    );
    assert!(
        diag.stdout.contains("OK   compute cluster workers answered: a worker reached the API from 198.18.4.10"),
        "{}",
        diag.stdout
    );

    let mut text = String::from("source                          service                                 result\n");
    for (s, svc, r) in &table {
        text.push_str(&format!("{s:<32}{svc:<40}{r}\n"));
    }
    println!("Reachability proved:\n{text}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reachability.txt"), &text);
}
