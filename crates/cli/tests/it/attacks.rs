//! The attack suite: every principal plays the attacker. Hostile scoring code, an invoker scoped to
//! another endpoint, a worker credential of another compute, a contributor with a hostile model or
//! conda file, and a local user of the host each try what they must not be able to do. Each test
//! asserts the exact refusal, proves that its attack was really made (a link that was never created
//! would prove nothing), and scans what the job published and every log for the workspace's secrets.

use crate::support::{https_builder_as, identity_of, Project, Workspace, LIST_SCRIPT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Every secret of the workspace: the owner token, every worker credential and datastore secret, and
/// every private key under `tls/` (the CA's, the listeners', each compute's), each searched for by every
/// line of its PEM body, so a key leaked in part is found too.
fn secrets(ws: &Workspace) -> Vec<String> {
    let mut out = vec![ws.token()];
    for entry in std::fs::read_dir(ws.path().join("state")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".token") || name.ends_with(".secret") {
            out.push(std::fs::read_to_string(entry.path()).unwrap().trim().to_string());
        }
    }
    let mut keys = 0;
    for entry in std::fs::read_dir(ws.path().join("tls")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".key") {
            keys += 1;
            let pem = std::fs::read_to_string(entry.path()).unwrap();
            out.extend(pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_string));
        }
    }
    assert!(keys >= 2, "the CA's and the listeners' keys are among the secrets");
    assert!(out.iter().all(|s| s.len() >= 16), "every secret is long enough to search for: {out:?}");
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Scans everything a job published (its output location and everything `cove job download --all`
/// gets), its logs, and what `job show` says, for every secret of the workspace.
fn assert_nothing_leaked(ws: &Workspace, job: &Value) {
    let name = job["name"].as_str().unwrap();
    let mut scanned: Vec<(String, Vec<u8>)> = vec![("job show".into(), job.to_string().into_bytes())];
    let uri = job["output_uri"].as_str().unwrap();
    let (ds, rel) = uri.strip_prefix("azureml://datastores/").unwrap().split_once("/paths/").unwrap();
    let published = ws.path().join("datastores").join(ds).join(rel);
    let logs = ws.path().join("state/objects/jobs").join(name).join("logs");
    let dl = ws.dir.path().join(format!("scan-{name}"));
    let _ = ws.cove(&["job", "download", name, "--all", "--download-path", &dl.display().to_string()]);
    for file in [files_under(&published), files_under(&logs), files_under(&dl)].concat() {
        scanned.push((file.display().to_string(), std::fs::read(&file).unwrap_or_default()));
    }
    assert!(files_under(&logs).len() >= 3, "the job's logs were written and scanned: {}", logs.display());
    for secret in secrets(ws) {
        for (what, bytes) in &scanned {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a workspace secret is in {what}");
        }
    }
}

/// Sends one request from `source` with `token`: JSON or raw bytes; returns the status and the body.
fn call(ws: &Workspace, source: &str, token: &str, method: &str, path: &str, body: Body) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = https_builder_as(&ws.path(), identity_of(ws, token))
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", ws.url)).bearer_auth(token);
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Bytes(b) => req.body(b),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
}

enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}

/// A worker's report body (`POST /worker/v1/reports`): each lease reported succeeded with `part`.
fn report_bundle(leases: &[&str], part: &str) -> Vec<u8> {
    let reports: Vec<Value> = leases
        .iter()
        .map(|l| json!({"lease_id": l, "part": true, "completion": {"outcome": "succeeded", "items_ok": 1, "elapsed_ms": 1, "pid": 1}}))
        .collect();
    let head = serde_json::to_vec(&json!({ "reports": reports })).unwrap();
    let mut body = Vec::new();
    for item in std::iter::once(&head[..]).chain(leases.iter().map(|_| part.as_bytes())) {
        cove_api::worker::bundle::push(&mut body, Ok(item));
    }
    body
}

#[track_caller]
fn refused(got: (u16, Value), status: u16, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "the refusal {message:?} lacks {needle:?}");
}

/// Writes an endpoint and a no-code ONNX deployment of `model` (the model folder holds it as
/// `model.onnx`); returns the project folder.
fn no_code_project(ws: &Workspace, endpoint: &str, model: &[u8]) -> PathBuf {
    let root = ws.dir.path().join(endpoint);
    std::fs::create_dir_all(root.join("model")).unwrap();
    std::fs::write(root.join("model/model.onnx"), model).unwrap();
    std::fs::write(root.join("endpoint.yml"), format!("name: {endpoint}\n")).unwrap();
    let deployment = format!(
        "name: onnx\nendpoint_name: {endpoint}\ntype: model\nmodel:\n  path: model\n  type: onnx_model\ncompute: azureml:local\n"
    );
    std::fs::write(root.join("deployment.yml"), deployment).unwrap();
    root
}

/// The control plane's peak resident memory, in MiB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

const LEFTOVERS_SCRIPT: &str = r#"
import os, sys, __main__

TOKEN = os.environ["TOKEN_PATH"]
OUT = os.environ["AZUREML_BI_OUTPUT_PATH"]
original_write_result = __main__.write_result
LOG = os.readlink("/proc/self/fd/1")

def init():
    pass

def linked_part(result, path):
    # The driver's own function, patched: the part becomes a link to the owner token.
    __main__.write_result = original_write_result
    os.symlink(TOKEN, path)
    sys.stderr.write("attack: the part is a link\n")
    return len(result)

def run(mini_batch):
    kind = open(mini_batch[0]).read().strip()
    log = LOG
    if kind == "stdout-link":
        os.remove(log)
        os.symlink(TOKEN, log)
        sys.stderr.write("attack: the stdout log is a link\n")
    elif kind == "stdout-fifo":
        os.remove(log)
        os.mkfifo(log)
        sys.stderr.write("attack: the stdout log is a fifo\n")
    elif kind == "part-link":
        __main__.write_result = linked_part
    elif kind == "output-link":
        os.symlink(TOKEN, os.path.join(OUT, "stolen.txt"))
    elif kind == "output-hardlink":
        with open(os.path.join(OUT, "a.txt"), "w") as f:
            f.write("x")
        os.link(os.path.join(OUT, "a.txt"), os.path.join(OUT, "b.txt"))
    elif kind == "output-fifo":
        os.mkfifo(os.path.join(OUT, "pipe"))
    elif kind == "output-huge":
        with open(os.path.join(OUT, "huge.bin"), "wb") as f:
            f.truncate(600 * 1024 * 1024)
    elif kind == "output-many":
        for i in range(10001):
            with open(os.path.join(OUT, f"{i}.txt"), "w") as f:
                f.write("x")
    elif kind == "output-heavy":
        # Each file within the limit, together more than an attempt may leave (sparse: no disk used).
        for i in range(9):
            with open(os.path.join(OUT, f"{i}.bin"), "wb") as f:
                f.truncate(500 * 1024 * 1024)
    elif kind == "write-outside":
        for target in [TOKEN, os.path.join(os.path.dirname(TOKEN), "state", "cove.db")]:
            try:
                with open(target, "a") as f:
                    f.write("pwned")
                sys.stderr.write(f"attack: wrote {target}\n")
            except OSError as e:
                sys.stderr.write(f"attack: cannot write outside: {type(e).__name__}\n")
    sys.stderr.flush()
    return [f"{kind} done"]
