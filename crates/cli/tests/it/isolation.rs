//! The proof of "private by default", on a real multi-host network built from namespaces: the
//! workspace on a private network, a jump host on a peered network, a worker host on the compute
//! network, and an outside host. The router forwards everything, so what refuses is Cove itself.
//! The test prints the reachability table it proved.

use crate::support::{Project, Run, COVE, LIST_SCRIPT};
use crate::testbed::Testbed;
use std::path::Path;
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

/// Runs the CLI on `host` against the workspace's private endpoint with `token`, trusting `ca`.
fn cove_trusting(bed: &Testbed, host: &str, ca: &Path, token: &str, args: &[&str]) -> Run {
    bed.command(host, COVE)
        .args(args)
        .env("COVE_URL", format!("https://{API}"))
        .env("COVE_CA_FILE", ca)
        .env("COVE_TOKEN", token)
        .env_remove("COVE_WORKSPACE")
        .env("CI", "1")
        .output()
        .unwrap()
        .into()
}

/// Sends one request from `host` with Python's own HTTP client (no Cove code on the client side):
/// over TLS trusting `ca` (and presenting `cert` and `key` when given), or as plain HTTP when `ca` is
/// none. Returns the status and the start of the body, or the exception's name.
fn raw(
    bed: &Testbed,
    host: &str,
    ca: Option<&Path>,
    cert: Option<(&Path, &Path)>,
    token: &str,
    method: &str,
    path: &str,
) -> String {
    let connect = match (ca, cert) {
        (None, _) => "c = http.client.HTTPConnection('198.18.1.10', 8470, timeout=5)".to_string(),
        (Some(ca), identity) => {
            let load = identity.map_or(String::new(), |(c, k)| format!("ctx.load_cert_chain({:?}, {:?})\n    ", c, k));
            format!(
                "ctx = ssl.create_default_context(cafile={ca:?})\n    {load}c = http.client.HTTPSConnection('198.18.1.10', 8470, timeout=5, context=ctx)"
            )
        }
    };
    let code = format!(
        "import http.client, ssl\ntry:\n    {connect}\n    c.request('{method}', '{path}', body='{{}}', headers={{'Authorization': 'Bearer {token}', 'Content-Type': 'application/json'}})\n    r = c.getresponse()\n    print(r.status, r.read()[:200].decode())\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
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
    let ca = ws_dir.join("tls/trust.pem");
    let cove_on = |bed: &Testbed, host: &str, token: &str, args: &[&str]| cove_trusting(bed, host, &ca, token, args);
    let invoke_raw = |bed: &Testbed, host: &str, token: &str, endpoint: &str| {
        raw(bed, host, Some(&ca), None, token, "POST", &format!("/endpoints/{endpoint}/jobs"))
    };
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
        shown.ok().stdout.contains(&format!("Scoring URI:        https://{API}/endpoints/proof/jobs")),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("private: reachable only from networks compute, jump, workspace"),
        "{}",
        shown.stdout
    );
    record("jump (198.18.2.10, peered)", "API", "allowed");

    // The worker host dials out with the cluster's credential (a token and a client certificate bound to
    // the cluster); it needs no inbound access.
    let credential = dir.path().join("credential");
    let folder = credential.display().to_string();
    cove_on(&bed, "jump", &owner, &["compute", "credential", "cluster", "--out", &folder]).ok();
    let worker_token = std::fs::read_to_string(credential.join("token")).unwrap().trim().to_string();
    let worker_on = |bed: &Testbed, host: &str, identity: &Path, node: &str| {
        let mut worker = bed.command(host, COVE);
        worker
            .args(["--url", &format!("https://{API}"), "worker", "--worker-token", &worker_token, "--node", node])
            .args(["--concurrency", "2", "--work-dir"])
            .arg(dir.path().join(node))
            .env("COVE_CA_FILE", credential.join("ca.pem"))
            .env("COVE_CLIENT_CERT", identity.join("client.pem"))
            .env("COVE_CLIENT_KEY", identity.join("client.key"));
        worker
    };
    let worker = worker_on(&bed, "compute", &credential, "compute-0");
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
    assert!(
        invoke_raw(&bed, "jump", &owner, "proof").starts_with("400 "),
        "{}",
        invoke_raw(&bed, "jump", &owner, "proof")
    );

    // The studio is on the same private endpoint, behind the same policy.
    let studio = raw(&bed, "jump", Some(&ca), None, "", "GET", "/");
    assert!(studio.starts_with("200 ") && studio.contains("Cove studio"), "{studio}");
    record("jump (198.18.2.10, peered)", "studio", "allowed");
    let outside_studio = raw(&bed, "outside", Some(&ca), None, "", "GET", "/");
    assert!(!outside_studio.starts_with('2') && !outside_studio.starts_with('4'), "{outside_studio}");
    record("outside (198.19.0.10)", "studio", "refused");

    // Every listener speaks only TLS: plain HTTP from a peered host gets a refusal and nothing else.
    let plain = raw(&bed, "jump", None, None, &owner, "POST", "/endpoints/proof/jobs");
    assert!(plain.starts_with("400 this Cove listener speaks only HTTPS"), "{plain}");
    record("jump (198.18.2.10)", "plain HTTP", "refused");
    // A client that trusts another CA does not talk to the workspace (a man in the middle would look
    // like this to Cove's own clients).
    let (_, other_ca) = cove_tls::Authority::create("elsewhere", &cove_tls::NameScope::loopback()).unwrap();
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, &other_ca.cert_pem).unwrap();
    let distrust = cove_trusting(&bed, "jump", &other_ca_file, &owner, &["endpoint", "list"]);
    distrust.fails_with(4, "the server's certificate is not issued by the CA this client trusts");
    let python = raw(&bed, "jump", Some(&other_ca_file), None, &owner, "GET", "/api/v1/endpoints");
    assert!(python.starts_with("SSLCertVerificationError"), "{python}");
    record("jump (198.18.2.10)", "API, trusting another CA", "refused");
    // A bearer token captured from a worker's request is useless without the cluster's certificate:
    // from the cluster's own network, over TLS, the worker protocol refuses it.
    let lease = "/worker/v1/lease";
    let replayed = raw(&bed, "compute", Some(&ca), None, &worker_token, "POST", lease);
    assert!(replayed.starts_with("401 ") && replayed.contains("needs the compute's client certificate"), "{replayed}");
    record("compute (198.18.4.10)", "worker protocol, token without certificate", "refused");
    // The certificate of another compute does nothing for this one.
    let local_folder = dir.path().join("local-credential");
    cove_on(&bed, "jump", &owner, &["compute", "credential", "local", "--out", &local_folder.display().to_string()])
        .ok();
    // The cluster's token from the cluster's host, with the certificate (and key) of a credential folder.
    let lease_as = |folder: &Path| {
        let identity = (folder.join("client.pem"), folder.join("client.key"));
        raw(&bed, "compute", Some(&ca), Some((&identity.0, &identity.1)), &worker_token, "POST", lease)
    };
    let crossed = lease_as(&local_folder);
    assert!(
        crossed.starts_with("401 ") && crossed.contains("belongs to compute `local`, not to `cluster`"),
        "{crossed}"
    );
    record("compute (198.18.4.10)", "worker protocol, another compute's certificate", "refused");
    // A certificate the workspace CA did not issue does not even finish the handshake's verification.
    let forged = other_ca_file.with_file_name("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let (other_authority, _) = cove_tls::Authority::create("forger", &cove_tls::NameScope::loopback()).unwrap();
    let fake = other_authority.issue_client("cluster", 1).unwrap();
    std::fs::write(forged.join("client.pem"), &fake.cert_pem).unwrap();
    std::fs::write(forged.join("client.key"), &fake.key_pem).unwrap();
    let forged_call = lease_as(&forged);
    assert!(
        !forged_call.starts_with('2') && !forged_call.starts_with('4'),
        "a forged certificate got an HTTP answer: {forged_call}"
    );
    record("compute (198.18.4.10)", "worker protocol, certificate of another CA", "refused");
    // With its own certificate the same call gets past authentication to the handler, which finds the
    // body empty (so the probes above reached a listener that would have answered).
    let proper = lease_as(&credential);
    assert!(proper.starts_with("400 ") && proper.contains("missing field `node`"), "{proper}");

    // A worker on the wrong network is refused, credential and all.
    let wrong = worker_on(&bed, "jump", &credential, "rogue").output().unwrap();
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

    let mut text = format!("{:<32}{:<48}result\n", "source", "service");
    for (s, svc, r) in &table {
        text.push_str(&format!("{s:<32}{svc:<48}{r}\n"));
    }
    println!("Reachability proved:\n{text}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reachability.txt"), &text);
}
