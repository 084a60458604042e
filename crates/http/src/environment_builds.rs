//! Environments at the control plane: where builds get packages, which interpreter a deployment's
//! `python` pin picks, resolving and building what a deployment runs in (the worker's toolchain, run in
//! a child process: `cove_common::children`), and removing builds nothing uses any more.

use crate::{App, AppRef};
use cove_api::worker::{EnvironmentBuild, PackageSource};
use cove_api::DeploymentEnvironment;
use cove_common::children::{EnvironmentAnswer, EnvironmentTask, ENVIRONMENT_ARG};
use cove_common::environment::{environment_key, interpreter_info, normalise_name, InterpreterInfo};
use cove_spec::requirement_name;
use cove_store as store;
use cove_workspace::netpolicy::NetworkPolicy;
use cove_workspace::{layout, EnvironmentSettings};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where this workspace's builds get packages, checked against its network: in a private workspace a
/// package index is reached only through a private endpoint with `service: package-index`.
pub fn package_source(config: &EnvironmentSettings, policy: &NetworkPolicy) -> Result<Option<PackageSource>, String> {
    if let Some(dir) = &config.wheels {
        if !dir.is_dir() {
            return Err(format!("--wheels {}: not a folder", dir.display()));
        }
        return Ok(Some(PackageSource::Wheels { dir: dir.display().to_string() }));
    }
    let Some(url) = &config.package_index else { return Ok(None) };
    let address = index_address(url)?;
    let endpoint = policy.private_endpoints.iter().find(|p| p.service == "package-index" && p.address == address);
    let through_endpoint = endpoint.is_some();
    let on_loopback_workspace = address.ip().is_loopback()
        && policy.networks.iter().any(|n| n.name == cove_workspace::netpolicy::LOOPBACK_NETWORK);
    if !policy.public_network_access && !through_endpoint && !on_loopback_workspace {
        return Err(format!(
            "--package-index {url}: a private workspace reaches its package index only through a private endpoint \
             with service: package-index, and none has the address {address}"
        ));
    }
    let ca = match (&config.package_index_ca, endpoint.and_then(|e| e.ca_file.as_ref())) {
        (Some(flag), Some(named)) => {
            return Err(format!(
                "--package-index-ca {}: the index's private endpoint already names its CA ({}); give it once",
                flag.display(),
                named.display()
            ))
        }
        (Some(file), None) => Some(
            cove_workspace::netpolicy::read_ca(&format!("--package-index-ca {}", file.display()), file)
                .map_err(|e| e.to_string())?,
        ),
        (None, _) => {
            endpoint.map_or(Ok(None), cove_workspace::netpolicy::PrivateEndpoint::ca).map_err(|e| e.to_string())?
        }
    };
    Ok(Some(PackageSource::Index { url: url.trim_end_matches('/').to_string(), address, ca }))
}

/// The address of an index URL. Builds run with no name resolution, so it must be an IP address.
fn index_address(url: &str) -> Result<SocketAddr, String> {
    let bad = |why: &str| format!("--package-index {url}: {why}");
    let (rest, port) = match url.split_once("://") {
        Some(("http", rest)) => (rest, 80),
        Some(("https", rest)) => (rest, 443),
        _ => return Err(bad("expected an http:// or https:// URL")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Ok(a) = authority.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = authority.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| bad("the host must be the private endpoint's IP address (builds have no name resolution)"))
}

/// What a deployment asks to be built.
pub struct EnvironmentRequest<'a> {
    /// Where the specification came from: `inline`, `azureml:name:3`, the MLflow model's files.
    pub source: String,
    pub conda: Option<&'a str>,
    pub pip: Option<&'a str>,
    pub image: Option<&'a str>,
    pub overrides: &'a [String],
    pub allow_source_builds: bool,
    /// Packages Cove's own runtime needs besides the environment's (the MLflow driver's).
    pub extra: &'a [&'a str],
    /// Requirements renamed before resolving: (`from`, `to`), with a note.
    pub renames: &'a [(&'a str, &'a str)],
}

/// Keeps a key from being collected while the deployment that asked for it is being created.
pub struct Pinned<'a> {
    app: &'a App,
    key: String,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.app.building.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// Resolves the request into a lock, picks the interpreter, and builds the environment under `root`
/// (when `build_now`; a compute with its own environment cache builds on its nodes instead).
pub async fn prepare<'a>(
    app: &'a App,
    req: EnvironmentRequest<'_>,
    root: PathBuf,
    build_now: bool,
) -> Result<(DeploymentEnvironment, Pinned<'a>), String> {
    let started = std::time::Instant::now();
    let prepared = prepare_now(app, req, root, build_now).await;
    let outcome = if prepared.is_ok() { "ok" } else { "failed" };
    app.metrics.environment_builds.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
    prepared
}