"#;

/// Hole 1: what a scorer leaves behind (its stdout log, its result part, the files in
/// `AZUREML_BI_OUTPUT_PATH`) is hostile input; links, hard links, FIFOs, huge files, and more files or
/// bytes than an attempt may leave are refused before the worker reads any of them, so
/// no link to the owner token is ever followed by the worker outside the sandbox.
#[test]
fn scoring_code_cannot_make_the_worker_read_for_it() {
    let ws = Workspace::start();
    let token_path = ws.path().join("owner.token");
    let settings = format!(
        "mini_batch_size: 1\nerror_threshold: -1\nretry_settings:\n    max_retries: 1\n    timeout: 60\n\
         environment_variables:\n    TOKEN_PATH: {}",
        token_path.display()
    );
    let p = Project::new(ws.dir.path(), "leftovers", LEFTOVERS_SCRIPT, &settings);
    p.deploy(&ws);
    let kinds = [
        "benign",
        "stdout-link",
        "stdout-fifo",
        "part-link",
        "output-link",
        "output-hardlink",
        "output-fifo",
        "output-huge",
        "output-many",
        "output-heavy",
        "write-outside",
    ];
    let data = p.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, kind) in kinds.iter().enumerate() {
        std::fs::write(data.join(format!("{i:02}-{kind}.txt")), kind).unwrap();
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "leftovers", "--input", &data.display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    let name = job["name"].as_str().unwrap();
    let reasons: Vec<(String, String)> = job["failed_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["first_file"].as_str().unwrap().to_string(), b["reason"].as_str().unwrap().to_string()))
        .collect();
    let reason = |kind: &str| -> String {
        reasons
            .iter()
            .find(|(f, _)| f.ends_with(&format!("-{kind}.txt")))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("mini-batch {kind} did not fail: {job:#}"))
    };
    assert_eq!(
        reason("part-link"),
        "the scorer's result part was refused: it is a symbolic link, not a regular file the scorer wrote (attempt 1 of 1)"
    );
    assert_eq!(
        reason("output-link"),
        "the output file `stolen.txt` that run() left in AZUREML_BI_OUTPUT_PATH was refused: it is a symbolic link, \
         not a regular file the scorer wrote (attempt 1 of 1)"
    );
    assert!(reason("output-hardlink").contains("a file with 2 names (a hard link)"), "{}", reason("output-hardlink"));
    assert!(
        reason("output-fifo").contains("`pipe` that run() left in AZUREML_BI_OUTPUT_PATH was refused: it is a FIFO")
    );
    assert!(reason("output-huge").contains("it is 629145600 bytes, more than the limit of 536870912"));
    assert!(
        reason("output-many").starts_with(
            "run() left more than 10000 files in AZUREML_BI_OUTPUT_PATH, the most one mini-batch may leave"
        ),
        "{}",
        reason("output-many")
    );
    assert!(
        reason("output-heavy").starts_with(
            "the files run() left in AZUREML_BI_OUTPUT_PATH hold more than 4294967296 bytes, the most one mini-batch may leave"
        ),
        "{}",
        reason("output-heavy")
    );
    assert_eq!(reasons.len(), 7, "exactly the seven hostile results failed: {reasons:?}");
    // The attacks on the stdout log really happened: the script says so in its stderr log.
    let stderr = ws.log(name, "user/stderr/local-0/process000.stderr.txt");
    for said in ["attack: the stdout log is a link", "attack: the stdout log is a fifo", "attack: the part is a link"] {
        assert!(stderr.contains(said), "{said:?} missing from stderr:\n{stderr}");
    }
    // Both writes outside its view were tried. What the script thinks happened is not the test: with the
    // workspace under /tmp, a write may land in the sandbox's own private /tmp and look like success.
    // The files themselves are: the token and the state store are as they were.
    let tried = stderr.matches("attack: cannot write outside").count() + stderr.matches("attack: wrote").count();
    assert_eq!(tried, 2, "both writes were tried:\n{stderr}");
    assert_eq!(std::fs::read_to_string(&token_path).unwrap().trim(), ws.token().trim());
    let db = std::fs::read(ws.path().join("state/cove.db")).unwrap();
    assert!(!db.ends_with(b"pwned"), "the script wrote into the state store");
    assert_nothing_leaked(&ws, &job);
}

const LINGERING_SCRIPT: &str = r#"
import os, subprocess, sys, time

TOKEN = os.environ["TOKEN_PATH"]
OUT = os.environ["AZUREML_BI_OUTPUT_PATH"]
CHILD = """
import os, sys, time
out, token = sys.argv[1], sys.argv[2]
while True:
    link = os.path.join(out, "late-link")
    if not os.path.lexists(link):
        os.symlink(token, link)
    time.sleep(0.02)
"""

def init():
    pass

def run(mini_batch):
    kind = open(mini_batch[0]).read().strip()
    if kind == "lingering-child":
        # A child that outlives run() and keeps planting a link where the next attempt's files go.
        subprocess.Popen([sys.executable, "-c", CHILD, OUT, TOKEN])
        sys.stderr.write("attack: a child outlives run()\n")
        sys.stderr.flush()
    elif kind == "never-answers":
        time.sleep(3600)
    else:
        time.sleep(0.3)
    return [kind]
"#;

/// Scoring code that leaves a process behind to tamper with later attempts' results, and scoring code
/// that never answers: the worker refuses what the child planted, the silent scorer is stopped at its
/// timeout, and nothing of the workspace's secrets is published.
#[test]
fn a_child_that_outlives_run_and_a_scorer_that_never_answers_are_contained() {
    let ws = Workspace::start();
    let token_path = ws.path().join("owner.token");
    let settings = format!(
        "mini_batch_size: 1\nerror_threshold: -1\nretry_settings:\n    max_retries: 1\n    timeout: 3\n\
         environment_variables:\n    TOKEN_PATH: {}",
        token_path.display()
    );
    let p = Project::new(ws.dir.path(), "lingering", LINGERING_SCRIPT, &settings);
    p.deploy(&ws);
    let data = p.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, kind) in ["lingering-child", "benign", "never-answers"].iter().enumerate() {
        std::fs::write(data.join(format!("{i:02}-{kind}.txt")), kind).unwrap();
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "lingering", "--input", &data.display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    let reasons: Vec<String> =
        job["failed_batches"].as_array().unwrap().iter().map(|b| b["reason"].as_str().unwrap().to_string()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "the output file `late-link` that run() left in AZUREML_BI_OUTPUT_PATH was refused: it is a symbolic link"
        )),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("run() timed out")), "{reasons:?}");
    let stderr = ws.log(job["name"].as_str().unwrap(), "user/stderr/local-0/process000.stderr.txt");
    assert!(stderr.contains("attack: a child outlives run()"), "{stderr}");
    assert_nothing_leaked(&ws, &job);
}

const STAGING_SCRIPT: &str = r#"
import os
OUT = os.environ["AZUREML_BI_OUTPUT_PATH"]
calls = {}

def init():
    pass

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    kind = open(mini_batch[0]).read().strip()
    calls[name] = calls.get(name, 0) + 1
    with open(os.path.join(OUT, f"from-{name}-{calls[name]}"), "w") as f:
        f.write(kind)
    if kind == "fail" or (kind == "flaky" and calls[name] == 1):
        raise RuntimeError(f"{kind} fails")
    return [name]
