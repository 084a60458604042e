//! `cove workspace diagnose`: every check can fail, and says how to fix it. (The compute-network and
//! token checks fail in `access.rs`, the datastore check in `datastores.rs`.)

use crate::support::{Project, Workspace, LIST_SCRIPT};

/// Public network access, an unsandboxable host (this one, then the host a worker reported), and a
/// workspace folder other users can reach.
#[test]
fn diagnose_fails_each_check_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("public.yml");
    std::fs::write(
        &config,
        "public_network_access: enabled\nnetworks:\n  - name: workspace\n    address_space: [127.0.0.1/32]\n\
         private_endpoints:\n  - name: api\n    service: api\n    address: 127.0.0.1:0\n    network: workspace\n",
    )
    .unwrap();
    let python =
        std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();
    let bare = tempfile::tempdir().unwrap();
    let ws = Workspace::start_with(
        &["--config", &config.display().to_string(), "--python", &python],
        &[("PATH", &bare.path().display().to_string())],
    );
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 1, "{}", diag.stdout);
    let has = |text: &str| assert!(diag.stdout.contains(text), "{text:?} missing from:\n{}", diag.stdout);
    has("WARN public network access: enabled: any source address may connect\n     fix: set public_network_access: disabled in the workspace config");
    has("FAIL scoring sandbox on compute local: this host cannot: bubblewrap (`bwrap`) cannot be run");
    has("its scoring-code jobs fail\n     fix: install bubblewrap there and allow unprivileged user namespaces");
    has("OK   workspace private on this host");

    // Once a worker has asked for work, its host's own word counts.
    let p = Project::new(ws.dir.path(), "boxless", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "boxless", "--input", &p.inputs(1).display().to_string()]);
    assert_eq!(ws.wait_job(run.ok().json()["name"].as_str().unwrap())["status"], "Failed");
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(
        diag.stdout.contains("FAIL scoring sandbox on compute local: the host of worker local-0 cannot: bubblewrap"),
        "{}",
        diag.stdout
    );

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let diag = ws.cove(&["workspace", "diagnose"]);
    let expected = format!(
        "FAIL workspace private on this host: other users of this host can reach it: {} is mode 755\n     fix: chmod 700 {}",
        ws.path().display(),
        ws.path().display()
    );
    assert!(diag.stdout.contains(&expected), "{}", diag.stdout);
}

/// A workspace that opts out of the sandbox is warned about it on every compute.
#[test]
fn diagnose_warns_when_the_workspace_runs_scoring_code_unsandboxed() {
    let ws = Workspace::start_with(&["--sandbox", "none"], &[]);
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(
        diag.stdout.contains("WARN scoring sandbox on compute local: disabled by the workspace (--sandbox none)"),
        "{}",
        diag.stdout
    );
    assert!(diag.stdout.contains("fix: start the workspace without --sandbox none"), "{}", diag.stdout);
}

/// The certificate check fails on a certificate that cannot be read and on one that has expired, and
/// the package-source check on a wheel folder that is gone; each with its fix. (A private workspace's
/// listeners are its private endpoints by construction: `cove up` refuses any other, so the public
/// network access check has nothing to fail on and only warns when access is enabled, above.)
#[test]
fn diagnose_fails_certificates_and_package_sources_that_cannot_serve() {
    let wheels = tempfile::tempdir().unwrap();
    std::fs::write(wheels.path().join("placeholder.txt"), "").unwrap();
    let ws = Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[]);
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 0, "{}", diag.stdout);
    assert!(diag.stdout.contains("OK   certificates: the listeners' certificate is valid until"), "{}", diag.stdout);
    let cert = ws.path().join("tls/server.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 1, "{}", diag.stdout);
    let unreadable = "FAIL certificates: the listeners' certificate: ";
    assert!(diag.stdout.contains(unreadable), "{}", diag.stdout);
    assert!(diag.stdout.contains("fix: run `cove workspace rotate-certificates`"), "{}", diag.stdout);
    let ca = cove_tls::Authority::load(
        &std::fs::read_to_string(ws.path().join("tls/ca.pem")).unwrap(),
        &std::fs::read_to_string(ws.path().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    std::fs::write(&cert, ca.issue_server(&["127.0.0.1".into()], -1).unwrap().cert_pem).unwrap();
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 1, "{}", diag.stdout);
    assert!(diag.stdout.contains("FAIL certificates: the listeners' certificate expired at"), "{}", diag.stdout);
    let folder = wheels.path().display().to_string();
    drop(wheels);
    let diag = ws.cove(&["workspace", "diagnose"]);
    let gone = format!("FAIL package index: the wheel folder {folder} cannot be read");
    assert!(diag.stdout.contains(&gone), "{}", diag.stdout);
    assert!(diag.stdout.contains("fix: fix --wheels"), "{}", diag.stdout);
}
