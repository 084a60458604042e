//! Storage faults and reruns: a full output datastore fails the job honestly with nothing partial
//! published, and `cove job rerun --failed-only` scores only what failed.

use crate::support::{Project, Workspace};
use std::process::Command;

/// A tiny tmpfs mounted over a folder of the workspace's datastore, unmounted when dropped.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(at: &std::path::Path, size: &str) -> TinyDisk {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cove-test"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        TinyDisk(at.to_path_buf())
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

const BIG_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    return [os.path.basename(p) + " " + "x" * 1000 for p in mini_batch for _ in range(20)]
"#;

#[test]
fn a_full_output_datastore_fails_the_job_with_the_reason_and_publishes_nothing() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "fullness", BIG_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let full = ws.path().join("datastores/workspaceblobstore/full");
    let _disk = TinyDisk::mount(&full, "64k");
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "fullness",
        "--input",
        &p.inputs(10).display().to_string(),
        "--output-path",
        "azureml://datastores/workspaceblobstore/paths/full/out",
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed", "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("failed to write the output") && error.contains("No space left on device"), "{error}");
    let left: Vec<String> = walk(&full);
    assert!(left.is_empty(), "nothing partial stays in the output location: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

const PICKY_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    out = []
    for p in mini_batch:
        text = open(p).read().strip()
        if text == "bad":
            raise ValueError(f"{os.path.basename(p)} is bad")
        out.append(f"{os.path.basename(p)} {text}")
    return out
"#;

#[test]
fn rerun_failed_only_scores_just_the_failed_items() {
    let ws = Workspace::start();
    let p =
        Project::new(ws.dir.path(), "picky", PICKY_SCRIPT, "mini_batch_size: 1\nretry_settings:\n    max_retries: 1");
    p.deploy(&ws);
    let data = p.inputs(4);
    std::fs::write(data.join("file-002.txt"), "bad\n").unwrap();
    let run = ws.cove(&["--json", "endpoint", "invoke", "picky", "--input", &data.display().to_string()]);
    let first = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(first["status"], "Completed");
    assert_eq!(ws.output_lines(&first), vec!["file-000.txt 0", "file-001.txt 1", "file-003.txt 3"]);
    // The bad file is mended where the job read it, then only it is scored again.
    let input =
        first["input"]["uri"].as_str().unwrap().strip_prefix("azureml://datastores/workspaceblobstore/paths/").unwrap();
    let folder = ws.path().join("datastores/workspaceblobstore").join(input);
    std::fs::write(folder.join("file-002.txt"), "2\n").unwrap();
    // The folder changes meanwhile: a file that sorts before the failed one, and one of the files that
    // succeeded is gone. The rerun's plan is the failed files themselves, not the folder as it is now.
    std::fs::write(folder.join("file-0015.txt"), "15\n").unwrap();
    std::fs::remove_file(folder.join("file-000.txt")).unwrap();
    let rerun = ws.cove(&["--json", "job", "rerun", first["name"].as_str().unwrap(), "--failed-only"]);
    let second = ws.wait_job(rerun.ok().json()["name"].as_str().unwrap());
    assert_eq!(second["status"], "Completed", "{second:#}");
    assert_eq!(second["progress"]["files_total"], 1);
    assert_eq!(ws.output_lines(&second), vec!["file-002.txt 2"]);
    // A whole rerun scores every input again, into its own output.
    let all = ws.cove(&["--json", "job", "rerun", first["name"].as_str().unwrap()]);
    let third = ws.wait_job(all.ok().json()["name"].as_str().unwrap());
    assert_eq!(ws.output_lines(&third), vec!["file-001.txt 1", "file-0015.txt 15", "file-002.txt 2", "file-003.txt 3"]);
    ws.cove(&["job", "rerun", second["name"].as_str().unwrap(), "--failed-only"])
        .fails_with(2, "has no failed mini-batch to rerun");
}

const SLOW_FIRST: &str = r#"
import os, time

def init():
    pass

def run(mini_batch):
    if any(os.path.basename(p) == "file-000.txt" for p in mini_batch):
        print("first", flush=True)
        time.sleep(3)
    return [os.path.basename(p) for p in mini_batch]
"#;

#[test]
fn an_input_file_that_cannot_be_read_fails_its_items_with_the_reason() {
    let ws = Workspace::start();
    let p =
        Project::new(ws.dir.path(), "vanish", SLOW_FIRST, "mini_batch_size: 1\nretry_settings:\n    max_retries: 2");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "vanish", "--input", &p.inputs(3).display().to_string()]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    let input = run.json()["input"]["uri"]
        .as_str()
        .unwrap()
        .strip_prefix("azureml://datastores/workspaceblobstore/paths/")
        .unwrap()
        .to_string();
    // While the first mini-batch runs, the last input file disappears from the datastore.
    let log = ws
        .path()
        .join("compute/local")
        .join(&name)
        .join("local-0/jobs")
        .join(&name)
        .join("logs/user/stdout/local-0/process000.stdout.txt");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("first") {
        assert!(start.elapsed().as_secs() < 60, "the first mini-batch never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_file(ws.path().join("datastores/workspaceblobstore").join(&input).join("file-002.txt")).unwrap();
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job), vec!["file-000.txt", "file-001.txt"]);
    assert_eq!(job["progress"]["items_failed"], 1);
    let reason = job["failed_batches"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("cannot read input file") && reason.contains("file-002.txt"), "{reason}");
}

#[test]
fn hostile_input_file_names_are_refused_or_failed_with_the_reason() {
    let ws = Workspace::start();
    let script = "import os\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    return [repr(os.path.basename(p)) for p in mini_batch]\n";
    let p = Project::new(ws.dir.path(), "names", script, "mini_batch_size: 1\nretry_settings:\n    max_retries: 1");
    p.deploy(&ws);
    let store = ws.path().join("datastores/workspaceblobstore");
    // A name with a control character cannot be addressed in a datastore: the invocation names it.
    std::fs::create_dir_all(store.join("newline")).unwrap();
    std::fs::write(store.join("newline/odd\nname.txt"), "x").unwrap();
    ws.cove(&["endpoint", "invoke", "names", "--input", "azureml://datastores/workspaceblobstore/paths/newline"])
        .fails_with(2, "cannot be listed")
        .fails_with(2, "odd");
    assert_eq!(ws.job_count(), 0);
    // A name no scorer can be handed as a plain file fails its mini-batch with the reason.
    std::fs::create_dir_all(store.join("odd-names")).unwrap();
    for name in ["normal.txt", "back\\slash.txt", "with space.txt"] {
        std::fs::write(store.join("odd-names").join(name), "x").unwrap();
    }
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "names",
        "--input",
        "azureml://datastores/workspaceblobstore/paths/odd-names",
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job), vec!["'normal.txt'", "'with space.txt'"]);
    let reason = job["failed_batches"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("`back\\slash.txt` is not a plain file name"), "{reason}");
    // An input folder that is a link is not followed (a link planted in a shared folder could point at
    // the owner's files): the invocation says so.
    std::os::unix::fs::symlink(store.join("odd-names"), store.join("linked")).unwrap();
    ws.cove(&["endpoint", "invoke", "names", "--input", "azureml://datastores/workspaceblobstore/paths/linked"])
        .fails_with(2, "cannot be listed: it is, or lies behind, a symbolic link");
}