"#;

/// Hole 7: files a script writes to `AZUREML_BI_OUTPUT_PATH` are staged per attempt and published
/// only for committed attempts, with the output file, when the job completes; a failed job publishes
/// nothing, and the outputs routes serve exactly what was published.
#[test]
fn only_committed_attempts_of_completed_jobs_publish() {
    let ws = Workspace::start();
    let settings = "mini_batch_size: 1\nretry_settings:\n    max_retries: 2\n    timeout: 60";
    let p = Project::new(ws.dir.path(), "staging", STAGING_SCRIPT, settings);
    p.deploy(&ws);
    let folder = |name: &str, files: &[(&str, &str)]| {
        let dir = p.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, kind) in files {
            std::fs::write(dir.join(f), kind).unwrap();
        }
        dir.display().to_string()
    };
    let good = folder("good", &[("a.txt", "ok"), ("b.txt", "flaky")]);
    let run = ws.cove(&["--json", "endpoint", "invoke", "staging", "--input", &good, "--set", "error_threshold=0"]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let attempts: Vec<&Value> = job["attempts"].as_array().unwrap().iter().collect();
    assert!(attempts.iter().any(|a| a["outcome"] == "failed"), "the flaky mini-batch failed once: {attempts:?}");
    let name = job["name"].as_str().unwrap();
    let (status, listed) = ws.http("GET", &format!("/api/v1/jobs/{name}/outputs/score"), None, &[]);
    assert_eq!(status, 200);
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        ["from-a.txt-1", "from-b.txt-2", "predictions.csv"],
        "the failed attempt's file is not published"
    );
    let on_disk: Vec<String> = files_under(&ws.path().join("datastores/workspaceblobstore/azureml").join(name))
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(on_disk.len(), 3, "{on_disk:?}");
    // The two committed attempts' files were staged (a failed attempt's never leaves its worker), and
    // neither staged copy is kept once the job has ended.
    staged_then_collected(&ws, name, 2);

    let bad = folder("bad", &[("a.txt", "ok"), ("c.txt", "fail")]);
    let run = ws.cove(&["--json", "endpoint", "invoke", "staging", "--input", &bad, "--set", "error_threshold=0"]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed", "{job:#}");
    let name = job["name"].as_str().unwrap();
    let left = files_under(&ws.path().join("datastores/workspaceblobstore/azureml").join(name));
    assert!(left.is_empty(), "a failed job published {left:?}");
    // The succeeded mini-batch's file was staged (so there was something to publish), and not
    // published; with the job ended, the staged copy is gone too.
    staged_then_collected(&ws, name, 1);
    let (status, listed) = ws.http("GET", &format!("/api/v1/jobs/{name}/outputs/score"), None, &[]);
    assert_eq!((status, listed), (200, json!([])));
    refused(
        call(
            &ws,
            "127.0.0.1",
            &ws.token(),
            "GET",
            &format!("/api/v1/jobs/{name}/outputs/score/from-a.txt-1"),
            Body::None,
        ),
        404,
        "is not in output `score`",
    );
    assert_nothing_leaked(&ws, &job);
}

/// Checks that `files` script-written files of `job` were staged, and that none of them is left now
/// that the job has ended (its end deletes them, soon after the job's status changes).
fn staged_then_collected(ws: &Workspace, job: &str, files: i64) {
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let staged: i64 = db.query_row("SELECT SUM(outputs) FROM attempts WHERE job = ?1", [job], |r| r.get(0)).unwrap();
    assert_eq!(staged, files, "files staged by the job's attempts");
    let outputs = ws.path().join("state/objects/jobs").join(job).join("outputs");
    let started = std::time::Instant::now();
    while !files_under(&outputs).is_empty() {
        assert!(started.elapsed().as_secs() < 10, "an ended job's staged files stay: {:?}", files_under(&outputs));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Holes 2 and 3: an invoker scoped to one endpoint changes only what the reference lets a caller
/// change per job, and names only locations its scope owns; outputs routes serve only what a job
/// published.
#[test]
fn an_invoker_reaches_nothing_its_scope_does_not_own() {
    let ws = Workspace::start();
    let owner = ws.token();
    let victim = Project::new(ws.dir.path(), "victim", LIST_SCRIPT, "");
    victim.deploy(&ws);
    let mallory =
        Project::new(ws.dir.path(), "mallory", LIST_SCRIPT, "mini_batch_size: 2\njob_environment_variables: [SEED]");
    mallory.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "victim", "--input", &victim.inputs(3).display().to_string()]);
    let victim_job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(victim_job["status"], "Completed");
    let victim_input = victim_job["input"]["uri"].as_str().unwrap().to_string();
    let victim_output = victim_job["output_uri"].as_str().unwrap().to_string();
    let (_, models) = ws.http("GET", "/api/v1/models?name=victim-model", None, &[]);
    let victim_model = models[0]["path"].as_str().unwrap().to_string();
    let (status, token) =
        ws.http("POST", "/api/v1/tokens", Some(json!({"role": "invoker", "endpoint": "mallory"})), &[]);
    assert_eq!(status, 201, "{token}");
    let mal = token["secret"].as_str().unwrap().to_string();
    // Mallory's own uploaded input, made through the CLI's upload path.
    let mal_input = {
        let rel = format!("LocalUpload/mallory-{}/data/x.txt", std::process::id());
        let got = call(
            &ws,
            "127.0.0.1",
            &mal,
            "PUT",
            &format!("/api/v1/datastores/workspaceblobstore/files/{rel}"),
            Body::Bytes(b"1\n".to_vec()),
        );
        assert_eq!(got.0, 201, "{}", got.1);
        format!("azureml://datastores/workspaceblobstore/paths/{}", rel.trim_end_matches("/x.txt"))
    };
    let invoke = |endpoint: &str, body: Value| {
        call(&ws, "127.0.0.1", &mal, "POST", &format!("/endpoints/{endpoint}/jobs"), Body::Json(body))
    };
    let input = |uri: &str| json!({"uri": uri, "type": "uri_folder"});

    // Per-job environment: never a variable that starts code, never one the deployment does not list.
    for var in ["PYTHONWARNINGS", "BROWSER", "BASH_ENV", "LD_PRELOAD", "PYTHONSTARTUP"] {
        let got = invoke(
            "mallory",
            json!({"input": input(&mal_input), "overrides": {format!("environment_variables.{var}"): "x"}}),
        );
        refused(got, 400, "changes how the interpreter or the loader starts; it can never be set per job");
    }
    let got = invoke("mallory", json!({"input": input(&mal_input), "overrides": {"environment_variables.OTHER": "1"}}));
    refused(got, 400, "the deployment's settings.job_environment_variables does not list it (it lists SEED)");
    let got =
        invoke("mallory", json!({"input": input(&mal_input), "overrides": {"max_concurrency_per_instance": "64"}}));
    refused(got, 400, "unknown setting `max_concurrency_per_instance`");
    let got = invoke("victim", json!({"input": input(&mal_input)}));
    refused(got, 403, "the token is scoped to endpoint `mallory`");

    // Output locations: never the root, only under the scope's prefix, never someone else's.
    let root = "azureml://datastores/workspaceblobstore/paths/";
    refused(invoke("mallory", json!({"input": input(&mal_input), "output_path": root})), 400, "is a datastore's root");
    refused(
        invoke("mallory", json!({"input": input(&mal_input), "output_path": victim_model.clone()})),
        403,
        "writes job outputs only under azureml://datastores/workspaceblobstore/paths/endpoints/mallory/",
    );
    let inside_victim = format!("{victim_output}/more");
    let got = call(
        &ws,
        "127.0.0.1",
        &owner,
        "POST",
        "/endpoints/victim/jobs",
        Body::Json(json!({"input": input(&victim_input), "output_path": inside_victim})),
    );
    refused(got, 409, &format!("is the output location of job `{}`", victim_job["name"].as_str().unwrap()));
    let model_sub = format!("{victim_model}/sub");
    let got = call(
        &ws,
        "127.0.0.1",
        &owner,
        "POST",
        "/endpoints/victim/jobs",
        Body::Json(json!({"input": input(&victim_input), "output_path": model_sub})),
    );
    refused(got, 409, "holds the registered files of model `victim-model` version 1");

    // Inputs: never registered files, never another endpoint's uploads or outputs, never the root.
    refused(invoke("mallory", json!({"input": input(root)})), 403, "registered files are never a job's input");
    refused(invoke("mallory", json!({"input": input(&victim_model)})), 403, "registered files are never a job's input");
    refused(invoke("mallory", json!({"input": input(&victim_output)})), 403, "(another endpoint's job output)");
    refused(
        invoke("mallory", json!({"input": input(&victim_input)})),
        403,
        "(another scope's upload), which a token scoped to endpoint `mallory` does not own",
    );
    refused(
        call(
            &ws,
            "127.0.0.1",
            &mal,
            "GET",
            &format!("/api/v1/jobs/{}/outputs/score", victim_job["name"].as_str().unwrap()),
            Body::None,
        ),
        403,
        "scoped to endpoint `mallory`",
    );

    // Uploads: never into registered files or another token's upload, whoever asks.
    let model_rel = victim_model.strip_prefix(root).unwrap();
    let into_model = format!("/api/v1/datastores/workspaceblobstore/files/{model_rel}/evil.txt");
    // (A registered model's files lie outside any upload folder, where an invoker may not upload at all.)
    for (token, why) in [(&mal, "needs the contributor role"), (&owner, "holds the registered files of model")] {
        refused(call(&ws, "127.0.0.1", token, "PUT", &into_model, Body::Bytes(b"evil".to_vec())), 403, why);
    }
    let victim_rel = victim_input.strip_prefix(root).unwrap();
    let into_upload = format!("/api/v1/datastores/workspaceblobstore/files/{victim_rel}/evil.txt");
    refused(
        call(&ws, "127.0.0.1", &mal, "PUT", &into_upload, Body::Bytes(b"evil".to_vec())),
        403,
        "is an upload of another token",
    );
    let model_files = files_under(&ws.path().join("datastores/workspaceblobstore").join(model_rel));
    assert!(model_files.iter().all(|f| !f.ends_with("evil.txt")), "{model_files:?}");

    // A reader changes nothing: no invocation, no upload, no cancel, no rerun.
    let (_, reader) = ws.http("POST", "/api/v1/tokens", Some(json!({"role": "reader"})), &[]);
    let reader = reader["secret"].as_str().unwrap().to_string();
    let victim_name = victim_job["name"].as_str().unwrap();
    let by_reader = |method: &str, path: &str, body: Body| call(&ws, "127.0.0.1", &reader, method, path, body);
    refused(
        by_reader("POST", "/endpoints/victim/jobs", Body::Json(json!({"input": input(&victim_input)}))),
        403,
        "it needs the invoker role",
    );
    refused(
        by_reader("PUT", "/api/v1/datastores/workspaceblobstore/files/LocalUpload/r/x.txt", Body::Bytes(b"x".to_vec())),
        403,
        "it needs the invoker role",
    );
    refused(
        by_reader("POST", &format!("/api/v1/jobs/{victim_name}/cancel"), Body::None),
        403,
        "it needs the invoker role",
    );
    refused(
        by_reader("POST", &format!("/api/v1/jobs/{victim_name}/rerun"), Body::None),
        403,
        "it needs the invoker role",
    );
    let (status, listed) = by_reader("GET", &format!("/api/v1/jobs/{victim_name}/outputs/score"), Body::None);
    assert_eq!((status, listed[0]["path"].clone()), (200, json!("predictions.csv")));

    // What mallory may do works, and serves exactly what the job published.
    let out = "azureml://datastores/workspaceblobstore/paths/endpoints/mallory/run-1";
    let got = invoke(
        "mallory",
        json!({"input": input(&mal_input), "output_path": out, "overrides": {"environment_variables.SEED": "7"}}),
    );
    assert_eq!(got.0, 201, "{}", got.1);
    let job = ws.wait_job(got.1["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["settings"]["environment_variables"]["SEED"], "7");
    let planted = ws.path().join("datastores/workspaceblobstore/endpoints/mallory/run-1/planted.txt");
    std::fs::write(&planted, "not published by the job").unwrap();
    let path = format!("/api/v1/jobs/{}/outputs/score", job["name"].as_str().unwrap());
    let (status, listed) = call(&ws, "127.0.0.1", &mal, "GET", &path, Body::None);
    assert_eq!(status, 200);
    assert_eq!(
        listed.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect::<Vec<_>>(),
        ["predictions.csv"]
    );
    refused(
        call(&ws, "127.0.0.1", &mal, "GET", &format!("{path}/planted.txt"), Body::None),
        404,
        "is not in output `score`",
    );
    assert_nothing_leaked(&ws, &job);
}

const NETWORK: &str = "
public_network_access: disabled
networks:
  - name: workspace
    address_space: [127.0.0.1/32]
  - name: compute
    address_space: [127.0.0.4/32]
peerings:
  - [workspace, compute]
private_endpoints:
  - name: api
    service: api
    address: 127.0.0.1:0
    network: workspace
computes:
  - name: cluster
    network: compute
";

const SLOW_SCRIPT: &str =
    "import time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep(60)\n    return mini_batch\n";

/// Hole 4: a worker credential of one compute can do nothing with a lease of another compute's job,
/// on any worker route, log uploads included; and what a worker uploads is audited with its compute
/// and lease.
#[test]
fn a_worker_of_another_compute_can_do_nothing_with_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(&config, NETWORK).unwrap();
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    let p = Project::new(ws.dir.path(), "slow", SLOW_SCRIPT, "mini_batch_size: 1\nretry_settings:\n    timeout: 120");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "slow", "--input", &p.inputs(4).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    // The test holds a lease of the job as a worker of its own compute (`local`) would.
    let local = std::fs::read_to_string(ws.path().join("state/worker-local.token")).unwrap().trim().to_string();
    let ask = json!({"node": "test-node", "process": 7, "job": job, "wait_ms": 10000, "host": {"sandbox": true}});
    let (status, granted) = call(&ws, "127.0.0.1", &local, "POST", "/worker/v1/lease", Body::Json(ask.clone()));
    assert_eq!(status, 200, "{granted}");
    let lease = granted["lease"]["lease_id"].as_str().unwrap_or_else(|| panic!("no lease: {granted}")).to_string();
    let model_file = "model/weights.txt";

    let other = ws.credential("cluster");
    let foreign = "belongs to a job on compute `local`; this credential is compute `cluster`'s";
    let l = format!("/worker/v1/leases/{lease}");
    let attempts = [
        ("POST", format!("{l}/heartbeat"), Body::Json(json!({}))),
        ("GET", format!("{l}/files"), Body::None),
        ("GET", format!("{l}/assets/model"), Body::None),
        ("GET", format!("{l}/assets/model/{model_file}"), Body::None),
        ("PUT", format!("{l}/part"), Body::Bytes(b"forged rows\n".to_vec())),
        ("PUT", format!("{l}/outputs/forged.txt"), Body::Bytes(b"forged".to_vec())),
        ("PUT", format!("{l}/logs/user/stdout/local-0/process000.stdout.txt"), Body::Bytes(b"forged".to_vec())),
        (
            "POST",
            format!("{l}/complete"),
            Body::Json(json!({"outcome": "failed", "elapsed_ms": 1, "pid": 1, "reason": "forged"})),
        ),
        ("POST", "/worker/v1/reports".to_string(), Body::Bytes(report_bundle(&[&lease], "forged rows\n"))),
    ];
    for (method, path, body) in attempts {
        let got = call(&ws, "127.0.0.4", &other, method, &path, body);
        if path.ends_with("/heartbeat") {
            refused(got, 409, "is not a current lease of this compute");
        } else {
            refused(got, 403, foreign);
        }
    }
    // Its own compute cannot report it twice in one request either: the second would replace the part
    // the first committed. Nothing of such a report is applied.
    let twice = call(
        &ws,
        "127.0.0.1",
        &local,
        "POST",
        "/worker/v1/reports",
        Body::Bytes(report_bundle(&[&lease, &lease], "x\n")),
    );
    refused(twice, 400, "is reported twice");
    // Nor make the control plane hold more than a report's limit: the body is refused as it streams in,
    // and nothing of it is applied (the lease is still current below).
    let flood = "x".repeat(cove_api::worker::REPORT_LIMIT);
    let got =
        call(&ws, "127.0.0.1", &local, "POST", "/worker/v1/reports", Body::Bytes(report_bundle(&[&lease], &flood)));
    refused(got, 413, "the report is larger than the limit of 16777216 bytes");
    // The job-wide log route that took any credential for any job is gone.
    let got = call(
        &ws,
        "127.0.0.4",
        &other,
        "PUT",
        &format!("/worker/v1/jobs/{job}/logs/user/x.txt"),
        Body::Bytes(b"x".to_vec()),
    );
    refused(got, 404, "no such route");
    // Another compute's worker is never leased the job.
    let (status, none) = call(
        &ws,
        "127.0.0.4",
        &other,
        "POST",
        "/worker/v1/lease",
        Body::Json(json!({"node": "n", "process": 0, "job": job, "wait_ms": 0, "host": {"sandbox": true}})),
    );
    assert_eq!((status, none["lease"].clone()), (200, Value::Null));

    // The lease still works for its own compute, and the part it uploads is audited with the lease.
    let got = call(&ws, "127.0.0.1", &local, "GET", &format!("{l}/assets/model/{model_file}"), Body::None);
    assert_eq!(got, (200, json!(2)), "the lease holder reads the model");
    let got = call(&ws, "127.0.0.1", &local, "PUT", &format!("{l}/part"), Body::Bytes(b"file-001.txt 2\n".to_vec()));
    assert_eq!(got.0, 204, "{}", got.1);
    let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
    let entries = audit.as_array().unwrap();
    let upload = entries
        .iter()
        .find(|e| e["action"].as_str().unwrap().starts_with("PUT part") && e["detail"] == format!("lease {lease}"))
        .unwrap_or_else(|| panic!("no audit entry for the part: {entries:#?}"));
    assert!(upload["principal"].as_str().unwrap().ends_with("(worker of local)"), "{upload}");
    let refusals = entries
        .iter()
        .filter(|e| e["source"] == "127.0.0.4" && e["outcome"].as_str().unwrap().contains(foreign))
        .count();
    assert_eq!(refusals, 8, "every refused worker call is audited: {entries:#?}");
    // So are its own compute's refused calls: the report of one lease twice (400), the flood (413).
    for (status, why) in [(400, "is reported twice"), (413, "the report is larger than the limit")] {
        let found = entries.iter().find(|e| {
            e["action"] == "POST /worker/v1/reports"
                && e["outcome"].as_str().unwrap().starts_with(&format!("refused ({status}): "))
                && e["outcome"].as_str().unwrap().contains(why)
        });
        let found = found.unwrap_or_else(|| panic!("no audit entry for the {status} refusal: {entries:#?}"));
        assert!(found["principal"].as_str().unwrap().ends_with("(worker)"), "{found}");
    }
    // Its own compute writes only the user logs of the process the lease went to (node `test-node`,
    // process 7): not another process's, not the control plane's, and no file of its own naming, so
    // a worker cannot forge logs or fill the disk with files the job never had.
    let own = format!("{l}/logs/user/stdout/test-node/process007.stdout.txt");
    let got = call(&ws, "127.0.0.1", &local, "PUT", &own, Body::Bytes(b"scored\n".to_vec()));
    assert_eq!(got.0, 204, "{}", got.1);
    for other in [
        "user/stdout/local-0/process000.stdout.txt",
        "user/stderr/test-node/process008.stderr.txt",
        "sys/node/test-node/process007.txt",
        "user/stdout/test-node/process007.stdout.txt.1",
        "user/junk/0001.txt",
    ] {
        let got = call(&ws, "127.0.0.1", &local, "PUT", &format!("{l}/logs/{other}"), Body::Bytes(b"forged".to_vec()));
        refused(got, 400, "is not a worker's to write: only the user logs of the lease's own process are");
    }
    let logs = ws.path().join("state/objects/jobs").join(&job).join("logs");
    assert_eq!(std::fs::read(logs.join("user/stdout/test-node/process007.stdout.txt")).unwrap(), b"scored\n");
    assert!(!logs.join("sys").exists() && !logs.join("user/junk").exists());
    // Nor stage more script-written files, or bytes, than one attempt may leave, however it asks: the
    // control plane counts them itself (set here as if the worker had sent that many).
    let output =
        |name: &str| call(&ws, "127.0.0.1", &local, "PUT", &format!("{l}/outputs/{name}"), Body::Bytes(b"x".to_vec()));
    assert_eq!(output("first.txt").0, 204);
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let counted: (i64, i64) = db
        .query_row("SELECT outputs, output_bytes FROM attempts WHERE lease_id = ?1", [&lease], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(counted, (1, 1), "the control plane counted the file and its byte");
    for (files, bytes) in [(10_000i64, 1i64), (1, 4 * 1024 * 1024 * 1024)] {
        let set = "UPDATE attempts SET outputs = ?2, output_bytes = ?3 WHERE lease_id = ?1";
        assert_eq!(db.execute(set, rusqlite::params![lease, files, bytes]).unwrap(), 1);
        refused(output("one-more.txt"), 413, "one attempt may leave at most 10000 files and 4294967296 bytes");
    }
    ws.cove(&["job", "cancel", &job]).ok();
    let ended = ws.wait_job(&job);
    assert_nothing_leaked(&ws, &ended);
}

/// Hole 5: a contributor's hostile model and conda file, and anyone's huge upload, cannot make the
/// control plane allocate without bound.
#[test]
fn hostile_models_conda_files_and_uploads_are_met_within_bounds() {
    let ws = Workspace::start();
    let bomb = cove_onnx::synth::memory_bomb(450_000_000);
    assert!(bomb.len() < 400, "the hostile model is tiny: {} bytes", bomb.len());
    let root = no_code_project(&ws, "bomb", &bomb);
    let file = |f: &str| root.join(f).display().to_string();
    ws.cove(&["endpoint", "create", "-f", &file("endpoint.yml")]).ok();
    let before = peak_rss_mb(ws.server_pid());
    let refused_model = ws.cove(&["deployment", "create", "-f", &file("deployment.yml")]);
    refused_model.fails_with(2, "loading the model needed more than 1028 MB of memory or 60 s of CPU, and was stopped");
    let after = peak_rss_mb(ws.server_pid());
    assert!(after < before + 200, "the control plane's peak memory grew from {before} to {after} MiB");
    // The check's child, run as the control plane runs it, measured from outside (its peak resident
    // memory, as its parent's rusage says): stopped by its limit, never holding the 1.8 GB the model asks.
    let model = ws.dir.path().join("bomb.onnx");
    std::fs::write(&model, &bomb).unwrap();
    let measure = "import resource, subprocess, sys\n\
        with open(sys.argv[2], 'rb') as model:\n\
        \x20   done = subprocess.run([sys.argv[1], '__check-onnx-model', '1028'], stdin=model, capture_output=True, env={'MIMALLOC_ARENA_RESERVE': '64MiB'})\n\
        print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n";
    let out =
        std::process::Command::new("python3").args(["-c", measure, crate::support::COVE]).arg(&model).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, peak_mb) =
        said.trim().split_once(' ').unwrap_or_else(|| panic!("{said} {}", String::from_utf8_lossy(&out.stderr)));
    let (code, peak_mb): (i32, u64) = (code.parse().unwrap(), peak_mb.parse().unwrap());
    assert!(code != 0 && code != 1, "the child was stopped by a limit, not done loading: exit {code}");
    assert!(peak_mb < 1028, "the child held {peak_mb} MB, more than its limit");

    // A conda file that multiplies itself through aliases is refused before it is parsed.
    let p = Project::new(ws.dir.path(), "aliased", LIST_SCRIPT, "");
    let mut conda = String::from("name: bomb\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let prev = i - 1;
        conda.push_str(&format!(
            "x{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    conda.push_str("dependencies:\n  - python=3.11\n  - *a8\n");
    std::fs::write(p.dir.join("conda.yml"), conda).unwrap();
    let yaml = std::fs::read_to_string(p.dir.join("deployment.yml")).unwrap();
    std::fs::write(p.dir.join("deployment.yml"), yaml.replace("compute:", "environment:\n  conda_file: conda.yml\n  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04\ncompute:")).unwrap();
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml")])
        .fails_with(2, "the conda file is refused: line 2");

    // An upload larger than the limit is refused as it streams in, and leaves nothing behind.
    let huge = vec![0u8; 600 * 1024 * 1024];
    let got = call(
        &ws,
        "127.0.0.1",
        &ws.token(),
        "PUT",
        "/api/v1/datastores/workspaceblobstore/files/LocalUpload/huge/data.bin",
        Body::Bytes(huge),
    );
    refused(got, 413, "larger than the limit of 536870912 bytes per upload");
    assert!(!ws.path().join("datastores/workspaceblobstore/LocalUpload/huge/data.bin").exists());
    let peak = peak_rss_mb(ws.server_pid());
    assert!(peak < before + 200, "the upload was held in memory: peak {peak} MiB (was {before})");
}

/// Hole 6: the workspace is its owner's alone on the host: its folder is 0700 and nothing in it is
/// readable by any other user, who cannot read a job's inputs, outputs, logs or the state.
#[test]
fn a_local_user_reads_nothing_of_the_workspace() {
    // In a folder every user can reach (under /tmp), so that only the workspace's own modes keep
    // another user out.
    let ws = Workspace::start_reachable();
    let p = Project::new(ws.dir.path(), "private", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "private", "--input", &p.inputs(3).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed");
    assert_nothing_leaked(&ws, &job);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(ws.path()).unwrap().permissions().mode() & 0o777, 0o700);
    let mut checked = 0;
    for file in files_under(&ws.path()) {
        let mode = std::fs::symlink_metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {:o}", file.display(), mode & 0o777);
        checked += 1;
    }
    assert!(checked > 10, "only {checked} files were checked");
    // Another user of the host can read a world-readable file beside the workspace (so the probe
    // works), and nothing inside it.
    let probe = ws.dir.path().join("probe.txt");
    std::fs::write(&probe, "readable").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |path: &Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    let probe_read = as_nobody(&probe);
    assert!(probe_read.status.success(), "the probe cannot be read: {}", String::from_utf8_lossy(&probe_read.stderr));
    let output = ws
        .path()
        .join("datastores/workspaceblobstore/azureml")
        .join(job["name"].as_str().unwrap())
        .join("score/predictions.csv");
    for target in [ws.path().join("state/cove.db"), ws.path().join("owner.token"), output] {
        assert!(target.is_file(), "{} exists", target.display());
        let out = as_nobody(&target);
        assert!(!out.status.success(), "another user read {}", target.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Hole 8: the host that runs scorers is asked whether it can sandbox them, not the control plane's:
/// on a host without bubblewrap, scoring code does not run (the job fails saying why), while a
/// no-code ONNX deployment, which runs no user code, needs no sandbox and completes.
#[test]
fn scoring_code_runs_only_where_the_host_can_sandbox_it() {
    let python =
        std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();
    let bare = tempfile::tempdir().unwrap();
    assert!(std::process::Command::new("bwrap").arg("--version").output().is_ok(), "bubblewrap is on this host");
    let ws = Workspace::start_with(&["--python", &python], &[("PATH", &bare.path().display().to_string())]);
    let p = Project::new(ws.dir.path(), "needsbox", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "needsbox", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Failed", "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "the scorer host of worker `local-0` cannot build the scoring sandbox (bubblewrap (`bwrap`) cannot be run"
        ),
        "{error}"
    );
    assert!(error.contains("install bubblewrap there"), "{error}");
    assert_eq!(job["progress"]["items_ok"], 0, "no scoring code ran");
    assert_nothing_leaked(&ws, &job);

    // The quickstart's kind of deployment: no-code ONNX, no sandbox needed.
    let root = no_code_project(&ws, "nocode", &cove_onnx::synth::random_mlp(5, 2, 4, 2).to_onnx());
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/rows.csv"), "a,b\n0.5,1\n-1,2\n").unwrap();
    let file = |f: &str| root.join(f).display().to_string();
    ws.cove(&["endpoint", "create", "-f", &file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &file("deployment.yml"), "--set-default"]).ok();
    let run = ws.cove(&["--json", "endpoint", "invoke", "nocode", "--input", &file("data")]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job).len(), 2);
    assert_nothing_leaked(&ws, &job);
}

/// A workspace from before datastore locations were recorded: when its control plane starts, its
/// models, code and job outputs are recorded, so the rules hold for them too.
#[test]
fn a_workspace_that_predates_location_records_gets_them_at_start() {
    let mut ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "older", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "older", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    ws.stop_server();
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let forgotten = db.execute("DELETE FROM locations", []).unwrap();
    assert!(forgotten >= 4, "uploads, model, code and the job's output were recorded: {forgotten}");
    drop(db);
    ws.serve_again(&[]);
    let (_, models) = ws.http("GET", "/api/v1/models?name=older-model", None, &[]);
    let model = models[0]["path"]
        .as_str()
        .unwrap()
        .strip_prefix("azureml://datastores/workspaceblobstore/paths/")
        .unwrap()
        .to_string();
    let got = call(
        &ws,
        "127.0.0.1",
        &ws.token(),
        "PUT",
        &format!("/api/v1/datastores/workspaceblobstore/files/{model}/x.txt"),
        Body::Bytes(b"x".to_vec()),
    );
    refused(got, 403, "holds the registered files of model `older-model` version 1");
    let inside = format!("{}/more", job["output_uri"].as_str().unwrap());
    let input = json!({"uri": job["input"]["uri"], "type": "uri_folder"});
    let got = call(
        &ws,
        "127.0.0.1",
        &ws.token(),
        "POST",
        "/endpoints/older/jobs",
        Body::Json(json!({"input": input, "output_path": inside})),
    );
    refused(got, 409, &format!("is the output location of job `{}`", job["name"].as_str().unwrap()));
    assert_nothing_leaked(&ws, &job);
}

/// The bytes a mini-batch committed: its part in the state store, or its object.
fn committed_bytes(ws: &Workspace, lease: &str) -> Vec<u8> {
    let db = rusqlite::Connection::open(ws.path().join("state/cove.db")).unwrap();
    let part: String = db
        .query_row(
            "SELECT b.committed_part FROM batches b JOIN attempts a ON a.job = b.job AND a.idx = b.idx
             WHERE a.lease_id = ?1 AND b.state = 'succeeded'",
            [lease],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("lease {lease} committed no part: {e}"));
    match part.strip_prefix("inline:") {
        Some(id) => db.query_row("SELECT body FROM part_bodies WHERE lease_id = ?1", [id], |r| r.get(0)).unwrap(),
        None => std::fs::read(ws.path().join("state/objects").join(&part)).unwrap(),
    }
}

/// Hole 8: a mini-batch's committed part never changes. A report replayed after its attempt committed,
/// with other bytes, small (kept in the state store) or large (kept as an object), stores nothing and is
/// audited as refused; two reports of one lease racing commit one part, the one that was stored.
#[test]
fn a_committed_part_never_changes() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "slow", SLOW_SCRIPT, "mini_batch_size: 1\nretry_settings:\n    timeout: 120");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "slow", "--input", &p.inputs(8).display().to_string()]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let local = ws.local_worker_token();
    let report = |lease: &str, part: &[u8]| {
        let body = report_bundle(&[lease], std::str::from_utf8(part).unwrap());
        call(&ws, "127.0.0.1", &local, "POST", "/worker/v1/reports", Body::Bytes(body))
    };
    let large = |fill: char| format!("{}\n", String::from(fill).repeat(100 * 1024)).into_bytes();
    for (name, first, forged) in
        [("small", b"file-001.txt 2\n".to_vec(), b"forged rows\n".to_vec()), ("large", large('a'), large('z'))]
    {
        let lease = ws.lease_as_local_worker(&job)["lease_id"].as_str().unwrap().to_string();
        let (status, ack) = report(&lease, &first);
        assert_eq!((status, ack["acks"][0]["committed"].clone()), (200, json!(true)), "{name}: {ack}");
        assert_eq!(committed_bytes(&ws, &lease), first, "{name}: the report's part was committed");
        let (status, ack) = report(&lease, &forged);
        assert_eq!((status, ack["acks"][0]["committed"].clone()), (200, json!(false)), "{name}: {ack}");
        assert_eq!(committed_bytes(&ws, &lease), first, "{name}: the replay changed the committed part");
        let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
        let late = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["detail"] == format!("lease {lease}")
                    && e["outcome"].as_str().unwrap().starts_with(&format!("refused: lease `{lease}` is not current"))
            })
            .count();
        assert_eq!(late, 1, "{name}: the replay is audited as refused: {audit:#}");
    }
    // Two reports of one lease at once, with other bytes: one commits, and its bytes are what the
    // mini-batch keeps; the other is refused (409) or discarded, never stored over it.
    let lease = ws.lease_as_local_worker(&job)["lease_id"].as_str().unwrap().to_string();
    let (one, two) = (large('b'), large('c'));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| report(&lease, &one));
        let b = s.spawn(|| report(&lease, &two));
        (a.join().unwrap(), b.join().unwrap())
    });
    let won = |got: &(u16, Value)| got.0 == 200 && got.1["acks"][0]["committed"] == json!(true);
    assert!(won(&a) ^ won(&b), "exactly one report commits: {a:?} {b:?}");
    let (winner, loser) = if won(&a) { (&one, &b) } else { (&two, &a) };
    assert!(
        loser.0 == 409 || (loser.0 == 200 && loser.1["acks"][0]["committed"] == json!(false)),
        "the other report is refused or discarded: {loser:?}"
    );
    assert_eq!(&committed_bytes(&ws, &lease), winner, "the mini-batch keeps the bytes of the report that committed");
    ws.cove(&["job", "cancel", &job]).ok();
    let ended = ws.wait_job(&job);
    assert_nothing_leaked(&ws, &ended);
}

