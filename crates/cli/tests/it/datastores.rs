//! Datastores behind private endpoints: an S3-compatible store (moto's server, on loopback) is reached
//! only through its configured private endpoint, and jobs read from and write to it.

use crate::support::{Project, Workspace, LIST_SCRIPT};
use std::process::{Child, Command, Stdio};

struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    fn start() -> S3Server {
        let port = crate::support::free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto's S3 server is installed (scripts/setup)");
        crate::support::wait_for_listener(port, "the S3 server");
        S3Server { child, port }
    }

    fn create_bucket(&self, bucket: &str) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async {
            crate::support::plain_http()
                .put(format!("http://127.0.0.1:{}/{bucket}", self.port))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "{status}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn datastores_are_reached_only_through_their_private_endpoints() {
    let s3 = S3Server::start();
    s3.create_bucket("lake-bucket");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(&config, lake_config(s3.port)).unwrap();
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], &[]);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "test-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret_arg = secret.display().to_string();
    let create = |name: &str, endpoint: &str| {
        ws.cove(&[
            "datastore",
            "create",
            "--name",
            name,
            "--endpoint",
            endpoint,
            "--bucket",
            "lake-bucket",
            "--access-key-id",
            "test",
            "--secret-access-key-file",
            &secret_arg,
        ])
    };
    let good = format!("http://127.0.0.1:{}", s3.port);
    create("lake", &good).fails_with(2, "is readable by others");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    create("other", &good).fails_with(2, "is not a configured private endpoint");
    create("lake", &format!("http://127.0.0.2:{}", s3.port))
        .fails_with(2, "is not datastore `lake`'s private endpoint lake-pe");
    create("lake", &good).ok();
    let list = ws.cove(&["--json", "datastore", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("test-secret"), "the secret is never returned");

    for i in 0..3 {
        let (s, body) =
            ws.http_bytes("PUT", &format!("/api/v1/datastores/lake/files/in/file-{i:03}.txt"), format!("{i}\n"));
        assert_eq!(s, 201, "{body}");
    }
    let p = Project::new(ws.dir.path(), "lakeside", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "lakeside",
        "--input",
        "azureml://datastores/lake/paths/in",
        "--output-path",
        "azureml://datastores/lake/paths/out",
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    // The compute's network reaches the store's private endpoint: workers read straight from it,
    // through URLs signed per file, never holding the store's credentials.
    for a in job["attempts"].as_array().unwrap() {
        assert_eq!(a["isolation"]["inputs"], "direct from the store", "{a}");
    }
    let dl = dir.path().join("dl");
    ws.cove(&["job", "download", job["name"].as_str().unwrap(), "--download-path", &dl.display().to_string()]).ok();
    let predictions = std::fs::read_to_string(dl.join("named-outputs/score/predictions.csv")).unwrap();
    assert_eq!(predictions, "file-000.txt 0\nfile-001.txt 2\nfile-002.txt 4\n");
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(diag.stdout.contains("OK   datastore lake: reached through its private endpoint"), "{}", diag.stdout);
    // The private endpoint taken out of the configuration: diagnose fails the datastore, with the fix.
    let without = dir.path().join("without-pe.yml");
    let text = lake_config(s3.port);
    std::fs::write(&without, &text[..text.find("  - name: lake-pe").unwrap()]).unwrap();
    let mut ws = ws;
    ws.restart_with(&["--config", &without.display().to_string()]);
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert_eq!(diag.code, 1, "{}", diag.stdout);
    let expected = "FAIL datastore lake: s3://lake-bucket is reached outside a private endpoint\n     fix: declare a private endpoint with service: datastore:lake";
    assert!(diag.stdout.contains(expected), "{}", diag.stdout);
    // And the store is not reached at all: it stays closed until its private endpoint is declared again.
    ws.cove(&["endpoint", "invoke", "lakeside", "--input", "azureml://datastores/lake/paths/in"]).fails_with(
        2,
        "datastore `lake` is not open: the workspace configuration declares no private endpoint for it (service: datastore:lake)",
    );
    drop(ws);

    let plain = Workspace::start();
    let secret_arg = secret.display().to_string();
    plain
        .cove(&[
            "datastore",
            "create",
            "--name",
            "lake",
            "--endpoint",
            &good,
            "--bucket",
            "lake-bucket",
            "--access-key-id",
            "test",
            "--secret-access-key-file",
            &secret_arg,
        ])
        .fails_with(2, "is not a configured private endpoint");
}

/// A workspace whose network configuration gives datastore `lake` a private endpoint at the S3
/// server, with the datastore registered; the temporary folder holds its configuration and secret.
fn lake_workspace(s3: &S3Server) -> (Workspace, tempfile::TempDir) {
    lake_workspace_with(s3, &[])
}

/// [`lake_workspace`] with environment variables for `cove up`.
fn lake_workspace_with(s3: &S3Server, env: &[(&str, &str)]) -> (Workspace, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("network.yml");
    std::fs::write(&config, lake_config(s3.port)).unwrap();
    let ws = Workspace::start_with(&["--config", &config.display().to_string()], env);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "test-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    ws.cove(&[
        "datastore",
        "create",
        "--name",
        "lake",
        "--endpoint",
        &endpoint,
        "--bucket",
        "lake-bucket",
        "--access-key-id",
        "test",
        "--secret-access-key-file",
        &secret.display().to_string(),
    ])
    .ok();
    (ws, dir)
}

