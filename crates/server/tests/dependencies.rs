//! The control plane links neither the worker nor the model runtime: what an attacker can reach in
//! the one process that holds every secret stays the control plane's own code.

use std::collections::BTreeSet;
use std::process::Command;

/// The names of every package in `package`'s normal (non-dev, non-build) dependency graph.
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    normal_versions(package).into_iter().map(|(name, _)| name).collect()
}

fn forbidden(names: &BTreeSet<String>) -> Vec<&String> {
    names.iter().filter(|n| *n == "cove-worker" || *n == "cove-onnx" || n.starts_with("tract")).collect()
}

#[test]
fn the_control_plane_links_neither_the_worker_nor_the_model_runtime() {
    let server = normal_dependencies("cove-server");
    // The listing is the real graph: the control plane's own crates and its HTTP stack are in it.
    for expected in
        ["cove-server", "cove-http", "cove-jobs", "cove-store", "cove-common", "cove-api", "axum", "rusqlite"]
    {
        assert!(server.contains(expected), "`{expected}` missing from cove-server's graph: {server:?}");
    }
    assert_eq!(forbidden(&server), Vec::<&String>::new(), "cove-server links worker-side code");
    // The same check finds them where they are linked: the `cove` binary has both sides.
    let cli = normal_dependencies("cove-cli");
    let found = forbidden(&cli);
    assert!(found.iter().any(|n| *n == "cove-worker") && found.iter().any(|n| n.starts_with("tract")), "{found:?}");
}

/// Every (name, version) in `package`'s normal dependency graph.
fn normal_versions(package: &str) -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// The `cove` binary carries one HTTP client (reqwest) and one object-store client, and no deprecated
/// YAML crate: ARCHITECTURE.md's choices stay true as dependencies move.
#[test]
fn one_http_client_one_object_store_and_a_maintained_yaml_reader() {
    let all = normal_versions("cove-cli");
    let versions = |name: &str| -> Vec<&String> { all.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect() };
    assert_eq!(versions("reqwest").len(), 1, "reqwest versions: {:?}", versions("reqwest"));
    assert_eq!(versions("object_store").len(), 1, "object_store versions: {:?}", versions("object_store"));
    assert!(versions("serde_yaml").is_empty(), "serde_yaml is deprecated upstream");
    assert_eq!(versions("serde_norway").len(), 1, "the YAML reader is in the graph");
}