/// A named `amlcompute` cluster has no network of its own: the control plane starts its workers on its
/// own host. Its worker credential, taken elsewhere, is refused from any other address of the private
/// network, and accepted from the API's own address, where its workers are.
#[test]
fn a_named_clusters_worker_credential_works_only_from_the_control_planes_host() {
    let ws = Workspace::start();
    let yaml = ws.dir.path().join("cluster.yml");
    std::fs::write(&yaml, "name: gpu-cluster\ntype: amlcompute\nmin_instances: 0\nmax_instances: 1\n").unwrap();
    ws.cove(&["compute", "create", "-f", &yaml.display().to_string()]).ok();
    let token = ws.credential("gpu-cluster");
    let ask = json!({"node": "n", "process": 0, "wait_ms": 0, "host": {"sandbox": true}});
    let elsewhere = call(&ws, "127.0.0.4", &token, "POST", "/worker/v1/lease", Body::Json(ask.clone()));
    refused(elsewhere, 403, "worker credentials of compute `gpu-cluster`, which has no network of its own, are accepted only from this host's API address, not from 127.0.0.4");
    let (status, answer) = call(&ws, "127.0.0.1", &token, "POST", "/worker/v1/lease", Body::Json(ask));
    assert_eq!((status, answer["lease"].clone()), (200, Value::Null), "{answer}");
}

