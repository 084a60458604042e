//! Private by default, on loopback: tokens, roles and scopes, network refusals (listener and trusted
//! proxies), worker credentials, the audit entry every refusal leaves, and `diagnose`.

use crate::support::{https_builder_as, identity_of, Project, Workspace, LIST_SCRIPT};
use serde_json::json;

fn token(ws: &Workspace, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--role", role];
    args.extend_from_slice(extra);
    let run = ws.cove(&args);
    run.ok().stdout.trim().to_string()
}

fn audit(ws: &Workspace) -> Vec<serde_json::Value> {
    ws.cove(&["--json", "audit", "list"]).ok().json().as_array().unwrap().clone()
}

fn audited(ws: &Workspace, action: &str, outcome: &str) -> bool {
    audit(ws)
        .iter()
        .any(|e| e["action"].as_str().unwrap().starts_with(action) && e["outcome"].as_str().unwrap().contains(outcome))
}

#[test]
fn roles_and_scopes_refuse_what_they_do_not_allow_and_every_refusal_is_audited() {
    let ws = Workspace::start();
    let a = Project::new(ws.dir.path(), "aaa", LIST_SCRIPT, "");
    let b = Project::new(ws.dir.path(), "bbb", LIST_SCRIPT, "");
    a.deploy(&ws);
    b.deploy(&ws);
    let job_b =
        ws.cove(&["--json", "endpoint", "invoke", "bbb", "--input", &b.inputs(1).display().to_string()]).ok().json();
    let job_b = job_b["name"].as_str().unwrap().to_string();
    let input = ws.wait_job(&job_b)["input"]["uri"].as_str().unwrap().to_string();
    let body = json!({"input": {"uri": input, "type": "uri_folder"}});

    let reader = token(&ws, "reader", &[]);
    let invoker_a = token(&ws, "invoker", &["--endpoint-name", "aaa", "--expires-in", "1h"]);
    let contributor = token(&ws, "contributor", &[]);

    // 401: no token, a wrong token, a revoked token.
    assert_eq!(ws.http_as("", "GET", "/api/v1/endpoints", None, &[]).0, 401);
    assert_eq!(ws.http_as("cove_nope", "GET", "/api/v1/endpoints", None, &[]).0, 401);
    let doomed = token(&ws, "reader", &[]);
    let id = ws.cove(&["--json", "token", "list"]).ok().json().as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ws.cove(&["token", "revoke", &id]).ok();
    assert_eq!(ws.http_as(&doomed, "GET", "/api/v1/endpoints", None, &[]).0, 401);
    // An expired token: good while it lasts, refused once it has expired.
    let brief = token(&ws, "reader", &["--expires-in", "2s"]);
    assert_eq!(ws.http_as(&brief, "GET", "/api/v1/endpoints", None, &[]).0, 200, "good while it lasts");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(ws.http_as(&brief, "GET", "/api/v1/endpoints", None, &[]).0, 401, "refused once expired");

    // 403 by role.
    let (s, e) = ws.http_as(&reader, "POST", "/endpoints/aaa/jobs", Some(body.clone()), &[]);
    assert_eq!(s, 403, "{e}");
    assert!(e["message"].as_str().unwrap().contains("needs the invoker role"));
    assert_eq!(ws.http_as(&reader, "POST", "/api/v1/endpoints", Some(json!({"name": "ccc"})), &[]).0, 403);
    assert_eq!(ws.http_as(&contributor, "POST", "/api/v1/tokens", Some(json!({"role": "owner"})), &[]).0, 403);
    assert_eq!(ws.http_as(&contributor, "POST", "/api/v1/endpoints", Some(json!({"name": "ccc"})), &[]).0, 201);
    // 403 by scope: the invoker of aaa can neither invoke bbb nor read bbb's jobs.
    assert_eq!(ws.http_as(&invoker_a, "POST", "/endpoints/bbb/jobs", Some(body.clone()), &[]).0, 403);
    assert_eq!(ws.http_as(&invoker_a, "GET", &format!("/api/v1/jobs/{job_b}"), None, &[]).0, 403);
    let (s, listed) = ws.http_as(&invoker_a, "GET", "/api/v1/jobs", None, &[]);
    assert_eq!(s, 200);
    assert!(listed.as_array().unwrap().is_empty(), "an endpoint-scoped token lists only its endpoint's jobs");
    // Nor read bbb's uploaded inputs through its own endpoint; data that nobody holds it may read.
    let (s, e) = ws.http_as(&invoker_a, "POST", "/endpoints/aaa/jobs", Some(body.clone()), &[]);
    assert_eq!(s, 403, "{e}");
    assert!(e["message"].as_str().unwrap().contains("which a token scoped to endpoint `aaa` does not own"), "{e}");
    let put = ws.http_bytes("PUT", "/api/v1/datastores/workspaceblobstore/files/shared/in/x.txt", "1\n".into());
    assert_eq!(put.0, 201, "{put:?}");
    let shared =
        json!({"input": {"uri": "azureml://datastores/workspaceblobstore/paths/shared/in", "type": "uri_folder"}});
    let (s, job) = ws.http_as(&invoker_a, "POST", "/endpoints/aaa/jobs", Some(shared), &[]);
    assert_eq!(s, 201, "{job}");
    // A worker credential is worthless on the user API.
    let worker = std::fs::read_to_string(ws.path().join("state/worker-local.token")).unwrap();
    assert_eq!(ws.http_as(worker.trim(), "GET", "/api/v1/endpoints", None, &[]).0, 403);
    // And a user token cannot lease work.
    assert_eq!(ws.http("POST", "/worker/v1/lease", Some(json!({"node": "n", "process": 0, "wait_ms": 0})), &[]).0, 403);

    assert!(audited(&ws, "GET /api/v1/endpoints", "refused (401)"));
    assert!(audited(&ws, "POST /endpoints/aaa/jobs", "refused (403): a reader token cannot do this"));
    assert!(audited(&ws, "POST /endpoints/bbb/jobs", "refused (403): the token is scoped to endpoint `aaa`"));
    assert!(audited(&ws, "POST /api/v1/tokens", "refused (403)"));
    assert!(audited(&ws, "POST /worker/v1/lease", "refused (403)"));
    assert!(audited(&ws, "POST /endpoints/aaa/jobs", "ok (201)"));
    let entry = audit(&ws).into_iter().find(|e| e["outcome"].as_str().unwrap().contains("scoped to endpoint")).unwrap();
    assert_eq!(entry["source"], "127.0.0.1");
    assert!(entry["principal"].as_str().unwrap().ends_with("(invoker)"), "{entry}");
    // Only hashes are stored: no secret appears in the state database, its write-ahead log included
    // (where rows written while the control plane runs are), nor anywhere else under `state/` but the
    // files that hold the workspace's own credentials.
    let wal = ws.path().join("state/cove.db-wal");
    assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0), "the write-ahead log holds the recent rows");
    let mut scanned = 0;
    for entry in std::fs::read_dir(ws.path().join("state")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !entry.file_type().unwrap().is_file() || name.ends_with(".token") || name.ends_with(".secret") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        for secret in [&reader, &invoker_a, &contributor] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a token secret is in {name}");
        }
        scanned += 1;
    }
    assert!(scanned >= 2, "the database and its log were scanned");
}