async fn prepare_now<'a>(
    app: &'a App,
    req: EnvironmentRequest<'_>,
    root: PathBuf,
    build_now: bool,
) -> Result<(DeploymentEnvironment, Pinned<'a>), String> {
    let reqs = cove_spec::requirements(req.conda, req.pip)?;
    let mut notes = reqs.notes.clone();
    let mut packages: Vec<String> = Vec::new();
    for p in &reqs.packages {
        let name = requirement_name(p);
        match req.renames.iter().find(|(from, _)| normalise_name(from) == normalise_name(name)) {
            Some((from, to)) => {
                notes.push(format!("`{p}`: installed as `{to}`, all the driver needs of `{from}`"));
                packages.push(format!("{to}{}", &p[name.len()..]));
            }
            None => packages.push(p.clone()),
        }
    }
    for extra in req.extra {
        if !packages.iter().any(|p| normalise_name(requirement_name(p)) == normalise_name(extra)) {
            packages.push(extra.to_string());
        }
    }
    let source = app.package_source.clone().ok_or_else(|| {
        "this workspace has no package source for environment builds: start it with --package-index URL \
         (reached through a private endpoint with service: package-index) or --wheels DIR (a folder of wheels)"
            .to_string()
    })?;
    let settings = app.config.environments.clone();
    let (default, pin) = (app.config.python.clone(), reqs.python.clone());
    // Asking interpreters what they are starts processes: off the async workers.
    let (interpreter, mut warnings) =
        tokio::task::spawn_blocking(move || pick_interpreter(&default, &settings, pin.as_deref()))
            .await
            .map_err(|e| format!("the interpreter check failed: {e}"))??;
    if let Some(image) = req.image {
        warnings.push(format!("image `{image}` is not used: Cove builds environments from their conda and pip files"));
    }
    let overrides: Vec<String> = app.config.environments.overrides.iter().chain(req.overrides).cloned().collect();
    let scratch = layout::environments(&app.config.dir).join(".resolve");
    let resolve = EnvironmentTask::Resolve {
        python: app.config.python.clone(),
        sandbox: app.config.sandbox,
        interpreter: interpreter.executable.clone(),
        packages: packages.clone(),
        overrides: overrides.clone(),
        source: source.clone(),
        allow_source_builds: req.allow_source_builds,
        scratch,
    };
    let lock = match run_child(&app.config.worker_exe, &resolve).await? {
        EnvironmentAnswer::Resolved { lock } => lock,
        EnvironmentAnswer::NoToolchain { message } => return Err(message),
        EnvironmentAnswer::Failed { message, .. } => {
            return Err(format!("the requirements cannot be resolved from {source}: {message}"))
        }
        EnvironmentAnswer::Built => return Err("the environment child answered a resolve with a build".into()),
    };
    let key = environment_key(&lock, &interpreter, req.allow_source_builds);
    app.building.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
    let pinned = Pinned { app, key: key.clone() };
    let build = EnvironmentBuild {
        key: key.clone(),
        lock: lock.clone(),
        python: interpreter.executable.clone(),
        root: root.display().to_string(),
        source,
        allow_source_builds: req.allow_source_builds,
    };
    let log = log_of(&root, &key);
    if build_now {
        let ensure = EnvironmentTask::Ensure {
            python: app.config.python.clone(),
            sandbox: app.config.sandbox,
            build: build.clone(),
        };
        match run_child(&app.config.worker_exe, &ensure).await? {
            EnvironmentAnswer::Built => {}
            EnvironmentAnswer::NoToolchain { message } => return Err(message),
            EnvironmentAnswer::Failed { message, log } => {
                let log = log.unwrap_or_else(|| log_of(&root, &key));
                return Err(format!("the environment could not be built: {message} (build log: {})", log.display()));
            }
            EnvironmentAnswer::Resolved { .. } => {
                return Err("the environment child answered a build with a resolve".into())
            }
        }
    }
    let installed: HashSet<String> = lock.lines().map(|l| normalise_name(requirement_name(l))).collect();
    let overrides_applied =
        overrides.iter().filter(|o| installed.contains(&normalise_name(requirement_name(o)))).cloned().collect();
    let record = DeploymentEnvironment {
        source: req.source,
        key,
        interpreter: format!("{} (Python {})", interpreter.executable, interpreter.version),
        python_pin: reqs.python,
        image_not_used: req.image.map(str::to_string),
        overrides_applied,
        notes,
        warnings,
        log: log.display().to_string(),
        build,
    };
    Ok((record, pinned))
}

fn log_of(root: &std::path::Path, key: &str) -> PathBuf {
    root.join(format!("{key}.log"))
}