/// Someone who can write a local datastore's folder swaps a published output file for a link to the
/// owner's files: the outputs route opens published files without following any link, so it serves
/// the link's target to no one.
#[test]
fn a_link_planted_in_a_published_output_is_never_followed() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "linked", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "linked", "--input", &p.inputs(2).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let name = job["name"].as_str().unwrap();
    let route = format!("/api/v1/jobs/{name}/outputs/score/predictions.csv");
    let token = ws.token();
    let (status, served) = call(&ws, "127.0.0.1", &token, "GET", &route, Body::None);
    assert_eq!((status, served.clone()), (200, Value::String("file-000.txt 0\nfile-001.txt 2\n".into())));
    let secret = ws.dir.path().join("owner-secret.txt");
    std::fs::write(&secret, "the owner's secret\n").unwrap();
    let published = ws.path().join("datastores/workspaceblobstore/azureml").join(name).join("score");
    // The file itself, then the folder it is in, replaced by links.
    let file = published.join("predictions.csv");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "the owner's secret\n", "the link was planted");
    let (status, served) = call(&ws, "127.0.0.1", &token, "GET", &route, Body::None);
    assert_eq!(status, 404, "{served}");
    assert!(!served.to_string().contains("secret"), "{served}");
    let elsewhere = ws.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&secret, elsewhere.join("predictions.csv")).unwrap();
    std::fs::remove_dir_all(&published).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &published).unwrap();
    assert!(std::fs::read_to_string(published.join("predictions.csv")).unwrap().contains("secret"));
    let (status, served) = call(&ws, "127.0.0.1", &token, "GET", &route, Body::None);
    assert_eq!(status, 404, "{served}");
    assert!(!served.to_string().contains("secret"), "{served}");
}

