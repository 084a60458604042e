//! TLS on every listener: the certificate the listeners serve (issued for their addresses and private
//! DNS names, or brought by the user), its rotation under a running job, expiry warnings in
//! `diagnose`, and worker credentials revoked at once.

use crate::support::{https_builder, Project, Workspace, COVE, LIST_SCRIPT};
use serde_json::json;
use std::path::Path;

/// A list script that takes a while per mini-batch, so a job is still running when the test acts.
const PACED_SCRIPT: &str = r#"
import os, time

def init():
    pass

def run(mini_batch):
    time.sleep(0.4)
    return [os.path.basename(p) for p in mini_batch]
"#;

/// The SHA-256 fingerprint of the certificate a new connection to `url` is served.
fn served(ws_dir: &Path, url: &str, resolve: Option<(&str, std::net::SocketAddr)>) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut builder = https_builder(ws_dir).tls_info(true);
        if let Some((name, addr)) = resolve {
            builder = builder.resolve(name, addr);
        }
        let resp = builder.build().unwrap().get(format!("{url}/api/v1/openapi.json")).send().await;
        let resp = resp.map_err(|e| format!("{e:?}"))?;
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS information");
        Ok(cove_tls::fingerprint(info.peer_certificate().expect("a server certificate")))
    })
}

fn file_fingerprint(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    cove_tls::fingerprint(&cove_tls::certificates("test", &pem).unwrap()[0])
}

fn config_with(dir: &Path, extra: &str) -> std::path::PathBuf {
    let file = dir.join("network.yml");
    let text = format!(
        "public_network_access: disabled
networks:
  - name: workspace
    address_space: [127.0.0.1/32]
private_endpoints:
  - name: api
    service: api
    address: 127.0.0.1:0
    network: workspace
    host_name: api.cove.internal
{extra}"
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn rotating_certificates_keeps_a_running_job_going_and_new_connections_get_the_new_one() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "paced", PACED_SCRIPT, "mini_batch_size: 1");
    p.deploy(&ws);
    let input = p.inputs(10).display().to_string();
    let job = ws.cove(&["--json", "endpoint", "invoke", "paced", "--input", &input]).ok().json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Rotate while the job's worker is scoring.
    ws.wait_status(&job, "Running");
    let before = served(&ws.path(), &ws.url, None).unwrap();
    assert_eq!(before, file_fingerprint(&ws.path().join("tls/server.pem")));
    let worker_before = file_fingerprint(&ws.path().join("tls/compute-local.pem"));
    let rotated = ws.cove(&["workspace", "rotate-certificates"]);
    assert!(rotated.ok().stdout.contains("The listeners have a new certificate"), "{}", rotated.stdout);
    assert!(rotated.stdout.contains("Compute local: new worker certificate"), "{}", rotated.stdout);
    let (_, shown) = ws.http("GET", &format!("/api/v1/jobs/{job}?attempts=false"), None, &[]);
    assert_eq!(shown["status"], "Running", "the job was still running at the rotation: {shown:#}");
    let after = served(&ws.path(), &ws.url, None).unwrap();
    assert_ne!(before, after, "new connections get the new certificate");
    assert_eq!(after, file_fingerprint(&ws.path().join("tls/server.pem")));
    assert_ne!(worker_before, file_fingerprint(&ws.path().join("tls/compute-local.pem")));

    // The worker started before the rotation finishes the job with its certificate.
    let done = ws.wait_job(&job);
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["progress"]["items_ok"], 10);
    let attempts = done["attempts"].as_array().unwrap();
    assert!(attempts.iter().all(|a| a["outcome"] == "succeeded"), "no attempt was lost to the rotation: {done:#}");
    // And a job after it runs on workers holding the new one.
    let again = ws.cove(&["endpoint", "invoke", "paced", "--input", &input, "--stream"]);
    assert!(again.ok().stdout.contains("Completed"), "{}", again.stdout);
}