fn lake_config(port: u16) -> String {
    format!(
        "networks:\n  - name: workspace\n    address_space: [127.0.0.0/8]\nprivate_endpoints:\n  - name: api\n    service: api\n    address: 127.0.0.1:0\n    network: workspace\n  - name: lake-pe\n    service: 'datastore:lake'\n    address: 127.0.0.1:{port}\n    network: workspace\n"
    )
}

#[test]
fn a_job_canceled_while_finalizing_publishes_nothing() {
    let s3 = S3Server::start();
    s3.create_bucket("lake-bucket");
    let (ws, _dir) = lake_workspace(&s3);
    // Scores slowly enough that the store can be stopped after the job is accepted (accepting it checks
    // the output location on the store), before it publishes.
    let slow = LIST_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):\n    import time; time.sleep(1.5)");
    let p = Project::new(ws.dir.path(), "stalled", &slow, "mini_batch_size: 4");
    p.deploy(&ws);
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "stalled",
        "--input",
        &p.inputs(4).display().to_string(),
        "--output-path",
        "azureml://datastores/lake/paths/stalled",
    ]);
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    // The store stops answering, so publishing the output stalls once every mini-batch is committed.
    crate::support::kill(s3.child.id(), "STOP");
    ws.wait_status(&name, "Finalizing");
    let canceled = ws.cove(&["--json", "job", "cancel", &name]).ok().json();
    assert_eq!(canceled["status"], "CancelRequested");
    crate::support::kill(s3.child.id(), "CONT");
    let job = ws.wait_job(&name);
    assert_eq!(job["status"], "Canceled", "{job:#}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listing = rt.block_on(async {
        crate::support::plain_http()
            .get(format!("http://127.0.0.1:{}/lake-bucket?list-type=2", s3.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(!listing.contains("stalled/predictions.csv"), "a canceled job publishes nothing:\n{listing}");
}

/// File names with characters `object_store`'s paths would percent-encode (`#`, `%`, `[`, `{`, `^`, ...)
/// keep their names end to end: uploaded with a local input, read in place from the default datastore
/// and straight from an S3 store by a signed URL, and written so in the output's lines.
#[test]
fn file_names_keep_their_characters_on_every_datastore() {
    let s3 = S3Server::start();
    s3.create_bucket("lake-bucket");
    let (ws, dir) = lake_workspace(&s3);
    let names = ["report #3.txt", "50% [final].txt", "a{b}^c~d.txt"];
    let data = dir.path().join("odd");
    std::fs::create_dir_all(&data).unwrap();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(data.join(name), format!("{i}\n")).unwrap();
        let path = format!("/api/v1/datastores/lake/files/in/{}", name.replace('%', "%25").replace('#', "%23"));
        let (status, body) = ws.http_bytes("PUT", &path, format!("{i}\n"));
        assert_eq!(status, 201, "{body}");
    }
    let p = Project::new(ws.dir.path(), "odd", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let mut expected: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{n} {}", i * 2)).collect();
    expected.sort();
    for input in [data.display().to_string(), "azureml://datastores/lake/paths/in".to_string()] {
        let run = ws.cove(&["--json", "endpoint", "invoke", "odd", "--input", &input]);
        let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
        assert_eq!(job["status"], "Completed", "{job:#}");
        let mut lines = ws.output_lines(&job);
        lines.sort();
        assert_eq!(lines, expected, "{input}");
        if input.starts_with("azureml:") {
            for a in job["attempts"].as_array().unwrap() {
                assert_eq!(a["isolation"]["inputs"], "direct from the store", "{a}");
            }
        } else {
            let uploaded =
                job["input"]["uri"].as_str().unwrap().replace("azureml://datastores/workspaceblobstore/paths/", "");
            let on_disk = ws.path().join("datastores/workspaceblobstore").join(uploaded);
            let mut stored: Vec<String> =
                std::fs::read_dir(&on_disk).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            stored.sort();
            let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            want.sort();
            assert_eq!(stored, want, "uploads are stored under their own names");
        }
    }
}

/// A folder of this host as a datastore (`type: local`): jobs read their inputs from it and publish
/// their outputs to it. It opens the host's files to jobs, so only the owner may register one, and
/// never a folder that holds the workspace or lies inside it.
#[test]
fn a_local_folder_is_a_datastore_jobs_read_and_write() {
    let ws = Workspace::start();
    let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(shared.path().join("in")).unwrap();
    for i in 0..3 {
        std::fs::write(shared.path().join(format!("in/file-{i:03}.txt")), format!("{i}\n")).unwrap();
    }
    let yml = ws.dir.path().join("datastore.yml");
    std::fs::write(&yml, format!("name: shared\ntype: local\npath: {}\n", shared.path().display())).unwrap();
    let created = ws.cove(&["datastore", "create", "-f", &yml.display().to_string()]);
    assert!(created.ok().stdout.contains("Created datastore shared (the folder"), "{}", created.stdout);
    let p = Project::new(ws.dir.path(), "onshared", LIST_SCRIPT, "");
    p.deploy(&ws);
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "onshared",
        "--input",
        "azureml://datastores/shared/paths/in",
        "--output-path",
        "azureml://datastores/shared/paths/out",
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    let predictions = std::fs::read_to_string(shared.path().join("out/predictions.csv")).unwrap();
    assert_eq!(predictions, "file-000.txt 0\nfile-001.txt 2\nfile-002.txt 4\n");

    // Someone who can write the shared folder plants a link to the workspace owner's files: the
    // control plane reads no file through a link, so the job fails that item and publishes nothing of it.
    std::fs::create_dir_all(shared.path().join("planted")).unwrap();
    std::fs::write(shared.path().join("planted/file-000.txt"), "0\n").unwrap();
    std::os::unix::fs::symlink(ws.path().join("owner.token"), shared.path().join("planted/file-001.txt")).unwrap();
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "onshared",
        "--input",
        "azureml://datastores/shared/paths/planted",
        "--output-path",
        "azureml://datastores/shared/paths/planted-out",
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["progress"]["files_total"], 2, "the link was listed as an input: {job:#}");
    let reason = job["failed_batches"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("is, or lies behind, a symbolic link"), "{job:#}");
    let published = std::fs::read_to_string(shared.path().join("planted-out/predictions.csv")).unwrap_or_default();
    assert!(!published.contains(ws.token().trim()), "the owner token was published: {published}");

    // Shown (never its credentials); deleted only when nothing references it.
    let shown = ws.cove(&["datastore", "show", "-n", "shared"]);
    assert!(shown.ok().stdout.contains("Kind:      local"), "{}", shown.stdout);
    ws.cove(&["datastore", "delete", "-n", "shared"]).fails_with(
        2,
        "datastore `shared` is in use: 2 upload(s), registered model, code or data files, or job outputs are on it",
    );
    ws.cove(&["datastore", "delete", "-n", "workspaceblobstore"]).fails_with(2, "is the workspace's default");
    let empty = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let yml2 = ws.dir.path().join("empty.yml");
    std::fs::write(&yml2, format!("name: spare\ntype: local\npath: {}\n", empty.path().display())).unwrap();
    ws.cove(&["datastore", "create", "-f", &yml2.display().to_string()]).ok();
    ws.cove(&["datastore", "delete", "-n", "spare"]).ok();
    ws.cove(&["datastore", "show", "-n", "spare"]).fails_with(5, "datastore `spare` does not exist");
    assert!(empty.path().exists(), "a deleted datastore's files stay where they are");

    let register = |name: &str, path: &std::path::Path| {
        let yml = ws.dir.path().join(format!("{name}.yml"));
        std::fs::write(&yml, format!("name: {name}\ntype: local\npath: {}\n", path.display())).unwrap();
        ws.cove(&["datastore", "create", "-f", &yml.display().to_string()])
    };
    register("around", ws.dir.path()).fails_with(2, "holds the workspace folder");
    register("inside", &ws.path().join("datastores")).fails_with(2, "lies inside the workspace folder");
    register("missing", &ws.dir.path().join("nope")).fails_with(2, "cannot be opened");
    let (status, body) = ws.http(
        "POST",
        "/api/v1/datastores",
        Some(serde_json::json!({"name": "rel", "type": "local", "path": "relative/dir"})),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("is not absolute"), "{body}");
    let (_, token) = ws.http("POST", "/api/v1/tokens", Some(serde_json::json!({"role": "contributor"})), &[]);
    let body = serde_json::json!({"name": "other", "type": "local", "path": shared.path().display().to_string()});
    let (status, refused) =
        ws.http_as(token["secret"].as_str().unwrap(), "POST", "/api/v1/datastores", Some(body), &[]);
    assert_eq!(status, 403, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("it needs the owner role"), "{refused}");
}

/// Reports, per input file, its inode and what happened when it tried to change the file.
const INODE_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        try:
            with open(path, "a") as f:
                f.write("changed")
            verdict = "writable"
        except OSError as e:
            verdict = type(e).__name__
        out.append(f"{os.path.basename(path)} {os.stat(path).st_ino} {verdict}")
    return out
"#;

/// Scores a folder of a local datastore that `backend`'s workers see, and returns what the scorer saw
/// of each file: `name inode verdict`.
fn scored_in_place(ws: &Workspace, p: &Project, data: &std::path::Path) -> Vec<String> {
    let yml = ws.dir.path().join("scratch.yml");
    std::fs::write(&yml, format!("name: scratch\ntype: local\npath: {}\n", data.display())).unwrap();
    ws.cove(&["datastore", "create", "-f", &yml.display().to_string()]).ok();
    p.deploy(ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "inplace", "--input", "azureml://datastores/scratch/paths/in"]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    for a in job["attempts"].as_array().unwrap() {
        assert_eq!(a["isolation"]["inputs"], "in place", "{a}");
    }
    ws.output_lines(&job)
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Files of a local datastore that the worker's host sees reach the scorer in place: the very files
/// (same inode: no copy, nothing through the control plane), read-only in the scorer's view.
#[test]
fn inputs_the_worker_host_sees_are_scored_in_place_read_only() {
    for backend in [crate::support::Backend::Local, crate::support::Backend::Slurm] {
        let ws = match backend {
            crate::support::Backend::Local => Workspace::start(),
            crate::support::Backend::Slurm => {
                let cluster = crate::support::slurm_cluster();
                let env = [("SLURM_CONF", crate::support::SLURM_CONF)];
                let mut ws = Workspace::start_with(&[], &env);
                ws.cluster = Some(cluster);
                // The cluster's nodes see the datastore's folder at the same path.
                let compute = ws.dir.path().join("compute.yml");
                let yaml =
                    "name: hpc\ntype: slurm\npartition: debug\nmem_per_task_mb: 512\nshared_datastores: [scratch]\n";
                std::fs::write(&compute, yaml).unwrap();
                ws.cove(&["compute", "create", "-f", &compute.display().to_string()]).ok();
                ws
            }
        };
        let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        std::fs::create_dir_all(data.path().join("in")).unwrap();
        for i in 0..3 {
            std::fs::write(data.path().join(format!("in/file-{i:03}.txt")), format!("{i}\n")).unwrap();
        }
        let p = Project::new(ws.dir.path(), "inplace", INODE_SCRIPT, "mini_batch_size: 2").on(backend);
        let lines = scored_in_place(&ws, &p, data.path());
        let expected: Vec<String> = (0..3)
            .map(|i| {
                let name = format!("file-{i:03}.txt");
                format!("{name} {} OSError", inode(&data.path().join("in").join(&name)))
            })
            .collect();
        assert_eq!(lines, expected, "on {}", backend.compute());
        for i in 0..3 {
            let text = std::fs::read_to_string(data.path().join(format!("in/file-{i:03}.txt"))).unwrap();
            assert_eq!(text, format!("{i}\n"), "the scorer changed an input on {}", backend.compute());
        }
    }
}

/// The seconds a signed S3 URL is valid for (its `X-Amz-Expires`).
fn signed_for(url: &str) -> u64 {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_else(|| panic!("not a signed URL: {url}"));
    let expires = query.split('&').find_map(|kv| kv.strip_prefix("X-Amz-Expires="));
    expires.unwrap_or_else(|| panic!("no X-Amz-Expires in {url}")).parse().unwrap()
}

/// Hole 1: signed input URLs. However long a job's timeout, a URL is valid for an hour at most (a
/// worker asks for new ones for a current lease), a per-job override cannot set a timeout past a day,
/// and no failure to read one puts its query (the access key id and signature) in what a reader sees:
/// the job's status, its logs, the audit log.
#[test]
fn signed_input_urls_live_an_hour_at_most_and_never_reach_a_reader() {
    let mut s3 = S3Server::start();
    s3.create_bucket("lake-bucket");
    let (ws, _dir) = lake_workspace(&s3);
    for i in 0..6 {
        let (s, body) =
            ws.http_bytes("PUT", &format!("/api/v1/datastores/lake/files/in/file-{i:03}.txt"), format!("{i}\n"));
        assert_eq!(s, 201, "{body}");
    }
    let slow = LIST_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):\n    import time; time.sleep(2)");
    let settings = "mini_batch_size: 1\nretry_settings:\n    timeout: 86400\n    max_retries: 2";
    let p = Project::new(ws.dir.path(), "lakeside", &slow, settings);
    p.deploy(&ws);
    let input = "azureml://datastores/lake/paths/in";
    ws.cove(&["endpoint", "invoke", "lakeside", "--input", input, "--set", "timeout=P3650D"])
        .fails_with(2, "--set timeout: a per-job override may set at most 86400 seconds (a day), got 315360000");
    let run = ws.cove(&["--json", "endpoint", "invoke", "lakeside", "--input", input]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();

    // The test holds a lease as a worker of the `local` compute would: its URLs are valid for an hour,
    // not for the day the lease may last, and they read the file.
    let local = ws.local_worker_token();
    let lease = &ws.lease_as_local_worker(&job);
    let lease_id = lease["lease_id"].as_str().unwrap();
    assert!(lease["expires_in_ms"].as_u64().unwrap() > 86_400_000, "the lease lasts the day: {lease}");
    let url = lease["signed_inputs"][0].as_str().unwrap_or_else(|| panic!("no signed URL: {lease}")).to_string();
    assert_eq!(signed_for(&url), 3600, "{url}");
    let (status, fresh) = ws.http_as(&local, "GET", &format!("/worker/v1/leases/{lease_id}/signed-inputs"), None, &[]);
    assert_eq!(status, 200, "{fresh}");
    let fresh = fresh[0].as_str().unwrap().to_string();
    assert_eq!(signed_for(&fresh), 3600, "{fresh}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = rt.block_on(async {
        let resp = crate::support::plain_http().get(&fresh).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    let file = lease["files"][0].as_str().unwrap();
    let index: u32 = file.trim_start_matches("file-").trim_end_matches(".txt").parse().unwrap();
    assert_eq!(read, (200, format!("{index}\n")), "a renewed URL reads the lease's file");
    // A failure whose reason quotes a signed URL is kept from its query, whoever reports it.
    let quoted = format!("could not fetch {url} in time");
    let failed = serde_json::json!({"outcome": "failed", "elapsed_ms": 1, "pid": 1, "reason": quoted});
    let (status, ack) =
        ws.http_as(&local, "POST", &format!("/worker/v1/leases/{lease_id}/complete"), Some(failed), &[]);
    assert_eq!(status, 200, "{ack}");

    // The store goes away while the job runs: the workers' reads of the mini-batches still to come fail
    // at the connection, with errors that would quote the URLs they failed on.
    s3.child.kill().unwrap();
    s3.child.wait().unwrap();
    let ended = ws.wait_job(&job);
    let logs = ws.path().join("state/objects/jobs").join(&job).join("logs");
    let mut seen = vec![("job show".to_string(), ended.to_string())];
    let audit = ws.cove(&["--json", "audit", "list"]);
    seen.push(("audit list".into(), audit.ok().stdout.clone()));
    let mut stack = vec![logs.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => stack.push(e.path()),
                false => seen.push((e.path().display().to_string(), std::fs::read_to_string(e.path()).unwrap())),
            }
        }
    }
    let all: String = seen.iter().map(|(_, text)| text.as_str()).collect();
    assert!(all.contains("could not fetch http://127.0.0.1:"), "the quoted URL was reported: {ended:#}");
    assert!(all.contains("cannot read input file `file-"), "a worker failed to read a URL: {ended:#}");
    for (what, text) in &seen {
        for secret in ["X-Amz-", "x-amz-", &url[url.find('?').unwrap()..]] {
            assert!(!text.contains(secret), "{what} carries a signed URL's query ({secret}):\n{text}");
        }
    }
}

/// The keys of a bucket of the S3 server under `prefix`, as it lists them.
fn keys_under(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listing = rt.block_on(async {
        let url = format!("http://127.0.0.1:{}/{bucket}?list-type=2&prefix={prefix}", s3.port);
        crate::support::plain_http().get(url).send().await.unwrap().text().await.unwrap()
    });
    assert!(listing.contains("<ListBucketResult"), "{listing}");
    listing.split("<Key>").skip(1).map(|k| k.split("</Key>").next().unwrap().to_string()).collect()
}

/// Hole 7 on an object store, which has no rename: the set's files are written in place and its
/// manifest last, so a reader that waits for the manifest never takes part of a set. `kill -9` of the
/// control plane between two files of the set, then a restart: the set ends complete, once, with its
/// manifest naming every file.
#[test]
fn a_set_published_to_an_object_store_is_complete_with_its_manifest_after_a_kill_9() {
    let s3 = S3Server::start();
    s3.create_bucket("lake-bucket");
    let markers = tempfile::tempdir().unwrap();
    let pausing = [
        ("COVE_PAUSE_AT", "publishing"),
        ("COVE_PAUSE_DIR", markers.path().to_str().unwrap()),
        ("COVE_PAUSE_MS", "8000"),
    ];
    let (mut ws, dir) = lake_workspace_with(&s3, &pausing);
    let writing = LIST_SCRIPT.replace(
        "def run(mini_batch):\n",
        "def run(mini_batch):\n    for path in mini_batch:\n        open(os.path.join(os.environ['AZUREML_BI_OUTPUT_PATH'], 'extra-' + os.path.basename(path)), 'w').write('extra')\n",
    );
    assert_ne!(writing, LIST_SCRIPT);
    let p = Project::new(ws.dir.path(), "manifest", &writing, "mini_batch_size: 2");
    p.deploy(&ws);
    let output = "azureml://datastores/lake/paths/published";
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "manifest",
        "--input",
        &p.inputs(4).display().to_string(),
        "--output-path",
        output,
    ]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let pid = crate::support::paused_at(markers.path(), "publishing");
    assert_eq!(pid, ws.server_pid(), "the control plane paused between two files of the set");
    assert_eq!(keys_under(&s3, "lake-bucket", "published/"), ["published/extra-file-000.txt"], "one file, no manifest");
    ws.kill_server();
    ws.serve_again(&["--config", &dir.path().join("network.yml").display().to_string()]);
    let done = ws.wait_job(&job);
    assert_eq!(done["status"], "Completed", "{done:#}");
    let mut expected: Vec<String> = (0..4).map(|i| format!("published/extra-file-{i:03}.txt")).collect();
    expected.extend(["published/.cove-published".to_string(), "published/predictions.csv".to_string()]);
    expected.sort();
    assert_eq!(keys_under(&s3, "lake-bucket", "published/"), expected);
    // Read as a reader of the bucket would, with its credentials (boto3, which moto's server comes with).
    let read = std::process::Command::new("python3")
        .args(["-c", "import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test-secret', region_name='us-east-1'); sys.stdout.write(s3.get_object(Bucket='lake-bucket', Key='published/.cove-published')['Body'].read().decode())"])
        .arg(format!("http://127.0.0.1:{}", s3.port))
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let named: Vec<String> =
        manifest["files"].as_array().unwrap().iter().map(|f| f[0].as_str().unwrap().to_string()).collect();
    let mut set: Vec<String> = (0..4).map(|i| format!("extra-file-{i:03}.txt")).collect();
    set.push("predictions.csv".into());
    assert_eq!(named, set, "the manifest names the whole set: {manifest:#}");
    assert_eq!(manifest["job"], job.as_str());
    let dl = dir.path().join("dl");
    ws.cove(&["job", "download", &job, "--download-path", &dl.display().to_string()]).ok();
    let predictions = std::fs::read_to_string(dl.join("named-outputs/score/predictions.csv")).unwrap();
    assert_eq!(predictions, "file-000.txt 0\nfile-001.txt 2\nfile-002.txt 4\nfile-003.txt 6\n");
}