/// Hole 2: an invoker uploads files, and a contributor registers exactly that upload folder as a data
/// asset and as a model. The registered versions are copies out of the uploader's reach: writing the
/// upload folder again changes neither; and a version whose files changed anyway (outside Cove, on
/// the datastore's disk) is refused for jobs, with the reason.
#[test]
fn files_registered_from_an_upload_are_out_of_the_uploaders_reach() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "held", LIST_SCRIPT, "mini_batch_size: 5");
    p.deploy(&ws);
    let (status, token) = ws.http("POST", "/api/v1/tokens", Some(json!({"role": "invoker"})), &[]);
    assert_eq!(status, 201, "{token}");
    let uploader = token["secret"].as_str().unwrap().to_string();
    let put = |rel: &str, bytes: &[u8]| {
        let path = format!("/api/v1/datastores/workspaceblobstore/files/LocalUpload/shared/{rel}");
        call(&ws, "127.0.0.1", &uploader, "PUT", &path, Body::Bytes(bytes.to_vec()))
    };
    assert_eq!(put("file-000.txt", b"1\n").0, 201);
    assert_eq!(put("weights.txt", b"2\n").0, 201);
    let folder = "azureml://datastores/workspaceblobstore/paths/LocalUpload/shared";
    let data = ws.cove(&["--json", "data", "create", "-n", "shared-data", "-p", folder]).ok().json();
    let model = ws.cove(&["--json", "model", "create", "--name", "shared-model", "--path", folder]).ok().json();
    for registered in [&data, &model] {
        let path = registered["path"].as_str().unwrap();
        assert!(path.starts_with("azureml://datastores/workspaceblobstore/paths/registered/"), "{registered}");
        assert!(registered["digest"].as_str().unwrap().starts_with("sha256:"), "{registered}");
    }
    // The uploader still adds files to its folder (it is theirs), and the registered versions do not change.
    assert_eq!(put("file-001.txt", b"999\n").0, 201);
    let upload = ws.path().join("datastores/workspaceblobstore/LocalUpload/shared");
    assert_eq!(std::fs::read_to_string(upload.join("file-001.txt")).unwrap(), "999\n", "the upload folder grew");
    let run = ws.cove(&["--json", "endpoint", "invoke", "held", "--input", "azureml:shared-data:1"]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job), ["file-000.txt 2", "weights.txt 4"], "the data asset's files as registered");
    assert_nothing_leaked(&ws, &job);
    let shown = ws.cove(&["--json", "model", "show", "shared-model", "--version", "1"]).ok().json();
    let model_dir =
        shown["path"].as_str().unwrap().strip_prefix("azureml://datastores/workspaceblobstore/paths/").unwrap();
    let weights = ws.path().join("datastores/workspaceblobstore").join(model_dir).join("weights.txt");
    assert_eq!(std::fs::read_to_string(&weights).unwrap(), "2\n", "the model's bytes as registered");
    assert!(!weights.with_file_name("file-001.txt").exists(), "the model's files as registered");
    // Changed on disk, outside Cove: a job of that version is refused, saying why.
    let data_dir =
        data["path"].as_str().unwrap().strip_prefix("azureml://datastores/workspaceblobstore/paths/").unwrap();
    let file = ws.path().join("datastores/workspaceblobstore").join(data_dir).join("file-000.txt");
    std::fs::write(&file, "3\n").unwrap();
    ws.cove(&["endpoint", "invoke", "held", "--input", "azureml:shared-data:1"])
        .fails_with(2, "input: data asset `shared-data` version 1: its files changed since it was registered");
}