#[test]
fn revoking_a_compute_credential_refuses_its_workers_at_once() {
    let ws = Workspace::start();
    let token = ws.credential("local");
    let ask = json!({"node": "n", "process": 0, "wait_ms": 0, "host": {"sandbox": true}});
    let (status, body) = ws.http_as(&token, "POST", "/worker/v1/lease", Some(ask.clone()), &[]);
    assert_eq!(status, 200, "the credential works before it is revoked: {body}");

    let revoked = ws.cove(&["compute", "revoke-credential", "local"]);
    assert!(revoked.ok().stdout.contains("client certificate(s) of compute local"), "{}", revoked.stdout);
    let (status, body) = ws.http_as(&token, "POST", "/worker/v1/lease", Some(ask.clone()), &[]);
    assert_eq!(status, 401, "{body}");
    // A token minted afterwards does not bring the revoked certificate back.
    let fresh = ws.cove(&["compute", "token", "local"]).ok().stdout.trim().to_string();
    let folder = ws.dir.path().join("credentials").join("local-0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, text) = rt.block_on(async {
        let identity = Some((folder.join("client.pem"), folder.join("client.key")));
        let client = crate::support::https_builder_as(&ws.path(), identity).build().unwrap();
        let resp =
            client.post(format!("{}/worker/v1/lease", ws.url)).bearer_auth(&fresh).json(&ask).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not a current worker certificate of this workspace (revoked or expired)"), "{text}");

    // The control plane gives the workers it starts a new credential: jobs on the compute still run.
    let p = Project::new(ws.dir.path(), "after", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["endpoint", "invoke", "after", "--input", &p.inputs(3).display().to_string(), "--stream"]);
    assert!(run.ok().stdout.contains("Completed"), "{}", run.stdout);
    let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
    let refused = audit.as_array().unwrap().iter().filter(|e| {
        e["action"] == "POST /worker/v1/lease" && e["outcome"].as_str().unwrap().starts_with("refused (401)")
    });
    assert_eq!(refused.count(), 2, "both refusals are audited: {audit:#}");
}

/// A worker that runs for weeks renews its client certificate before it expires: it asks for a new one
/// with the one it has, writes it over its files (the owner's alone) and uses it from then on. The new
/// certificate is the compute's like any other, so revoking the compute's credentials refuses it too.
#[test]
fn a_worker_renews_its_client_certificate_before_it_expires() {
    let ws = Workspace::start();
    let token = ws.credential("local");
    let folder = ws.dir.path().join("credentials").join("local-0");
    let issued = file_fingerprint(&folder.join("client.pem"));
    let issued_pem = std::fs::read(folder.join("client.pem")).unwrap();
    // The issued pair kept aside, to ask with it again after it was renewed.
    let old = ws.dir.path().join("old-pair");
    std::fs::create_dir_all(&old).unwrap();
    for file in ["client.pem", "client.key"] {
        std::fs::copy(folder.join(file), old.join(file)).unwrap();
    }
    let renew_with = |pair: &Path| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let identity = Some((pair.join("client.pem"), pair.join("client.key")));
            let client = crate::support::https_builder_as(&ws.path(), identity).build().unwrap();
            let url = format!("{}/worker/v1/credential", ws.url);
            let resp = client.post(url).bearer_auth(&token).json(&json!({})).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    // A certificate is renewable once a third of its life has passed, so a worker cannot mint
    // certificates one after another.
    let (status, body) = renew_with(&folder);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("this certificate is renewable from"), "{body}");
    let logs = ws.dir.path().join("worker-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let start_worker = |node: &str, renew_within: &str| {
        std::process::Command::new(COVE)
            .args(["--url", &ws.url, "worker", "--worker-token", &token, "--node", node, "--work-dir"])
            .arg(ws.dir.path().join(node))
            .env("COVE_CA_FILE", folder.join("ca.pem"))
            .env("COVE_CLIENT_CERT", folder.join("client.pem"))
            .env("COVE_CLIENT_KEY", folder.join("client.key"))
            .env("COVE_WORKER_RENEW_WITHIN_SECS", renew_within)
            .env("COVE_WORKER_CREDENTIAL_CHECK_SECS", "1")
            .env("RUST_LOG", "cove_worker=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(logs.join(node)).unwrap())
            .spawn()
            .unwrap()
    };
    // Two workers sharing the files, within a year of expiry as every worker certificate is, so both
    // ask, and both are refused while the certificate is young: both hold the issued pair.
    let mut workers = [start_worker("renewer", "31536000"), start_worker("sharer", "31536000")];
    let log_of = |node: &str| std::fs::read_to_string(logs.join(node)).unwrap_or_default();
    let wait_for = |what: &dyn Fn(&str) -> bool, workers: &mut [std::process::Child]| {
        let started = std::time::Instant::now();
        while !["renewer", "sharer"].iter().all(|n| what(&log_of(n))) {
            assert!(started.elapsed().as_secs() < 30, "{} / {}", log_of("renewer"), log_of("sharer"));
            assert!(workers.iter_mut().all(|w| w.try_wait().unwrap().is_none()), "a worker ended");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for(&|log| log.contains("this certificate is renewable from"), &mut workers);
    // Eleven days on, one renews, and the other, refused or finding the files changed first, takes up
    // the pair the first wrote.
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let eleven_days_older =
        "UPDATE worker_certificates SET created_ms = created_ms - 11 * 86400000 WHERE fingerprint = ?1";
    assert_eq!(db.execute(eleven_days_older, [&issued]).unwrap(), 1, "the issued certificate is recorded");
    let renewal = |log: &str| log.contains("renewed the worker's client certificate");
    let taking = |log: &str| log.contains("using the client certificate another worker renewed");
    wait_for(&|log| renewal(log) || taking(log), &mut workers);
    let said: Vec<String> = ["renewer", "sharer"].iter().map(|n| log_of(n)).collect();
    let renewers = said.iter().filter(|l| renewal(l)).count();
    let takers = said.iter().filter(|l| taking(l)).count();
    assert_eq!((renewers, takers), (1, 1), "{said:#?}");
    assert_ne!(file_fingerprint(&folder.join("client.pem")), issued);
    for worker in &mut workers {
        assert!(worker.try_wait().unwrap().is_none(), "the worker goes on after renewing");
        crate::support::kill(worker.id(), "TERM");
        worker.wait().unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for file in ["client.pem", "client.key"] {
        let mode = std::fs::metadata(folder.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    // Each certificate is renewed once: the old pair is refused now, and the renewed one is young.
    let (status, body) = renew_with(&old);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("this certificate was renewed already"), "{body}");
    let (status, body) = renew_with(&folder);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("this certificate is renewable from"), "{body}");

    let ask = json!({"node": "n", "process": 0, "wait_ms": 0, "host": {"sandbox": true}});
    let lease_with_files = |token: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let identity = Some((folder.join("client.pem"), folder.join("client.key")));
            let client = crate::support::https_builder_as(&ws.path(), identity).build().unwrap();
            let resp =
                client.post(format!("{}/worker/v1/lease", ws.url)).bearer_auth(token).json(&ask).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let (status, body) = lease_with_files(&token);
    assert_eq!(status, 200, "the renewed pair works: {body}");

    // A renewal cut short between its two renames: the new key in place, the old certificate beside
    // it, the new one staged. The next start puts the new certificate in place and dials in with it.
    let renewed_pem = std::fs::read(folder.join("client.pem")).unwrap();
    std::fs::write(folder.join("client.pem.tmp"), &renewed_pem).unwrap();
    std::fs::write(folder.join("client.pem"), &issued_pem).unwrap();
    let mut again = start_worker("restarted", "0");
    let started = std::time::Instant::now();
    loop {
        let checks = ws.cove(&["workspace", "diagnose"]).stdout.clone();
        if checks.contains("the host of worker restarted") {
            break;
        }
        assert!(again.try_wait().unwrap().is_none(), "the restarted worker ended: {checks}");
        assert!(started.elapsed().as_secs() < 30, "the restarted worker never dialled in");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    crate::support::kill(again.id(), "TERM");
    again.wait().unwrap();
    assert_eq!(std::fs::read(folder.join("client.pem")).unwrap(), renewed_pem);
    assert!(!folder.join("client.pem.tmp").exists());
    // Only a worker gets one: not the owner's token, nor a worker token without its certificate.
    let (status, body) = ws.http_as(ws.token().trim(), "POST", "/worker/v1/credential", Some(json!({})), &[]);
    assert!(status == 401 || status == 403, "{status}: {body}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        let client = crate::support::https_builder_as(&ws.path(), None).build().unwrap();
        let url = format!("{}/worker/v1/credential", ws.url);
        client.post(url).bearer_auth(&token).json(&json!({})).send().await.unwrap().status().as_u16()
    });
    assert_eq!(status, 401, "a worker token without its certificate");
    let renewed = file_fingerprint(&folder.join("client.pem"));
    let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
    let asked: Vec<&serde_json::Value> =
        audit.as_array().unwrap().iter().filter(|e| e["action"] == "POST /worker/v1/credential").collect();
    let renewals: Vec<&&serde_json::Value> = asked.iter().filter(|e| e["outcome"] == "ok").collect();
    assert_eq!(renewals.len(), 1, "one renewal: {audit:#}");
    // The workers were refused a renewal every second: each refusal is audited, and the store grew by
    // no more than the budget of their principal (20 a minute one by one; a run may straddle two).
    let too_early = asked.iter().filter(|e| e["outcome"].as_str().unwrap_or_default().starts_with("refused (409)"));
    let too_early = too_early.count();
    assert!((1..=40).contains(&too_early), "{too_early} refusals written one by one: {audit:#}");
    let detail = renewals[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&renewed), "the renewal is audited with the certificate it issued: {audit:#}");
    ws.cove(&["compute", "revoke-credential", "local"]).ok();
    // A token minted after the revocation shows it is the renewed certificate that is refused.
    let fresh = ws.cove(&["compute", "token", "local"]).ok().stdout.trim().to_string();
    let (status, body) = lease_with_files(&fresh);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not a current worker certificate of this workspace (revoked or expired)"), "{body}");
}

#[test]
fn the_listeners_certificate_holds_the_private_dns_name_and_diagnose_reports_every_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    let addr: std::net::SocketAddr = ws.url.trim_start_matches("https://").parse().unwrap();
    let by_name = format!("https://api.cove.internal:{}", addr.port());
    let named = served(&ws.path(), &by_name, Some(("api.cove.internal", addr)));
    assert_eq!(named.unwrap(), file_fingerprint(&ws.path().join("tls/server.pem")));
    let other = format!("https://files.cove.internal:{}", addr.port());
    let refused = served(&ws.path(), &other, Some(("files.cove.internal", addr))).unwrap_err();
    assert!(refused.contains("NotValidForName"), "{refused}");

    let diag = ws.cove(&["workspace", "diagnose"]);
    for line in [
        "OK   certificates: the workspace CA is valid until",
        "OK   certificates: the listeners' certificate is valid until",
        "OK   certificates: the worker certificate of compute local is valid until",
    ] {
        assert!(diag.stdout.contains(line), "{line}\n{}", diag.stdout);
    }
    // Keys are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "server.key", "compute-local.key"] {
        let mode = std::fs::metadata(ws.path().join("tls").join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
}

#[test]
fn a_brought_certificate_is_served_and_diagnose_warns_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (corp, ca) = cove_tls::Authority::create("corp", &cove_tls::NameScope::loopback()).unwrap();
    let cert = corp.issue_server(&["127.0.0.1".into()], 2).unwrap();
    std::fs::write(dir.path().join("corp-ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &cert.key_pem).unwrap();
    let tls = "tls:\n  certificate: api.pem\n  key: api.key\n  ca: corp-ca.pem\n";
    let config = config_with(dir.path(), tls);
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    assert_eq!(served(&ws.path(), &ws.url, None).unwrap(), cert.fingerprint);
    assert_eq!(std::fs::read_to_string(ws.path().join("tls/trust.pem")).unwrap(), ca.cert_pem);
    // The CLI and the workers trust the brought CA; workers still present the workspace CA's certificates.
    let p = Project::new(ws.dir.path(), "corp", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["endpoint", "invoke", "corp", "--input", &p.inputs(2).display().to_string(), "--stream"]);
    assert!(run.ok().stdout.contains("Completed"), "{}", run.stdout);

    let diag = ws.cove(&["workspace", "diagnose"]);
    let warning =
        format!("WARN certificates: the listeners' certificate {} expires in 4", dir.path().join("api.pem").display());
    assert!(diag.stdout.contains(&warning), "{warning}\n{}", diag.stdout);
    assert!(
        diag.stdout.contains("fix: replace the certificate named under tls: in the workspace configuration"),
        "{}",
        diag.stdout
    );
    // Renewed in place: the files are replaced and the certificates rotated, with no restart.
    let renewed = corp.issue_server(&["127.0.0.1".into()], 60).unwrap();
    std::fs::write(dir.path().join("api.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &renewed.key_pem).unwrap();
    let rotated = ws.cove(&["workspace", "rotate-certificates"]);
    let said = format!("The listeners serve {} as it is now, valid until", dir.path().join("api.pem").display());
    assert!(rotated.ok().stdout.contains(&said), "{}", rotated.stdout);
    assert_eq!(served(&ws.path(), &ws.url, None).unwrap(), renewed.fingerprint, "new connections get the new one");
    // Files that cannot be served are refused, naming them, and the listeners keep what they serve.
    let expired = corp.issue_server(&["127.0.0.1".into()], -1).unwrap();
    std::fs::write(dir.path().join("api.pem"), &expired.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &expired.key_pem).unwrap();
    ws.cove(&["workspace", "rotate-certificates"])
        .fails_with(2, &format!("tls.certificate: {} expired at", dir.path().join("api.pem").display()));
    let (other_corp, other_ca) = cove_tls::Authority::create("other", &cove_tls::NameScope::loopback()).unwrap();
    let other = other_corp.issue_server(&["127.0.0.1".into()], 60).unwrap();
    std::fs::write(dir.path().join("api.pem"), &other.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &other.key_pem).unwrap();
    std::fs::write(dir.path().join("corp-ca.pem"), &other_ca.cert_pem).unwrap();
    ws.cove(&["workspace", "rotate-certificates"]).fails_with(2, "is not the CA the workspace started with");
    assert_eq!(served(&ws.path(), &ws.url, None).unwrap(), renewed.fingerprint);
}

#[test]
fn an_expired_certificate_a_plain_url_and_a_non_owner_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (corp, ca) = cove_tls::Authority::create("corp", &cove_tls::NameScope::loopback()).unwrap();
    let expired = corp.issue_server(&["127.0.0.1".into()], -1).unwrap();
    std::fs::write(dir.path().join("corp-ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.pem"), &expired.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &expired.key_pem).unwrap();
    // A TLS server the test runs serves the expired certificate: the CLI refuses it, saying why.
    let port = crate::support::free_port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(dir.path().join("api.pem"))
        .arg("-key")
        .arg(dir.path().join("api.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_for_listener(port, "openssl s_server");
    let refused = std::process::Command::new(COVE)
        .args(["endpoint", "list"])
        .env_remove("COVE_WORKSPACE")
        .env("COVE_URL", format!("https://127.0.0.1:{port}"))
        .env("COVE_TOKEN", "unused")
        .env("COVE_CA_FILE", dir.path().join("corp-ca.pem"))
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{said}");
    assert!(said.contains("the server's certificate has expired"), "{said}");

    let ws = Workspace::start();
    let plain = std::process::Command::new(COVE)
        .args(["endpoint", "list"])
        .env_remove("COVE_WORKSPACE")
        .env("COVE_URL", ws.url.replace("https://", "http://"))
        .env("COVE_TOKEN", ws.token())
        .env("COVE_CA_FILE", ws.path().join("tls/trust.pem"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{said}");
    assert!(said.contains("Cove's control plane speaks only HTTPS; use its https:// URL"), "{said}");
    // Only an owner issues, revokes or rotates credentials.
    let contributor = ws.cove(&["token", "create", "--role", "contributor"]).ok().stdout.trim().to_string();
    for (method, path) in [
        ("POST", "/api/v1/computes/local/credential"),
        ("DELETE", "/api/v1/computes/local/credential"),
        ("POST", "/api/v1/workspace/rotate-certificates"),
    ] {
        let (status, body) = ws.http_as(&contributor, method, path, Some(json!({})), &[]);
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let missing = ws.cove(&["compute", "credential", "nowhere", "--out", &dir.path().join("c").display().to_string()]);
    missing.fails_with(5, "compute `nowhere` does not exist");
}

#[test]
fn a_brought_certificate_that_cannot_be_used_stops_cove_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (corp, ca) = cove_tls::Authority::create("corp", &cove_tls::NameScope::loopback()).unwrap();
    let cert = corp.issue_server(&["127.0.0.1".into()], 2).unwrap();
    std::fs::write(dir.path().join("corp-ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.pem"), &cert.cert_pem).unwrap();
    let up = |tls: &str| {
        let config = config_with(dir.path(), tls);
        let out = std::process::Command::new(COVE)
            .args(["up", "--dir"])
            .arg(dir.path().join("ws"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "cove up started with {tls}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = up("tls:\n  certificate: api.pem\n  key: api.key\n  ca: corp-ca.pem\n");
    assert!(missing.contains(&format!("failed to read {}", dir.path().join("api.key").display())), "{missing}");
    // A key that is not the certificate's.
    let other = corp.issue_server(&["127.0.0.1".into()], 2).unwrap();
    std::fs::write(dir.path().join("api.key"), &other.key_pem).unwrap();
    let mismatched = up("tls:\n  certificate: api.pem\n  key: api.key\n  ca: corp-ca.pem\n");
    assert!(
        mismatched.contains(&format!("the certificate {} with the key", dir.path().join("api.pem").display())),
        "{mismatched}"
    );
    let unknown = up("tls:\n  certificate: api.pem\n  key: api.key\n  authority: corp-ca.pem\n");
    assert!(unknown.contains("authority"), "{unknown}");
    // An expired certificate: every client would refuse it, so the control plane does not start with it.
    let expired = corp.issue_server(&["127.0.0.1".into()], -1).unwrap();
    std::fs::write(dir.path().join("api.pem"), &expired.cert_pem).unwrap();
    std::fs::write(dir.path().join("api.key"), &expired.key_pem).unwrap();
    let stale = up("tls:\n  certificate: api.pem\n  key: api.key\n  ca: corp-ca.pem\n");
    assert!(
        stale.contains(&format!("tls.certificate: {} expired at", dir.path().join("api.pem").display())),
        "{stale}"
    );
}

/// What the CLI says when it connects to a server whose certificate the workspace CA's own key signed
/// for `sans` (`support::ForgedServer`), trusting the workspace's `tls/trust.pem`.
fn cli_against_forged(ws: &Workspace, dir: &Path, stem: &str, sans: &str) -> (Option<i32>, String) {
    let server = crate::support::ForgedServer::start(&ws.path(), dir, stem, sans);
    let out = std::process::Command::new(COVE)
        .args(["endpoint", "list"])
        .env_remove("COVE_WORKSPACE")
        .env("COVE_URL", server.url())
        .env("COVE_TOKEN", "unused")
        .env("COVE_CA_FILE", ws.path().join("tls/trust.pem"))
        .output()
        .unwrap();
    drop(server);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Hole 4: users import the workspace CA into their browsers for the studio, so it must not be able to
/// vouch for any other host. It carries name constraints (the workspace's networks, loopback, its
/// listeners and private DNS names): a certificate its own key signs for another name is refused.
#[test]
fn the_workspace_ca_cannot_vouch_for_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::start_with(&["--config", &config_with(dir.path(), "").display().to_string()], &[]);
    let ca = cove_tls::Authority::load(
        &std::fs::read_to_string(ws.path().join("tls/ca.pem")).unwrap(),
        &std::fs::read_to_string(ws.path().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let scope = ca.scope.expect("the workspace CA carries name constraints");
    assert_eq!(scope.dns, ["api.cove.internal", "localhost"]);
    let ranges: Vec<String> = scope.ip.iter().map(|(ip, prefix)| format!("{ip}/{prefix}")).collect();
    assert_eq!(ranges, ["127.0.0.0/8", "127.0.0.1/32", "::1/128"]);
    // The same key signs for this host's address alone: the CLI gets past TLS (and finds no API there).
    let (code, said) = cli_against_forged(&ws, dir.path(), "own", "IP:127.0.0.1");
    assert!(!said.contains("certificate"), "{code:?} {said}");
    // And for the address and a bank's name: refused, whatever address it is served on.
    for (stem, sans) in [("bank", "IP:127.0.0.1,DNS:bank.example"), ("elsewhere", "IP:127.0.0.1,IP:198.18.0.1")] {
        let (code, said) = cli_against_forged(&ws, dir.path(), stem, sans);
        assert_eq!(code, Some(4), "{stem}: {said}");
        assert!(said.contains("the server's certificate names a host its CA may not vouch for"), "{stem}: {said}");
    }
}
