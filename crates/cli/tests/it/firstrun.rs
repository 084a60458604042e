//! A first run as a new user makes it: the README's tour with a relative workspace folder, a second
//! `cove up` on a workspace that is already served, and a scoring script that dies in `init()`.

use crate::support::{Project, Workspace, COVE, LIST_SCRIPT};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `cove up --dir ./ws` as the tour has it: relative paths are made absolute before they reach the
/// workers and the sandbox, so a scoring-script deployment runs; a second `cove up` on the same
/// workspace is refused, naming the running one, and does not take its place.
#[test]
fn the_tour_runs_with_a_relative_workspace_and_one_control_plane_per_workspace() {
    let cwd = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut up = Command::new(COVE)
        .args(["up", "--dir", "./ws", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("cove up exited before listening").unwrap();
        if let Some(url) = line.strip_prefix("API and scoring URIs: ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let cove = |args: &[&str]| {
        let out = Command::new(COVE)
            .args(["--workspace", "./ws"])
            .args(args)
            .current_dir(cwd.path())
            .env("CI", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let p = Project::new(cwd.path(), "tour", LIST_SCRIPT, "");
    for args in [
        vec!["endpoint", "create", "-f", &p.file("endpoint.yml")],
        vec!["deployment", "create", "-f", &p.file("deployment.yml"), "--set-default"],
    ] {
        let (code, out, err) = cove(&args);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let data = p.inputs(3).display().to_string();
    let (code, out, err) = cove(&["endpoint", "invoke", "tour", "--input", &data, "--stream"]);
    assert_eq!(code, Some(0), "a scoring-script job runs in a relative workspace:\n{out}{err}");
    assert!(out.contains("Status:       Completed"), "{out}");

    let second = Command::new(COVE)
        .args(["up", "--dir", "./ws", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    let abs = cwd.path().join("ws");
    let holder = format!("pid {}, serving {url}", up.id());
    assert!(
        err.contains(&format!("workspace {} is already served by a running control plane ({holder})", abs.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(abs.join("state/url")).unwrap(), url, "the running one's URL stands");
    let (code, _, err) = cove(&["endpoint", "list"]);
    assert_eq!(code, Some(0), "the first control plane still serves: {err}");
    Command::new("kill").arg("-TERM").arg(up.id().to_string()).status().unwrap();
    up.wait().unwrap();
}

const DIES_IN_INIT: &str = r#"
import os, sys

def init():
    sys.stderr.write("fatal: the model file is missing\n")
    sys.stderr.flush()
    os._exit(3)

def run(mini_batch):
    return mini_batch
"#;

/// A scorer that dies in `init()` without a traceback: `cove job show` gives the end of its stderr,
/// so the reason is not only in a log file.
#[test]
fn a_scorer_that_dies_in_init_is_explained_by_its_stderr() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "dies", DIES_IN_INIT, "");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "dies", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed");
    let shown = ws.cove(&["job", "show", job["name"].as_str().unwrap()]);
    assert!(
        shown.stdout.contains(
            "the scorer process exited with code 3 during init(); its stderr ends: fatal: the model file is missing"
        ),
        "{}",
        shown.stdout
    );
}
