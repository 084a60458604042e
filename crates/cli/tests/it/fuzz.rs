//! An OpenAPI-driven fuzz run: schemathesis generates requests for every operation the API describes
//! and sends them to a real control plane; none may get a 5xx, and the server must survive them all.

use crate::support::Workspace;
use std::process::Command;

#[test]
fn schemathesis_finds_no_server_error_on_any_operation() {
    let ws = Workspace::start();
    let examples = std::env::var("COVE_FUZZ_EXAMPLES").unwrap_or_else(|_| "10".into());
    let out = Command::new("schemathesis")
        .args(["run", &format!("{}/api/v1/openapi.json", ws.url)])
        .args(["-H", &format!("Authorization: Bearer {}", ws.token())])
        .arg(format!("--tls-verify={}", ws.path().join("tls/trust.pem").display()))
        .args(["-c", "not_a_server_error", "-n", &examples, "--workers", "1", "--no-color", "--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("schemathesis is installed (scripts/setup)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    let cases = text.lines().find(|l| l.contains("generated,")).unwrap_or("").trim().to_string();
    println!("schemathesis: {cases}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-schemathesis.txt"), &cases);
    // The server is still up and answering.
    assert_eq!(ws.http("GET", "/api/v1/workspace", None, &[]).0, 200);
}