/// Runs one task in the environment child (the `cove` binary's worker side), which builds with the
/// same toolchain a worker uses; its stderr is the control plane's.
async fn run_child(exe: &std::path::Path, task: &EnvironmentTask) -> Result<EnvironmentAnswer, String> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let request = serde_json::to_vec(task).map_err(|e| format!("the environment task: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg(ENVIRONMENT_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the environment build ({}): {e}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(&request).await.map_err(|e| format!("the environment build's input: {e}"))?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| format!("the environment build failed: {e}"))?;
    if !out.status.success() {
        return Err(format!("the environment build ended without an answer ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the environment build's answer: {e}"))
}

/// The interpreter a `python` pin picks: the default when it matches (or there is no pin), else the
/// first configured one that does; with none, a warning and the default, or a refusal in strict mode.
fn pick_interpreter(
    default: &str,
    settings: &EnvironmentSettings,
    pin: Option<&str>,
) -> Result<(InterpreterInfo, Vec<String>), String> {
    let default_info = interpreter_info(default)?;
    let Some(pin) = pin else { return Ok((default_info, Vec::new())) };
    let mut seen = vec![format!("{} ({})", default_info.version, default_info.executable)];
    if cove_spec::python_matches(pin, &default_info.version) {
        return Ok((default_info, Vec::new()));
    }
    for candidate in &settings.interpreters {
        let Ok(info) = interpreter_info(candidate) else { continue };
        if cove_spec::python_matches(pin, &info.version) {
            return Ok((info, Vec::new()));
        }
        seen.push(format!("{} ({})", info.version, info.executable));
    }
    let message = format!("python={pin}: no interpreter on this host matches (have {}); ", seen.join(", "));
    if settings.strict_python {
        return Err(message + "add one with --interpreter PATH, or relax the pin");
    }
    Ok((default_info.clone(), vec![message + &format!("using Python {}", default_info.version)]))
}

/// Removes environments built on this host that no deployment and no unfinished job uses, and that no
/// deployment being created asked for.
pub async fn collect_unused(app: &AppRef) {
    let Ok(in_use) = app.store.call(|c| store::environment_keys_in_use(c)).await else { return };
    let root = layout::environments(&app.config.dir);
    let building = app.building.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // A walk and whole trees removed: on the blocking pool.
    let _ = tokio::task::spawn_blocking(move || remove_builds_except(&root, &in_use, &building)).await;
}

fn remove_builds_except(root: &std::path::Path, in_use: &[String], building: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = name.split('.').next().unwrap_or_default().to_string();
        let is_build = key.len() == 24 && key.chars().all(|c| c.is_ascii_hexdigit());
        if !is_build || in_use.contains(&key) || building.contains(&key) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

#[cfg(test)]
mod tests {
    use cove_workspace::netpolicy::NetworkPolicy;
    use cove_workspace::EnvironmentSettings;

    const PRIVATE: &str = "
networks:
  - name: ws
    address_space: [198.18.1.0/24]
private_endpoints:
  - name: api
    service: api
    address: 198.18.1.10:8470
    network: ws
  - name: pypi-mirror
    service: package-index
    address: 198.18.1.20:8080
    network: ws
";

    #[test]
    fn a_private_workspace_reaches_its_index_only_through_its_private_endpoint() {
        let policy = NetworkPolicy::parse("ws.yml", PRIVATE).unwrap();
        let with = |url: &str| EnvironmentSettings { package_index: Some(url.into()), ..Default::default() };
        let ok = super::package_source(&with("http://198.18.1.20:8080/simple/"), &policy).unwrap().unwrap();
        assert_eq!(ok.to_string(), "the package index http://198.18.1.20:8080/simple");
        let refused = super::package_source(&with("http://198.18.1.21:8080/simple"), &policy).unwrap_err();
        assert!(refused.contains("only through a private endpoint with service: package-index"), "{refused}");
        let loopback = NetworkPolicy::loopback("127.0.0.1:8470".parse().unwrap()).unwrap();
        assert!(super::package_source(&with("http://127.0.0.1:9/simple"), &loopback).is_ok());
        assert!(super::package_source(&with("http://198.18.1.20:8080/simple"), &loopback).is_err());
        assert!(super::package_source(&EnvironmentSettings::default(), &policy).unwrap().is_none());
    }

    #[test]
    fn index_urls_name_an_address() {
        assert_eq!(super::index_address("http://198.18.0.5:8080/simple").unwrap().to_string(), "198.18.0.5:8080");
        assert_eq!(super::index_address("https://[::1]/simple").unwrap().to_string(), "[::1]:443");
        assert!(super::index_address("http://pypi.internal/simple").unwrap_err().contains("IP address"));
        assert!(super::index_address("ftp://1.2.3.4/").unwrap_err().contains("http://"));
    }
}