const NETWORK: &str = "
public_network_access: disabled
networks:
  - name: workspace
    address_space: [127.0.0.1/32]
  - name: proxies
    address_space: [127.0.0.3/32]
  - name: compute
    address_space: [127.0.0.4/32]
  - name: lab
    address_space: [127.0.0.5/32]
peerings:
  - [workspace, proxies]
  - [workspace, compute]
private_endpoints:
  - name: api
    service: api
    address: 127.0.0.1:0
    network: workspace
trusted_proxies: [127.0.0.3/32]
computes:
  - name: cluster
    network: compute
";

fn from(
    ws: &Workspace,
    source: &str,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = https_builder_as(&ws.path(), identity_of(ws, token))
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", ws.url)).bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if method == "POST" {
            req = req.json(&json!({"node": "n", "process": 0, "wait_ms": 0}));
        }
        req.send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
    })
}

#[test]
fn connections_from_outside_the_private_networks_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(&config, NETWORK).unwrap();
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    let owner = ws.token();
    // The workspace's own network and a peered network are served.
    assert_eq!(from(&ws, "127.0.0.1", "GET", "/api/v1/endpoints", &owner, &[]), Ok(200));
    // An undeclared source, and a declared network that is not peered, are refused at connect.
    assert!(from(&ws, "127.0.0.9", "GET", "/api/v1/endpoints", &owner, &[]).is_err());
    assert!(from(&ws, "127.0.0.5", "GET", "/api/v1/endpoints", &owner, &[]).is_err());
    // A trusted proxy is believed about its client; anyone else's X-Forwarded-For is ignored.
    assert_eq!(
        from(&ws, "127.0.0.3", "GET", "/api/v1/endpoints", &owner, &[("x-forwarded-for", "127.0.0.1")]),
        Ok(200)
    );
    assert_eq!(
        from(&ws, "127.0.0.3", "GET", "/api/v1/endpoints", &owner, &[("x-forwarded-for", "127.0.0.9")]),
        Ok(403)
    );
    assert_eq!(
        from(&ws, "127.0.0.1", "GET", "/api/v1/endpoints", &owner, &[("x-forwarded-for", "127.0.0.9")]),
        Ok(200)
    );
    // A cluster's worker credential works only from the cluster's network.
    let worker = ws.credential("cluster");
    assert_eq!(from(&ws, "127.0.0.4", "POST", "/worker/v1/lease", &worker, &[]), Ok(200));
    assert_eq!(from(&ws, "127.0.0.1", "POST", "/worker/v1/lease", &worker, &[]), Ok(403));

    let entries = audit(&ws);
    let refused = |source: &str, what: &str| {
        entries.iter().any(|e| e["source"] == source && e["outcome"].as_str().unwrap().contains(what))
    };
    assert!(
        refused("127.0.0.9", "refused: source 127.0.0.9 is outside the workspace's private networks"),
        "{entries:#?}"
    );
    assert!(refused("127.0.0.5", "which is not peered"), "{entries:#?}");
    assert!(
        refused("127.0.0.9", "refused: source 127.0.0.9 is outside"),
        "the proxied client is audited under its own address"
    );
    assert!(refused("127.0.0.1", "accepted only from network `compute`"), "{entries:#?}");
    let shown = ws.cove(&[
        "endpoint",
        "create",
        "-f",
        &Project::new(ws.dir.path(), "privy", LIST_SCRIPT, "").file("endpoint.yml"),
    ]);
    shown.ok();
    let ep = ws.cove(&["endpoint", "show", "privy"]);
    assert!(
        ep.ok()
            .stdout
            .contains("Network access:     private: reachable only from networks compute, proxies, workspace"),
        "{}",
        ep.stdout
    );
    // diagnose: the cluster's network is peered, the listener is private; the owner token never expires.
    let diag = ws.cove(&["workspace", "diagnose"]);
    diag.ok();
    assert!(diag.stdout.contains("OK   public network access: disabled"), "{}", diag.stdout);
    assert!(diag.stdout.contains("OK   compute cluster reaches the API"), "{}", diag.stdout);
    assert!(diag.stdout.contains("WARN token expiry"), "{}", diag.stdout);
    assert!(
        diag.stdout.contains("OK   compute cluster workers answered: a worker reached the API from 127.0.0.4"),
        "{}",
        diag.stdout
    );
}

