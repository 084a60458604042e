//! Environments: built per deployment with uv from their conda and pip files, content-addressed and
//! shared, from the workspace's package source only; and MLflow models deployed with no scoring script.
//! Builds reach no package registry: they use wheels this test writes, a local wheel folder that
//! `scripts/setup` filled, or a package index the test serves on loopback.

use crate::support::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wheel folder `scripts/setup` fills from the package registry (`scripts/wheelhouse.txt`).
fn wheelhouse() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/wheelhouse");
    let has = |prefix: &str| {
        std::fs::read_dir(&dir).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
    };
    assert!(
        has("mlflow_skinny-3.17.2") && has("scikit_learn-1.9.1") && has("pandas-3.1.1"),
        "{} lacks the wheels of scripts/wheelhouse.txt: run scripts/setup",
        dir.display()
    );
    std::fs::canonicalize(dir).unwrap()
}

/// Writes a pure-Python wheel of `name` whose module says its version, as any index would serve it.
fn tiny_wheel(dir: &Path, name: &str, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let code = r#"
import base64, hashlib, sys, zipfile
out, name, version = sys.argv[1:4]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}.py": f"VERSION = {version!r}\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: cove-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(text):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
record = "".join(f"{path},{digest(text)},{len(text.encode())}\n" for path, text in files.items())
files[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
with zipfile.ZipFile(f"{out}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
"#;
    let status = Command::new("python3").args(["-c", code, &dir.display().to_string(), name, version]).status();
    assert!(status.unwrap().success(), "the test's wheel {name}-{version} was written");
}

/// A scoring script that says which version of `covepin` its environment has.
const PIN_SCRIPT: &str = r#"
import os, covepin

def init():
    pass

def run(mini_batch):
    return [f"{os.path.basename(p)} {covepin.VERSION}" for p in mini_batch]
"#;

fn conda(pins: &str) -> String {
    let mut text =
        "name: pins\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n".to_string();
    for pin in pins.split_whitespace() {
        text.push_str(&format!("    - {pin}\n"));
    }
    text
}

/// Writes deployment `name` of the project's endpoint, with an inline environment of `conda_text`
/// and `extra` lines under `environment:`.
fn deployment_with_environment(p: &Project, name: &str, conda_text: &str, extra: &str) -> String {
    std::fs::write(p.dir.join(format!("conda-{name}.yml")), conda_text).unwrap();
    let yaml =
        std::fs::read_to_string(p.dir.join("deployment.yml")).unwrap().replace("name: blue", &format!("name: {name}"));
    let yaml = yaml.replace("compute:", &format!("environment:\n  conda_file: conda-{name}.yml\n{extra}compute:"));
    std::fs::write(p.dir.join(format!("{name}.yml")), yaml).unwrap();
    p.file(&format!("{name}.yml"))
}

fn invoke(ws: &Workspace, endpoint: &str, deployment: &str, input: &Path) -> serde_json::Value {
    let input = input.display().to_string();
    let run = ws.cove(&["--json", "endpoint", "invoke", endpoint, "-d", deployment, "--input", &input]).ok().json();
    let job = ws.wait_job(run["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    job
}

fn show(ws: &Workspace, endpoint: &str, name: &str) -> serde_json::Value {
    ws.cove(&["--json", "deployment", "show", "-e", endpoint, "-n", name]).ok().json()
}

fn build_count(log: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("building environment").count()
}

#[test]
fn deployments_get_their_own_environments_built_once_and_shared() {
    let wheels = tempfile::tempdir().unwrap();
    for (name, version) in [("covepin", "1.0"), ("covepin", "2.0"), ("covedep", "1.0")] {
        tiny_wheel(wheels.path(), name, version);
    }
    let ws = Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[]);
    let p = Project::new(&ws.path(), "pins", PIN_SCRIPT, "mini_batch_size: 2");
    let data = p.inputs(2);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();

    // Two deployments pinning conflicting versions of one package run side by side, each seeing its own.
    let image = "  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04\n";
    let blue = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), image);
    let green = deployment_with_environment(&p, "green", &conda("covepin==2.0"), "");
    ws.cove(&["deployment", "create", "-f", &blue, "--set-default"]).ok();
    ws.cove(&["deployment", "create", "-f", &green]).ok();
    let blue_job = invoke(&ws, "pins", "blue", &data);
    let green_job = invoke(&ws, "pins", "green", &data);
    assert_eq!(ws.output_lines(&blue_job), ["file-000.txt 1.0", "file-001.txt 1.0"]);
    assert_eq!(ws.output_lines(&green_job), ["file-000.txt 2.0", "file-001.txt 2.0"]);
    let (b, g) = (show(&ws, "pins", "blue"), show(&ws, "pins", "green"));
    assert_ne!(b["environment"]["key"], g["environment"]["key"]);
    assert!(b["python"].as_str().unwrap().contains("/state/environments/"), "{b:#}");
    // The image is recorded and reported as not used, never silently dropped.
    assert_eq!(b["environment"]["image_not_used"], "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04");
    let text = ws.cove(&["deployment", "show", "-e", "pins", "blue"]).ok().stdout.clone();
    assert!(text.contains("openmpi4.1.0-ubuntu20.04 (not used: built from the conda and pip files)"), "{text}");
    assert!(text.contains("packages:                   covepin==1.0"), "{text}");

    // The same specification, registered, is the same build: built once, shared.
    std::fs::write(p.dir.join("env.yml"), "name: pinned-one\nconda_file: conda-blue.yml\n").unwrap();
    let registered = ws.cove(&["--json", "environment", "create", "-f", &p.file("env.yml")]).ok().json();
    assert_eq!(registered["version"], 1);
    let teal = std::fs::read_to_string(&blue).unwrap().replace("name: blue", "name: teal");
    let teal = teal.replace("environment:\n  conda_file: conda-blue.yml\n", "environment: azureml:pinned-one@latest\n");
    let teal = teal.replace(image, "");
    std::fs::write(p.dir.join("teal.yml"), teal).unwrap();
    ws.cove(&["deployment", "create", "-f", &p.file("teal.yml")]).ok();
    let t = show(&ws, "pins", "teal");
    assert_eq!(t["environment"]["key"], b["environment"]["key"]);
    assert_eq!(t["environment"]["source"], "azureml:pinned-one:1");
    assert_eq!(build_count(b["environment"]["log"].as_str().unwrap()), 1, "one build for both");
    let env_show = ws.cove(&["environment", "show", "pinned-one"]).ok().stdout.clone();
    assert!(env_show.contains("used by pins/teal") && env_show.contains("built"), "{env_show}");
    let listed = ws.cove(&["--json", "environment", "list"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Concurrent requests for one new environment wait for a single build.
    let both = conda("covepin==2.0 covedep");
    let first = deployment_with_environment(&p, "one", &both, "");
    let second = deployment_with_environment(&p, "two", &both, "");
    let spawn = |file: &str| {
        Command::new(COVE)
            .args(["--url", &ws.url, "--token", &ws.token(), "deployment", "create", "-f", file])
            .arg("--ca-file")
            .arg(ws.path().join("tls/trust.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, c) = (spawn(&first), spawn(&second));
    for child in [a, c] {
        let out: Run = child.wait_with_output().unwrap().into();
        out.ok();
    }
    let (one, two) = (show(&ws, "pins", "one"), show(&ws, "pins", "two"));
    assert_eq!(one["environment"]["key"], two["environment"]["key"]);
    assert_eq!(build_count(one["environment"]["log"].as_str().unwrap()), 1, "the second request waited for the first");

    // An aging pin: no such version and no matching interpreter. The error names the pin and the
    // nearest versions that can be installed; an override lifts it without editing the file.
    let aging = "name: old\ndependencies:\n  - python=3.8\n  - pip:\n    - covepin==0.9\n";
    let old = deployment_with_environment(&p, "old", aging, "");
    let refused = ws.cove(&["deployment", "create", "-f", &old]);
    refused.fails_with(2, "`covepin==0.9` cannot be installed for Python 3.11");
    refused.fails_with(2, "the nearest versions that can: 1.0, 2.0");
    let lifted = deployment_with_environment(&p, "old", aging, "  overrides: [covepin==1.0]\n");
    ws.cove(&["deployment", "create", "-f", &lifted]).ok();
    let o = show(&ws, "pins", "old");
    assert_eq!(o["environment"]["overrides_applied"], serde_json::json!(["covepin==1.0"]));
    let warning = o["environment"]["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("python=3.8: no interpreter on this host matches"), "{warning}");
    assert_eq!(invoke(&ws, "pins", "old", &data)["status"], "Completed");
    let text = ws.cove(&["deployment", "show", "-e", "pins", "old"]).ok().stdout.clone();
    assert!(text.contains("override applied:           covepin==1.0"), "{text}");

    // Deleting the last deployment of an environment removes its build; shared ones stay.
    let green_dir = Path::new(g["python"].as_str().unwrap()).ancestors().nth(2).unwrap().to_path_buf();
    assert!(green_dir.join(".cove-built").exists(), "{}", green_dir.display());
    ws.cove(&["deployment", "delete", "-e", "pins", "green"]).ok();
    assert!(!green_dir.exists(), "the unused build {} was removed", green_dir.display());
    let blue_dir = Path::new(b["python"].as_str().unwrap()).ancestors().nth(2).unwrap().to_path_buf();
    ws.cove(&["deployment", "delete", "-e", "pins", "teal"]).ok();
    assert!(blue_dir.join(".cove-built").exists(), "blue still uses {}", blue_dir.display());
}

#[test]
fn environments_need_a_package_source_and_refuse_what_would_leave_it() {
    let ws = Workspace::start();
    let p = Project::new(&ws.path(), "nosrc", PIN_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &file]).fails_with(
        2,
        "this workspace has no package source for environment builds: start it with --package-index URL",
    );
    let file = deployment_with_environment(&p, "blue", &conda("--extra-index-url=http://127.0.0.1:9/simple"), "");
    ws.cove(&["deployment", "create", "-f", &file])
        .fails_with(2, "is a pip option; builds use only the workspace's package index");
    let file = deployment_with_environment(&p, "blue", &conda("covepin@http://127.0.0.1:9/covepin.whl"), "");
    ws.cove(&["deployment", "create", "-f", &file]).fails_with(2, "names a URL");
    let list = ws.cove(&["--json", "deployment", "list", "-e", "nosrc"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "no refused deployment was created");
    // An index by name cannot be reached from a build, which has no name resolution.
    let bad = Command::new(COVE)
        .args(["up", "--dir", &ws.path().join("other").display().to_string(), "--listen", "127.0.0.1:0"])
        .args(["--package-index", "http://pypi.internal/simple"])
        .output()
        .unwrap();
    let bad: Run = bad.into();
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("the host must be the private endpoint's IP address"), "{}", bad.stderr);
}

/// A static file server the test runs on loopback, with its request log.
struct FileServer {
    child: std::process::Child,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Python's file server, over TLS with the given certificate and key (it prints the same first line).
const TLS_FILE_SERVER: &str = "import functools, http.server, ssl, sys
root, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f'Serving HTTPS on 127.0.0.1 port {server.server_address[1]} (https://127.0.0.1/) ...', flush=True)
server.serve_forever()
";

impl FileServer {
    fn start(root: &Path) -> FileServer {
        let mut command = Command::new("python3");
        command.args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory"]).arg(root).arg("0");
        Self::spawn(command)
    }

    /// Serves `root` over HTTPS with a certificate and key.
    fn start_tls(root: &Path, cert: &Path, key: &Path) -> FileServer {
        let mut command = Command::new("python3");
        command.args(["-u", "-c", TLS_FILE_SERVER]).arg(root).arg(cert).arg(key);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> FileServer {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.split(" port ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("the file server said where it listens: {first:?}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        FileServer { child, port, log }
    }

    fn requests(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

#[test]
fn builds_reach_only_the_workspace_package_index() {
    let root = tempfile::tempdir().unwrap();
    // A package index (the simple API) made of folders, and another server a page of it points at.
    let index = root.path().join("index");
    tiny_wheel(&index.join("simple/covepin"), "covepin", "1.0");
    let elsewhere = root.path().join("elsewhere");
    tiny_wheel(&elsewhere, "covefar", "1.0");
    let other = FileServer::start(&elsewhere);
    let far = format!("http://127.0.0.1:{}/covefar-1.0-py3-none-any.whl", other.port);
    std::fs::create_dir_all(index.join("simple/covefar")).unwrap();
    std::fs::write(
        index.join("simple/covefar/index.html"),
        format!("<a href=\"{far}\">covefar-1.0-py3-none-any.whl</a>\n"),
    )
    .unwrap();
    let server = FileServer::start(&index);
    // The other server answers anyone on this host: a build that reached it would be seen.
    let probe = format!("import urllib.request; urllib.request.urlopen('{far}').read()");
    assert!(Command::new("python3").args(["-c", &probe]).status().unwrap().success(), "the other server answers");
    let probes_before = other.requests().matches("GET /covefar").count();
    assert_eq!(probes_before, 1, "{}", other.requests());

    let url = format!("http://127.0.0.1:{}/simple", server.port);
    let ws = Workspace::start_with(&["--package-index", &url], &[]);
    let p = Project::new(&ws.path(), "indexed", PIN_SCRIPT, "mini_batch_size: 2");
    let data = p.inputs(1);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    assert!(server.requests().contains("GET /simple/covepin/"), "the build used the index: {}", server.requests());
    assert_eq!(ws.output_lines(&invoke(&ws, "indexed", "blue", &data)), ["file-000.txt 1.0"]);

    // A wheel the index points at on another server is out of the build's reach.
    let file = deployment_with_environment(&p, "far", &conda("covefar==1.0"), "");
    let refused = ws.cove(&["deployment", "create", "-f", &file]);
    refused.fails_with(2, "environment: the requirements cannot be resolved from the package index");
    refused.fails_with(2, &format!("{far} cause: error sending request"));
    assert!(!refused.stderr.contains("nearest versions"), "{}", refused.stderr);
    assert!(server.requests().contains("GET /simple/covefar/"), "{}", server.requests());
    assert_eq!(
        other.requests().matches("GET /covefar").count(),
        1,
        "the build reached another server: {}",
        other.requests()
    );

    // diagnose checks that the index answers at its private endpoint.
    let diag = ws.cove(&["workspace", "diagnose"]);
    let ok = format!("OK   package index: {url} answers at its private endpoint 127.0.0.1:{}", server.port);
    assert!(diag.stdout.contains(&ok), "{}", diag.stdout);
    let port = server.port;
    drop(server);
    let diag = ws.cove(&["workspace", "diagnose"]);
    let fail = format!("FAIL package index: {url}: nothing answers at 127.0.0.1:{port}");
    assert!(diag.stdout.contains(&fail), "{}", diag.stdout);
}

/// An index served over HTTPS is verified against the CA its private endpoint names, by the builds
/// (uv in the sandbox) and by `diagnose`; without that CA, builds fail and `diagnose` says why.
#[test]
fn an_https_package_index_is_verified_against_the_ca_of_its_private_endpoint() {
    let root = tempfile::tempdir().unwrap();
    let index = root.path().join("index");
    tiny_wheel(&index.join("simple/covepin"), "covepin", "1.0");
    let tls = crate::support::tls_files(root.path(), "index");
    let server = FileServer::start_tls(&index, &tls.cert, &tls.key);
    let url = format!("https://127.0.0.1:{}/simple", server.port);
    let network = |name: &str, ca_line: &str| {
        let text = format!(
            "networks:\n  - name: workspace\n    address_space: [127.0.0.0/8]\nprivate_endpoints:\n  - name: api\n    \
             service: api\n    address: 127.0.0.1:0\n    network: workspace\n  - name: pypi\n    service: package-index\n    \
             address: 127.0.0.1:{}\n    network: workspace\n{ca_line}",
            server.port
        );
        let path = root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    let trusting = network("trusting.yml", "    ca_file: index-ca.pem\n");
    let ws = Workspace::start_with(&["--config", &trusting, "--package-index", &url], &[]);
    let p = Project::new(&ws.path(), "secure", PIN_SCRIPT, "mini_batch_size: 2");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    assert!(server.requests().contains("GET /simple/covepin/"), "the build used the index: {}", server.requests());
    assert_eq!(ws.output_lines(&invoke(&ws, "secure", "blue", &p.inputs(1))), ["file-000.txt 1.0"]);
    let diag = ws.cove(&["workspace", "diagnose"]);
    let ok = format!(
        "OK   package index: {url} answers at its private endpoint 127.0.0.1:{}, its certificate verified",
        server.port
    );
    assert!(diag.stdout.contains(&ok), "{}", diag.stdout);
    drop(ws);

    // The same index, its CA not named: the certificate is refused, by the build and by diagnose.
    let distrusting = network("distrusting.yml", "");
    let ws = Workspace::start_with(&["--config", &distrusting, "--package-index", &url], &[]);
    let p = Project::new(&ws.path(), "unsure", PIN_SCRIPT, "mini_batch_size: 2");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    let refused = ws.cove(&["deployment", "create", "-f", &file, "--set-default"]);
    refused.fails_with(2, "environment: the requirements cannot be resolved from the package index");
    assert!(refused.stderr.contains("certificate"), "{}", refused.stderr);
    let diag = ws.cove(&["workspace", "diagnose"]);
    let fail = format!("FAIL package index: {url}: the index's certificate is not issued by the CA this client trusts");
    assert!(diag.stdout.contains(&fail), "{}", diag.stdout);
    drop(ws);

    // A workspace on loopback has no private endpoint to name the CA on: `--package-index-ca` names it.
    let ca_file = root.path().join("index-ca.pem").display().to_string();
    let ws = Workspace::start_with(&["--package-index", &url, "--package-index-ca", &ca_file], &[]);
    let p = Project::new(&ws.path(), "loopback", PIN_SCRIPT, "mini_batch_size: 2");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    assert_eq!(ws.output_lines(&invoke(&ws, "loopback", "blue", &p.inputs(1))), ["file-000.txt 1.0"]);
    drop(ws);
    // Named twice (the flag and the private endpoint's ca_file), or not a CA: `cove up` refuses, saying which.
    let up = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::COVE)
            .args(["up", "--dir"])
            .arg(root.path().join("refused"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "cove up started with {args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let twice = up(&["--config", &trusting, "--package-index", &url, "--package-index-ca", &ca_file]);
    assert!(twice.contains("already names its CA"), "{twice}");
    let key_file = root.path().join("index.key").display().to_string();
    let not_ca = up(&["--package-index", &url, "--package-index-ca", &key_file]);
    assert!(not_ca.contains(&format!("--package-index-ca {key_file}")), "{not_ca}");
}

#[test]
fn mlflow_models_deploy_with_no_scoring_script() {
    let wheels = wheelhouse();
    let ws = Workspace::start_with(&["--wheels", &wheels.display().to_string()], &[]);
    let dir = ws.path().join("project");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlflow/model");
    std::fs::write(dir.join("endpoint.yml"), "name: mlflow-ep\n").unwrap();
    let deployment = format!(
        "name: nocode\nendpoint_name: mlflow-ep\nmodel:\n  name: sk-mlflow\n  type: mlflow_model\n  path: {}\n\
         compute: azureml:local\nsettings:\n  mini_batch_size: 3\n",
        model.display()
    );
    std::fs::write(dir.join("deployment.yml"), &deployment).unwrap();
    let file = |f: &str| dir.join(f).display().to_string();
    ws.cove(&["endpoint", "create", "-f", &file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &file("deployment.yml"), "--set-default"]).ok();
    let d = show(&ws, "mlflow-ep", "nocode");
    assert_eq!(d["builtin_script"], "mlflow");
    assert_eq!(d["environment"]["source"], "the MLflow model's conda.yaml");
    let notes = d["environment"]["notes"].to_string();
    assert!(notes.contains("installed as `mlflow-skinny`"), "{notes}");
    assert!(d["environment"]["build"]["lock"].as_str().unwrap().contains("scikit-learn==1.9.1"));

    // Far from the decision boundary (a ≈ 2.5), so the labels are certain.
    std::fs::write(data.join("one.csv"), "a,b\n0.0,1.0\n5.0,0.0\n10.0,1.0\n").unwrap();
    let python = d["python"].as_str().unwrap();
    let parquet = data.join("two.parquet").display().to_string();
    let wrote = Command::new(python)
        .args([
            "-c",
            "import pandas, sys; pandas.DataFrame({'a': [-3.0], 'b': [0.0]}).to_parquet(sys.argv[1])",
            &parquet,
        ])
        .status()
        .unwrap();
    assert!(wrote.success(), "the test's parquet file was written");
    std::fs::write(data.join("three.txt"), "not a table\n").unwrap();
    // The signature (`a` and `b`, doubles) is enforced as MLflow's pyfunc does, which the reference's
    // driver relies on too: text and 64-bit integers do not convert safely to doubles, a missing column
    // fails the file, an extra one is ignored.
    std::fs::write(data.join("four.csv"), "a,b\nnot-a-number,1.0\n").unwrap();
    std::fs::write(data.join("five.csv"), "a\n10.0\n").unwrap();
    std::fs::write(data.join("six.csv"), "a,b,extra\n10.0,1.0,ignored\n").unwrap();
    std::fs::write(data.join("seven.csv"), "a,b\n10,1\n").unwrap();
    let job = invoke(&ws, "mlflow-ep", "nocode", &data);
    let mut lines = ws.output_lines(&job);
    lines.sort();
    assert_eq!(lines, ["0,0,one.csv", "0,0,two.parquet", "0,1,six.csv", "1,1,one.csv", "2,1,one.csv"]);
    assert_eq!(job["progress"]["items_failed"], 4, "{job:#}");
    let logs = ws.log(job["name"].as_str().unwrap(), "user/stdout/local-0/process000.stdout.txt");
    assert!(logs.contains("ValueError: File type 'txt' is not supported"), "{logs}");
    assert!(logs.contains("Incompatible input types for column a"), "{logs}");
    assert!(logs.contains("missing inputs") && logs.contains("'b'"), "{logs}");
    assert!(logs.contains("Can not safely convert int64 to float64"), "{logs}");
    for a in job["attempts"].as_array().unwrap() {
        assert_eq!(a["isolation"]["sandbox"], "namespaces", "{a}");
    }

    // Images are read into arrays shaped as the model's tensor signature says; one line per image.
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let draw = "import sys; from PIL import Image\nfor path, value in zip(sys.argv[1::2], sys.argv[2::2]):\n    \
                Image.new('RGB', (4, 4), (int(value),) * 3).save(path)";
    let (a, b) = (images.join("a.png").display().to_string(), images.join("b.png").display().to_string());
    assert!(Command::new(python).args(["-c", draw, &a, "10", &b, "20"]).status().unwrap().success());
    let image_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlflow/image-model");
    let image_deployment = deployment
        .replace("name: nocode", "name: images")
        .replace("name: sk-mlflow", "name: image-mean")
        .replace(&model.display().to_string(), &image_model.display().to_string());
    std::fs::write(dir.join("images.yml"), image_deployment).unwrap();
    ws.cove(&["deployment", "create", "-f", &file("images.yml")]).ok();
    let job = invoke(&ws, "mlflow-ep", "images", &images);
    let mut lines = ws.output_lines(&job);
    lines.sort();
    assert_eq!(lines, ["10.0,a.png", "20.0,b.png"]);

    // A scoring script for an MLflow model needs an environment, as in the reference.
    std::fs::create_dir_all(dir.join("code")).unwrap();
    std::fs::write(dir.join("code/score.py"), PIN_SCRIPT).unwrap();
    let custom = deployment
        .replace("name: nocode", "name: custom")
        .replace("compute:", "code_configuration:\n  code: code\n  scoring_script: score.py\ncompute:");
    std::fs::write(dir.join("custom.yml"), custom).unwrap();
    ws.cove(&["deployment", "create", "-f", &file("custom.yml")])
        .fails_with(2, "a scoring script for an mlflow_model needs an environment, as in the reference");

    // A model without the python_function flavour cannot be deployed with no scoring script.
    let flavourless = dir.join("flavourless");
    std::fs::create_dir_all(&flavourless).unwrap();
    std::fs::write(
        flavourless.join("MLmodel"),
        "flavors:
  sklearn:
    pickled_model: model.pkl
",
    )
    .unwrap();
    let refused = deployment
        .replace("name: nocode", "name: flavourless")
        .replace("name: sk-mlflow", "name: flavourless")
        .replace(&model.display().to_string(), &flavourless.display().to_string());
    std::fs::write(dir.join("flavourless.yml"), refused).unwrap();
    ws.cove(&["deployment", "create", "-f", &file("flavourless.yml")]).fails_with(
        2,
        "model: the MLflow model has no python_function flavour (it has: sklearn); deploying it with no scoring script needs that flavour",
    );

    // A mini-batch whose every file fails raises, as the reference's driver does: the attempt fails.
    let failing = dir.join("failing");
    std::fs::create_dir_all(&failing).unwrap();
    for name in ["a.txt", "b.txt"] {
        std::fs::write(failing.join(name), "not a table\n").unwrap();
    }
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "mlflow-ep",
        "-d",
        "nocode",
        "--input",
        &failing.display().to_string(),
        "--set",
        "max_retries=1",
    ]);
    let failed = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(failed["progress"]["items_ok"], 0, "{failed:#}");
    assert!(failed.to_string().contains("No objects to concatenate"), "the mini-batch failed, saying why: {failed:#}");
}

/// On a Slurm cluster with an environment cache, the first worker that needs an environment builds it
/// there (the control plane only resolves it), and jobs use it.
#[test]
fn slurm_nodes_build_environments_in_the_compute_cache() {
    let wheels = tempfile::tempdir().unwrap();
    tiny_wheel(wheels.path(), "covepin", "1.0");
    let cluster = slurm_cluster();
    let mut ws =
        Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[("SLURM_CONF", SLURM_CONF)]);
    ws.cluster = Some(cluster);
    let cache = ws.path().join("shared/environments");
    let compute = ws.path().join("compute.yml");
    std::fs::write(
        &compute,
        format!(
            "name: hpc\ntype: slurm\npartition: debug\nmem_per_task_mb: 512\ntime_limit: '00:10:00'\nenvironment_cache: {}\n",
            cache.display()
        ),
    )
    .unwrap();
    ws.cove(&["compute", "create", "-f", &compute.display().to_string()]).ok();
    let p = Project::new(&ws.path(), "hpcpins", PIN_SCRIPT, "mini_batch_size: 2").on(Backend::Slurm);
    let data = p.inputs(3);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    let d = show(&ws, "hpcpins", "blue");
    let key = d["environment"]["key"].as_str().unwrap().to_string();
    assert_eq!(d["python"], cache.join(&key).join("bin/python").display().to_string());
    assert!(!cache.join(&key).exists(), "the control plane only resolved the environment");
    let job = invoke(&ws, "hpcpins", "blue", &data);
    assert_eq!(ws.output_lines(&job), ["file-000.txt 1.0", "file-001.txt 1.0", "file-002.txt 1.0"]);
    assert!(cache.join(&key).join(".cove-built").exists(), "a node built it in the cache");
    assert_eq!(build_count(&cache.join(format!("{key}.log")).display().to_string()), 1);
}

/// Workspace-wide overrides apply to every environment; a `python` pin picks a configured interpreter,
/// and in strict mode a pin no interpreter matches is refused.
#[test]
fn workspace_overrides_interpreters_and_strict_python_pins() {
    let wheels = tempfile::tempdir().unwrap();
    tiny_wheel(wheels.path(), "covepin", "1.0");
    tiny_wheel(wheels.path(), "covepin", "2.0");
    let version = |python: &str| {
        let out = Command::new(python).args(["-c", "import platform; print(platform.python_version())"]).output();
        String::from_utf8(out.unwrap().stdout).unwrap().trim().to_string()
    };
    let (default, other) = (version("python3"), version("/usr/bin/python3"));
    assert_ne!(default, other, "this host has two interpreters of different versions to choose from");
    let ws = Workspace::start_with(
        &[
            "--wheels",
            &wheels.path().display().to_string(),
            "--environment-override",
            "covepin==2.0",
            "--interpreter",
            "/usr/bin/python3",
            "--strict-python",
        ],
        &[],
    );
    let p = Project::new(&ws.path(), "strict", PIN_SCRIPT, "mini_batch_size: 2");
    let data = p.inputs(1);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let pinned = conda("covepin==1.0").replace("python=3.11", &format!("python={other}"));
    // Allowed to build from source, it builds with a package cache of its own, gone once it is built.
    let file = deployment_with_environment(&p, "blue", &pinned, "  allow_source_builds: true\n");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    let d = show(&ws, "strict", "blue");
    assert_eq!(d["environment"]["build"]["allow_source_builds"], true);
    let built = Path::new(d["python"].as_str().unwrap()).ancestors().nth(2).unwrap().to_path_buf();
    let key = d["environment"]["key"].as_str().unwrap();
    let private = built.parent().unwrap().join(format!("{key}.private-cache"));
    assert!(built.join(".cove-built").exists() && !private.exists(), "{}", private.display());
    let log = std::fs::read_to_string(d["environment"]["log"].as_str().unwrap()).unwrap();
    assert!(!log.contains("--only-binary"), "{log}");
    assert!(log.contains(&format!("(package cache {})", private.display())), "{log}");
    assert_eq!(d["environment"]["overrides_applied"], serde_json::json!(["covepin==2.0"]));
    let interpreter = d["environment"]["interpreter"].as_str().unwrap();
    assert!(interpreter.ends_with(&format!("(Python {other})")), "{interpreter}");
    assert_eq!(ws.output_lines(&invoke(&ws, "strict", "blue", &data)), ["file-000.txt 2.0"]);
    let old = deployment_with_environment(&p, "old", &conda("covepin").replace("python=3.11", "python=3.8"), "");
    ws.cove(&["deployment", "create", "-f", &old])
        .fails_with(2, "python=3.8: no interpreter on this host matches")
        .fails_with(2, "add one with --interpreter PATH, or relax the pin");
}

/// Where uv is absent, pip builds the same environments: resolution, overrides of the environment's own
/// entries, and the nearest versions of a pin that cannot be met.
#[test]
fn environments_build_with_pip_where_uv_is_absent() {
    let wheels = tempfile::tempdir().unwrap();
    tiny_wheel(wheels.path(), "covepin", "1.0");
    tiny_wheel(wheels.path(), "covepin", "2.0");
    let ws = Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[("COVE_UV", "none")]);
    let p = Project::new(&ws.path(), "pipped", PIN_SCRIPT, "mini_batch_size: 2");
    let data = p.inputs(1);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let file = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "  overrides: [covepin==2.0]\n");
    ws.cove(&["deployment", "create", "-f", &file, "--set-default"]).ok();
    let d = show(&ws, "pipped", "blue");
    let lock = d["environment"]["build"]["lock"].as_str().unwrap();
    assert!(lock.starts_with("covepin==2.0 --hash=sha256:") && lock.lines().count() == 1, "{lock}");
    let log = std::fs::read_to_string(d["environment"]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains(" -I -m pip --python ") && !log.contains("bin/uv "), "{log}");
    assert_eq!(ws.output_lines(&invoke(&ws, "pipped", "blue", &data)), ["file-000.txt 2.0"]);
    let old = deployment_with_environment(&p, "old", &conda("covepin==0.9"), "");
    ws.cove(&["deployment", "create", "-f", &old]).fails_with(2, "the nearest versions that can: 1.0, 2.0");
}

/// Writes `covebuild-1.0.tar.gz`, a source distribution whose build backend, whenever it runs, says so
/// on stderr, leaves a `cove-backend-ran` file in every folder it is given (home, caches, temporary),
/// and fails.
fn marking_sdist(dir: &Path) {
    let code = r#"
import io, sys, tarfile
out = sys.argv[1]
backend = '''
import os, sys
def _ran(*args, **kwargs):
    sys.stderr.write("COVE-BACKEND-RAN\\n")
    for var in ("HOME", "UV_CACHE_DIR", "PIP_CACHE_DIR", "TMPDIR", "XDG_CACHE_HOME"):
        folder = os.environ.get(var)
        if folder:
            try:
                open(os.path.join(folder, "cove-backend-ran"), "w").write("x")
            except OSError:
                pass
    raise RuntimeError("COVE-BACKEND-RAN: this backend never builds")
get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _ran
get_requires_for_build_sdist = build_sdist = _ran
'''
files = {
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    "backend.py": backend,
    "PKG-INFO": "Metadata-Version: 2.1\nName: covebuild\nVersion: 1.0\n",
}
with tarfile.open(f"{out}/covebuild-1.0.tar.gz", "w:gz") as t:
    for name, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(f"covebuild-1.0/{name}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    let status = Command::new("python3").args(["-c", code, &dir.display().to_string()]).status();
    assert!(status.unwrap().success(), "the test's source distribution was written");
}

/// Files named `name` anywhere under `dir`.
fn found_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(found_named(&path, name));
        } else if e.file_name() == name {
            out.push(path);
        }
    }
    out
}

/// Hole 3: a conda `pip:` entry or an override is one requirement, parsed: an entry that smuggles a
/// second line with requirement-file options (`--no-binary :all:`, `-e`) is refused at creation, naming
/// the file and entry. A wheel-only build of a package the index has only as a source distribution
/// fails in the resolver, and the package's build backend never runs, so nothing reaches the package
/// cache other builds share; allowed source builds do run it (which shows the test's backend works).
#[test]
fn requirements_are_parsed_and_wheel_only_builds_never_run_a_build_backend() {
    let wheels = tempfile::tempdir().unwrap();
    tiny_wheel(wheels.path(), "covepin", "1.0");
    marking_sdist(wheels.path());
    let ws = Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[]);
    let p = Project::new(&ws.path(), "parsed", PIN_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let smuggled = conda("covepin==1.0") + "    - \"covepin==1.0\\n--no-binary :all:\"\n";
    let file = deployment_with_environment(&p, "blue", &smuggled, "");
    ws.cove(&["deployment", "create", "-f", &file])
        .fails_with(2, "the conda file's pip section: `covepin==1.0\n--no-binary :all:` is not a requirement like `name==1.2`: nothing more was expected, found a control character ('\\n') at column 13");
    let file =
        deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "  overrides: [\"covepin>=1\\n-e .\"]\n");
    ws.cove(&["deployment", "create", "-f", &file]).fails_with(2, "overrides.0");
    let list = ws.cove(&["--json", "deployment", "list", "-e", "parsed"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "no refused deployment was created");

    let file = deployment_with_environment(&p, "blue", &conda("covebuild==1.0"), "");
    let refused = ws.cove(&["deployment", "create", "-f", &file]);
    refused.fails_with(2, "covebuild");
    assert!(!refused.stderr.contains("COVE-BACKEND-RAN"), "a wheel-only build ran the backend: {}", refused.stderr);
    assert_eq!(found_named(&ws.path(), "cove-backend-ran"), Vec::<PathBuf>::new());
    let file = deployment_with_environment(&p, "green", &conda("covebuild==1.0"), "  allow_source_builds: true\n");
    let built = ws.cove(&["deployment", "create", "-f", &file]);
    built.fails_with(2, "COVE-BACKEND-RAN");
    // What it left, it left in the private cache of a run that may build from source, removed after it.
    assert_eq!(found_named(&ws.path(), "cove-backend-ran"), Vec::<PathBuf>::new());
}

/// Hole 9: an environment's lock pins every file by its sha256, and a build installs a file only if its
/// bytes are the lock's: a wheel replaced in the wheel folder after the environment was resolved (same
/// name, same version, other bytes) fails the build that would install it, naming the hash.
#[test]
fn builds_install_only_the_bytes_their_lock_names() {
    let wheels = tempfile::tempdir().unwrap();
    tiny_wheel(wheels.path(), "covepin", "1.0");
    let ws = Workspace::start_with(&["--wheels", &wheels.path().display().to_string()], &[]);
    let p = Project::new(&ws.path(), "hashed", PIN_SCRIPT, "mini_batch_size: 2\nretry_settings:\n    max_retries: 1");
    let data = p.inputs(2);
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let blue = deployment_with_environment(&p, "blue", &conda("covepin==1.0"), "");
    ws.cove(&["deployment", "create", "-f", &blue, "--set-default"]).ok();
    let shown = show(&ws, "hashed", "blue");
    let lock = shown["environment"]["build"]["lock"].as_str().unwrap().to_string();
    assert!(lock.starts_with("covepin==1.0 --hash=sha256:"), "{lock}");
    let text = ws.cove(&["deployment", "show", "-e", "hashed", "blue"]).ok().stdout.clone();
    assert!(text.contains("packages:                   covepin==1.0\n"), "{text}");
    let job = invoke(&ws, "hashed", "blue", &data);
    assert_eq!(ws.output_lines(&job), ["file-000.txt 1.0", "file-001.txt 1.0"]);

    // The build goes, and the wheel is replaced by one with other bytes: the next job's worker builds
    // the environment again from the lock, and refuses the wheel.
    let key = shown["environment"]["key"].as_str().unwrap();
    let built = ws.path().join("state/environments").join(key);
    assert!(built.join(".cove-built").exists(), "{} was built", built.display());
    std::fs::remove_dir_all(&built).unwrap();
    // The shared package cache goes too (it holds the wheel as first read, whose bytes match the lock).
    let cache = ws.path().join("state/environments/uv-cache");
    assert!(cache.is_dir(), "{} is the shared cache", cache.display());
    std::fs::remove_dir_all(&cache).unwrap();
    let wheel = wheels.path().join("covepin-1.0-py3-none-any.whl");
    let append = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'a') as z:\n    z.writestr('covepin_extra.py', 'planted = True\\n')\n";
    let status = Command::new("python3").args(["-c", append]).arg(&wheel).status().unwrap();
    assert!(status.success(), "the wheel was changed");
    let run = ws.cove(&["--json", "endpoint", "invoke", "hashed", "--input", &data.display().to_string()]).ok().json();
    let failed = ws.wait_job(run["name"].as_str().unwrap());
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(failed.to_string().to_lowercase().contains("hash"), "the failure names the hash: {failed:#}");
    assert!(!built.join(".cove-built").exists(), "nothing was built from the changed wheel");
}