/// Someone who can write a local datastore's folder plants a folder link on the way to where Cove will
/// write: an upload, a job's output location at invocation, and the output location of a job already
/// running. Cove writes through none of them, and nothing reaches the folder the links point to.
#[test]
fn writes_into_a_local_datastore_never_follow_a_planted_folder_link() {
    let ws = Workspace::start();
    let slow = LIST_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):\n    import time; time.sleep(2)");
    let p = Project::new(ws.dir.path(), "planted", &slow, "mini_batch_size: 5");
    p.deploy(&ws);
    let outside = ws.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let datastore = ws.path().join("datastores/workspaceblobstore");
    let plant = |rel: &str| {
        let at = datastore.join(rel);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, &at).unwrap();
        assert!(std::fs::symlink_metadata(&at).unwrap().file_type().is_symlink(), "the link was planted");
    };
    plant("LocalUpload/planted");
    let got = call(
        &ws,
        "127.0.0.1",
        &ws.token(),
        "PUT",
        "/api/v1/datastores/workspaceblobstore/files/LocalUpload/planted/x.txt",
        Body::Bytes(b"x".to_vec()),
    );
    refused(got, 400, "path: `LocalUpload/planted` is a symbolic link; Cove never writes through one");
    plant("linked");
    let input = p.inputs(2).display().to_string();
    let uri = |rel: &str| format!("azureml://datastores/workspaceblobstore/paths/{rel}");
    ws.cove(&["endpoint", "invoke", "planted", "--input", &input, "--output-path", &uri("linked/out")])
        .fails_with(2, "output_path: `linked` is a symbolic link");
    // Planted while the job runs: the job fails saying why, and writes nothing there.
    let run =
        ws.cove(&["--json", "endpoint", "invoke", "planted", "--input", &input, "--output-path", &uri("later/out")]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    plant("later");
    let ended = ws.wait_job(&job);
    assert_eq!(ended["status"], "Failed", "{ended:#}");
    assert!(ended["error"].as_str().unwrap().contains("`later` is a symbolic link"), "{ended:#}");
    assert_eq!(files_under(&outside), Vec::<PathBuf>::new(), "nothing was written where the links point");
}