#[test]
fn diagnose_fails_with_the_fix_when_a_compute_network_cannot_reach_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(&config, NETWORK.replace("  - [workspace, compute]\n", "")).unwrap();
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 1, "{}", diag.stdout);
    assert!(diag.stdout.contains("FAIL compute cluster reaches the API: network compute is neither the workspace's network nor peered with it"), "{}", diag.stdout);
    assert!(
        diag.stdout.contains("fix: add a peering between compute and the API endpoint's network"),
        "{}",
        diag.stdout
    );
    // No worker of the cluster ever reached the API: diagnose cannot vouch for its network.
    assert!(
        diag.stdout.contains("WARN compute cluster workers answered: no worker of this compute has reached the API since the control plane started\n     fix: start a worker on network compute"),
        "{}",
        diag.stdout
    );
    assert!(diag.stdout.contains("WARN token expiry: tokens that never expire: "), "{}", diag.stdout);
    assert!(diag.stdout.contains("fix: create tokens with --expires-in and revoke these"), "{}", diag.stdout);
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, NETWORK.replace("address: 127.0.0.1:0", "address: 127.0.0.7:0")).unwrap();
    let out = std::process::Command::new(crate::support::COVE)
        .args(["up", "--dir"])
        .arg(dir.path().join("ws2"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("field `private_endpoints.api.address`: 127.0.0.7 is not in network `workspace`"));
}

/// Anyone who reaches a listener can be refused as often as they like. The audit log takes the first
/// refusals of each minute of each principal (or source without one) one by one and counts the rest
/// into one row each: a flood of bad tokens cannot grow the store without bound, it cannot hide another
/// principal's refusals, and none of it goes unrecorded, even when the control plane is killed before
/// the minute ends (the counts are kept as they grow, and the next start writes them).
#[test]
fn a_flood_of_refusals_is_counted_not_written_one_by_one() {
    let mut ws = Workspace::start();
    let reader = token(&ws, "reader", &[]);
    const FLOOD: usize = 300;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let statuses = |token: &'static str, n: usize, path: &'static str| {
        let client = https_builder_as(&ws.path(), None).build().unwrap();
        let url = format!("{}{path}", ws.url);
        rt.block_on(async move {
            let mut refused = 0;
            for _ in 0..n {
                let resp = client.post(&url).bearer_auth(token).json(&json!({"role": "owner"})).send().await;
                refused += usize::from([401, 403].contains(&resp.unwrap().status().as_u16()));
            }
            refused
        })
    };
    assert_eq!(statuses("cove_0_forged", FLOOD, "/api/v1/tokens"), FLOOD, "every request of the flood was refused");
    // Another principal, flooding too, still has its own refusals written one by one.
    let reader: &'static str = Box::leak(reader.into_boxed_str());
    assert_eq!(statuses(reader, 30, "/api/v1/tokens"), 30, "the reader may not create tokens");
    // Killed before the minute ends: nothing was summarised yet, and nothing is lost.
    ws.kill_server();
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let kept: i64 = db.query_row("SELECT COUNT(*) FROM refusal_counts", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, 2, "the counts of both floods were kept as they grew");
    ws.serve_again(&[]);
    ws.stop_server();
    let rows = |sql: &str| -> Vec<(String, String)> {
        db.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let one_by_one = rows(
        "SELECT principal, outcome FROM audit WHERE outcome LIKE 'refused (40%' AND action = 'POST /api/v1/tokens'",
    );
    let summaries =
        rows("SELECT principal, outcome FROM audit WHERE action = 'refusals counted, not written one by one'");
    let count_of = |who: &dyn Fn(&str) -> bool| -> (usize, i64) {
        let written = one_by_one.iter().filter(|(p, _)| who(p)).count();
        let counted = summaries
            .iter()
            .filter(|(p, _)| who(p))
            .map(|(_, s)| s.strip_prefix("refused ").and_then(|s| s.split(' ').next()).unwrap().parse::<i64>().unwrap())
            .sum();
        (written, counted)
    };
    let anonymous = count_of(&|p: &str| p.starts_with('-'));
    let of_reader = count_of(&|p: &str| p.ends_with("(reader)"));
    // Each has a budget of 20 a minute; a flood may straddle two minutes.
    for (who, (written, counted), sent) in [("the forged token", anonymous, FLOOD), ("the reader", of_reader, 30)] {
        assert!((20..=40).contains(&written), "{who}: {written} refusals written one by one");
        assert_eq!(written as i64 + counted, sent as i64, "{who}: every refusal is recorded: {summaries:?}");
    }
    assert!(summaries.iter().all(|(_, s)| s.contains("the last: refused (40")), "{summaries:?}");
    let left: i64 = db.query_row("SELECT COUNT(*) FROM refusal_counts", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "the start wrote the counts it found, once");
}

/// Any host of the private networks can open connections without a token and hold them: one address
/// holds at most 256 at once, so it cannot take every descriptor the control plane has, and the others
/// are served meanwhile; a closed connection gives its place back.
#[test]
fn one_address_cannot_hold_every_connection() {
    use std::io::Read;
    let ws = Workspace::start();
    let port: u16 = ws.url.rsplit(':').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connect_from = |source: &str| {
        rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            let stream = socket.connect((std::net::Ipv4Addr::LOCALHOST, port).into()).await.unwrap();
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
        })
    };
    let held: Vec<std::net::TcpStream> = (0..256).map(|_| connect_from("127.0.0.5")).collect();
    // The next one from that address is closed at once, before a byte is read.
    let mut one_more = connect_from("127.0.0.5");
    one_more.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    let read = one_more.read(&mut byte);
    let closed =
        matches!(&read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed, "the 257th connection was held open: {read:?}");
    // Another address is served meanwhile.
    let get_from = |source: &str| {
        rt.block_on(async {
            let client = https_builder_as(&ws.path(), None)
                .local_address(source.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap();
            let resp = client.get(format!("{}/api/v1/endpoints", ws.url)).bearer_auth(ws.token().trim()).send().await;
            resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        })
    };
    assert_eq!(get_from("127.0.0.6"), Ok(200));
    assert!(audited(&ws, "connect", "127.0.0.5 holds 256 connections already"), "{:#?}", audit(&ws));
    // Closed, they give their places back.
    drop(held);
    let started = std::time::Instant::now();
    while get_from("127.0.0.5") != Ok(200) {
        assert!(started.elapsed().as_secs() < 10, "the closed connections kept their places");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
