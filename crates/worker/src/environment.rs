//! Builds Python environments with uv: resolves an environment's requirements into a lock, and turns a
//! lock into a virtual environment under `root/<key>`, once per key on a host, under a file lock, so
//! concurrent requests (threads, processes, or workers on other nodes of a shared filesystem) wait for
//! a single build. Every uv run happens in the sandbox: no network but the package source's private
//! endpoint (joined through a forwarder, as scoring code's egress is), and a file view of only the
//! interpreter, uv, the wheel folder and the folders the build writes.

use crate::sandbox::{self, FileView};
use cove_api::worker::{EnvironmentBuild, PackageSource, SandboxMode};
use cove_spec::requirement_name;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use cove_common::environment::{environment_key, index_client, interpreter_info, normalise_name, InterpreterInfo};

/// Written last into a finished environment: a folder without it is a build that did not finish.
const BUILT_MARKER: &str = ".cove-built";

/// Runs the egress forwarder inside a build sandbox, then uv; exits with uv's status.
const EGRESS_RUNNER: &str = concat!(
    include_str!("egress.py"),
    r#"
import subprocess, sys
sep = sys.argv.index("--")
for spec in sys.argv[1:sep]:
    host, port, sock = spec.split(",", 2)
    open_egress(host, int(port), sock)
sys.exit(subprocess.run(sys.argv[sep + 1:]).returncode)
"#
);

/// Whether the environment of `build` is already built on this host.
pub fn is_built(build: &EnvironmentBuild) -> bool {
    Path::new(&build.root).join(&build.key).join(BUILT_MARKER).exists()
}

/// The tools a build runs with.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub installer: Installer,
    pub sandbox: SandboxMode,
}

/// What installs packages: uv, or where uv is absent, the interpreter's own pip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    Uv(PathBuf),
    Pip,
}

impl Toolchain {
    /// Finds uv (`COVE_UV`, the `uv` package of `python` or of `python3`, or `uv` on the PATH), or else
    /// pip. `COVE_UV=none` chooses pip.
    pub fn find(python: &str, sandbox: SandboxMode) -> Result<Toolchain, String> {
        if let Some(uv) = find_uv(python) {
            return Ok(Toolchain { installer: Installer::Uv(uv), sandbox });
        }
        let pip = std::process::Command::new(python).args(["-I", "-m", "pip", "--version"]).output();
        if pip.is_ok_and(|o| o.status.success()) {
            return Ok(Toolchain { installer: Installer::Pip, sandbox });
        }
        Err(format!(
            "neither uv nor pip is available to build environments with `{python}` (`python3 -m pip install uv`, or set COVE_UV)"
        ))
    }
}

fn find_uv(python: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COVE_UV") {
        return (p != "none").then(|| PathBuf::from(p));
    }
    // The `uv` package of the interpreter at hand, or of the host's `python3`.
    for interpreter in [python, "python3"] {
        let Ok(out) = std::process::Command::new(interpreter)
            .args(["-I", "-c", "import uv; print(uv.find_uv_bin())"])
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        let found = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && found.is_file() {
            return std::fs::canonicalize(found).ok();
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("uv")).find(|p| {
            // Version-manager shims are scripts that need the caller's environment; only the binary will do.
            std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x7fELF"))
        })
    })
}

/// One run of an installer: its program and arguments, the base interpreter (whose files the sandbox
/// shows), and the folders it reads and writes.
struct ToolRun<'a> {
    program: PathBuf,
    args: Vec<String>,
    python: &'a str,
    read_only: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    cache: PathBuf,
}

/// The package source as uv and pip both spell it, and unless source builds are allowed, the
/// installer's own refusal to build any source distribution: pip's `--only-binary :all:`, and uv's
/// `--no-build`, which holds while resolving too (where a build backend would run to learn a package's
/// metadata).
fn source_args(source: &PackageSource, allow_source_builds: bool, uv: bool) -> Vec<String> {
    let mut a = match source {
        PackageSource::Index { url, .. } => vec!["--index-url".to_string(), url.clone()],
        PackageSource::Wheels { dir } => vec!["--no-index".into(), "--find-links".into(), dir.clone()],
    };
    match (allow_source_builds, uv) {
        (true, _) => {}
        (false, true) => a.push("--no-build".into()),
        (false, false) => a.extend(["--only-binary".into(), ":all:".into()]),
    }
    a
}

impl Toolchain {
    /// Runs an installer with a cleared environment, in the sandbox unless the workspace chose none;
    /// returns its exit status, stdout and stderr.
    async fn run(&self, run: ToolRun<'_>, source: &PackageSource) -> Result<(bool, String, String), String> {
        std::fs::create_dir_all(&run.cache).map_err(|e| format!("cannot create {}: {e}", run.cache.display()))?;
        let mut forwarders = Vec::new();
        let mut sockets = None;
        let mut command = match self.sandbox {
            SandboxMode::None => tokio::process::Command::new(&run.program),
            SandboxMode::Namespaces => {
                let interp = sandbox::interpreter(run.python)?;
                let mut read_only = run.read_only.clone();
                if let Installer::Uv(uv) = &self.installer {
                    read_only.extend(uv.parent().map(Path::to_path_buf));
                }
                if let PackageSource::Wheels { dir } = source {
                    read_only.push(PathBuf::from(dir));
                }
                let mut writable = run.writable.clone();
                writable.push(run.cache.clone());
                let mut egress = Vec::new();
                if let PackageSource::Index { address, .. } = source {
                    let dir = crate::scorer::egress_dir();
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    let socket = dir.join("index.sock");
                    forwarders.push(crate::scorer::forward(&socket, *address).map_err(|e| format!("{e:#}"))?);
                    egress.push(format!("{},{},{}", address.ip(), address.port(), socket.display()));
                    read_only.push(dir.clone());
                    sockets = Some(dir);
                }
                let view = FileView { read_only, writable };
                let mut c = tokio::process::Command::new("bwrap");
                c.args(sandbox::bwrap_args(&interp, &view, !egress.is_empty()));
                if egress.is_empty() {
                    c.arg(&run.program);
                } else {
                    c.arg(&interp.executable)
                        .args(["-I", "-c", EGRESS_RUNNER])
                        .args(&egress)
                        .arg("--")
                        .arg(&run.program);
                }
                c
            }
        };
        command.args(&run.args).env_clear();
        if let PackageSource::Index { ca: Some(pem), .. } = source {
            // uv reads SSL_CERT_FILE, pip PIP_CERT: the index is verified against its private endpoint's CA.
            let file = run.cache.join("cove-index-ca.pem");
            let tmp = run.cache.join(format!("cove-index-ca.{}.tmp", std::process::id()));
            std::fs::write(&tmp, pem)
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            command.env("SSL_CERT_FILE", &file).env("PIP_CERT", &file);
        }
        command
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &run.cache)
            .env("UV_CACHE_DIR", &run.cache)
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_LINK_MODE", "copy")
            .env("UV_NO_PROGRESS", "1")
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_CACHE_DIR", &run.cache)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .env("PYTHONNOUSERSITE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = command.output().await.map_err(|e| format!("failed to start {}: {e}", run.program.display()));
        for f in forwarders {
            f.abort();
        }
        if let Some(dir) = sockets {
            let _ = std::fs::remove_dir_all(dir);
        }
        let out = out?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Resolves requirements into a lock for `python`, with `overrides` replacing any pin of the same
    /// package. `scratch` is a private folder for the request files and uv's cache.
    pub async fn resolve(
        &self,
        python: &str,
        packages: &[String],
        overrides: &[String],
        source: &PackageSource,
        allow_source_builds: bool,
        scratch: &Path,
    ) -> Result<String, String> {
        let work = scratch.join(format!("resolve-{}", uuid_like()));
        std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let requirements = work.join("requirements.in");
        std::fs::write(&requirements, packages.join("\n") + "\n").map_err(|e| e.to_string())?;
        let run = match &self.installer {
            Installer::Uv(uv) => {
                let mut args: Vec<String> = vec!["pip".into(), "compile".into(), requirements.display().to_string()];
                args.extend(["--python".into(), python.into(), "--no-header".into(), "--no-annotate".into()]);
                // The lock pins every file's bytes, so a build installs exactly what was resolved.
                args.push("--generate-hashes".into());
                args.push("--quiet".into());
                if !overrides.is_empty() {
                    let file = work.join("overrides.txt");
                    std::fs::write(&file, overrides.join("\n") + "\n").map_err(|e| e.to_string())?;
                    args.extend(["--override".into(), file.display().to_string()]);
                }
                args.extend(source_args(source, allow_source_builds, true));
                ToolRun {
                    program: uv.clone(),
                    args,
                    python,
                    read_only: vec![work.clone()],
                    writable: Vec::new(),
                    cache: cache_dir(scratch, "uv-cache", allow_source_builds, &work.join(PRIVATE_CACHE)),
                }
            }
            Installer::Pip => {
                // pip has no overrides: an override replaces the environment's own entry for its
                // package, and constrains the package where something else requires it.
                let mut listed: Vec<String> = packages.to_vec();
                let mut constraints = Vec::new();
                for o in overrides {
                    let name = normalise_name(requirement_name(o));
                    match listed.iter().position(|p| normalise_name(requirement_name(p)) == name) {
                        Some(i) => listed[i] = o.clone(),
                        None => constraints.push(o.clone()),
                    }
                }
                std::fs::write(&requirements, listed.join("\n") + "\n").map_err(|e| e.to_string())?;
                let mut args: Vec<String> =
                    ["-I", "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                args.extend(["--report".into(), work.join("report.json").display().to_string()]);
                args.extend(["-r".into(), requirements.display().to_string()]);
                if !constraints.is_empty() {
                    let file = work.join("constraints.txt");
                    std::fs::write(&file, constraints.join("\n") + "\n").map_err(|e| e.to_string())?;
                    args.extend(["-c".into(), file.display().to_string()]);
                }
                args.extend(source_args(source, allow_source_builds, false));
                ToolRun {
                    program: PathBuf::from(python),
                    args,
                    python,
                    read_only: Vec::new(),
                    writable: vec![work.clone()],
                    cache: cache_dir(scratch, "pip-cache", allow_source_builds, &work.join(PRIVATE_CACHE)),
                }
            }
        };
        let result = self.run(run, source).await;
        let report = std::fs::read_to_string(work.join("report.json"));
        let _ = std::fs::remove_dir_all(&work);
        let (ok, stdout, stderr) = result?;
        if ok {
            let lines: Vec<String> = match self.installer {
                Installer::Uv(_) => uv_lock_lines(&stdout),
                Installer::Pip => pip_report_lock(&report.map_err(|e| format!("pip wrote no report: {e}"))?)?,
            };
            return Ok(lines.join("\n") + "\n");
        }
        let message = uv_message(&stderr);
        // Only an unsatisfiable pin has nearer versions to offer; a network failure does not.
        let unsatisfiable = ["unsatisfiable", "no version of", "has no wheels", "Could not find a version"]
            .iter()
            .any(|m| message.contains(m));
        let versions =
            if unsatisfiable { nearest_versions(&message, packages, source, python).await } else { Vec::new() };
        Err(if versions.is_empty() { message } else { format!("{message}; {}", versions.join("; ")) })
    }

    /// Makes sure the environment of `build` exists under its root; returns its interpreter. Builds it
    /// (once, under a file lock) when it does not; the build's log is kept beside it as `<key>.log`.
    pub async fn ensure(&self, build: &EnvironmentBuild) -> Result<PathBuf, BuildFailure> {
        let root = PathBuf::from(&build.root);
        let dir = root.join(&build.key);
        let python = dir.join("bin").join("python");
        if dir.join(BUILT_MARKER).exists() {
            return Ok(python);
        }
        let log = root.join(format!("{}.log", build.key));
        let fail = |message: String| BuildFailure { message, log: log.clone() };
        std::fs::create_dir_all(&root).map_err(|e| fail(format!("cannot create {}: {e}", root.display())))?;
        let lock_path = root.join(format!("{}.lock", build.key));
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot lock the environment {}: {e}", build.key)))?;
        if dir.join(BUILT_MARKER).exists() {
            return Ok(python);
        }
        let result = self.build(build, &dir, &log).await;
        drop(lock);
        result.map(|()| python).map_err(fail)
    }

    async fn build(&self, build: &EnvironmentBuild, dir: &Path, log: &Path) -> Result<(), String> {
        let root = dir.parent().expect("a key under its root");
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove a half-built {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock_file = root.join(format!("{}.requirements.txt", build.key));
        std::fs::write(&lock_file, &build.lock).map_err(|e| e.to_string())?;
        let mut text = format!("building environment {} from {}\n{}\n", build.key, build.source, build.lock);
        let venv_python = dir.join("bin").join("python").display().to_string();
        let private_cache = root.join(format!("{}{PRIVATE_CACHE}", build.key));
        let steps = match &self.installer {
            Installer::Uv(uv) => {
                let cache = cache_dir(root, "uv-cache", build.allow_source_builds, &private_cache);
                let mut sync: Vec<String> = vec!["pip".into(), "sync".into(), lock_file.display().to_string()];
                sync.extend(["--python".into(), venv_python]);
                sync.extend(source_args(&build.source, build.allow_source_builds, true));
                sync.push("--require-hashes".into());
                let venv = vec!["venv".into(), "--python".into(), build.python.clone(), dir.display().to_string()];
                vec![(uv.clone(), venv, Vec::new(), cache.clone()), (uv.clone(), sync, vec![lock_file.clone()], cache)]
            }
            Installer::Pip => {
                let cache = cache_dir(root, "pip-cache", build.allow_source_builds, &private_cache);
                let venv = ["-I", "-m", "venv", "--without-pip"].iter().map(|s| s.to_string());
                let venv: Vec<String> = venv.chain([dir.display().to_string()]).collect();
                let mut install: Vec<String> = ["-I", "-m", "pip", "--python", &venv_python, "install", "--no-deps"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                install.extend(["-r".into(), lock_file.display().to_string(), "--require-hashes".into()]);
                install.extend(source_args(&build.source, build.allow_source_builds, false));
                let base = PathBuf::from(&build.python);
                vec![(base.clone(), venv, Vec::new(), cache.clone()), (base, install, vec![lock_file.clone()], cache)]
            }
        };
        let steps: Vec<ToolRun<'_>> = steps
            .into_iter()
            .map(|(program, args, read_only, cache)| ToolRun {
                program,
                args,
                python: &build.python,
                read_only,
                writable: vec![dir.to_path_buf()],
                cache,
            })
            .collect();
        for step in steps {
            text.push_str(&format!(
                "$ {} {}\n(package cache {})\n",
                step.program.display(),
                step.args.join(" "),
                step.cache.display()
            ));
            let outcome = self.run(step, &build.source).await;
            let (ok, stdout, stderr) = match outcome {
                Ok(o) => o,
                Err(e) => {
                    text.push_str(&e);
                    let _ = append_log(log, &text);
                    return Err(e);
                }
            };
            text.push_str(&stdout);
            text.push_str(&stderr);
            if !ok {
                let _ = append_log(log, &text);
                return Err(uv_message(&stderr));
            }
        }
        let _ = std::fs::remove_file(&lock_file);
        if build.allow_source_builds {
            let _ = std::fs::remove_dir_all(&private_cache);
        }
        std::fs::write(dir.join(BUILT_MARKER), &build.lock).map_err(|e| e.to_string())?;
        text.push_str("built\n");
        append_log(log, &text).map_err(|e| format!("cannot write {}: {e}", log.display()))
    }
}

/// The folder a run keeps its package cache in. Wheel-only runs share one cache per root (a wheel runs
/// no code while it is installed); a run that may build from source runs that source's code, which could
/// plant entries in a shared cache that later builds would install, so it gets `own`, a cache of its
/// own, removed when it is done.
fn cache_dir(root: &Path, shared: &str, allow_source_builds: bool, own: &Path) -> PathBuf {
    if allow_source_builds {
        own.to_path_buf()
    } else {
        root.join(shared)
    }
}

/// The name (a suffix, beside a build) of the private cache of a run that may build from source.
const PRIVATE_CACHE: &str = ".private-cache";

/// Builds append to the key's log, so a retried build keeps the failed attempt's story.
fn append_log(log: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new().create(true).append(true).open(log)?.write_all(text.as_bytes())
}

/// The lock of a pip resolution: `name==version` per package, names normalised and sorted, as uv writes it.
fn pip_report_lock(report: &str) -> Result<Vec<String>, String> {
    let doc: serde_json::Value = serde_json::from_str(report).map_err(|e| format!("pip's report is not JSON: {e}"))?;
    let mut lines = Vec::new();
    for item in doc["install"].as_array().into_iter().flatten() {
        let m = &item["metadata"];
        let (Some(name), Some(version)) = (m["name"].as_str(), m["version"].as_str()) else { continue };
        let archive = &item["download_info"]["archive_info"];
        let sha256 = archive["hashes"]["sha256"]
            .as_str()
            .map(str::to_string)
            .or_else(|| archive["hash"].as_str().and_then(|h| h.strip_prefix("sha256=")).map(str::to_string))
            .ok_or_else(|| format!("pip's report gives no sha256 of {name} {version}"))?;
        lines.push(format!("{}=={version} --hash=sha256:{sha256}", normalise_name(name)));
    }
    lines.sort();
    Ok(lines)
}

/// uv's compiled requirements as lock lines: each requirement with its hashes on one line
/// (`name==1.0 --hash=sha256:…`), joining uv's continuation lines.
fn uv_lock_lines(stdout: &str) -> Vec<String> {
    let joined = stdout.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// A failed build: why, and where its log is.
#[derive(Debug, Clone)]
pub struct BuildFailure {
    pub message: String,
    pub log: PathBuf,
}

fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// uv's explanation on one line, without its hints' decoration.
fn uv_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("×").trim_start_matches("╰─▶").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let text = lines.join(" ");
    if text.is_empty() {
        "uv failed and said nothing".to_string()
    } else {
        text
    }
}

/// For every requirement the resolver's message names with a version it could not satisfy, the
/// versions that the package source has for this interpreter, nearest to the pin first.
async fn nearest_versions(message: &str, packages: &[String], source: &PackageSource, python: &str) -> Vec<String> {
    let lower = normalise_name(message);
    let Ok(info) = interpreter_info(python) else { return Vec::new() };
    let mut out = Vec::new();
    for req in packages {
        let name = requirement_name(req);
        let spec = &req[name.len()..];
        let pinned: String = spec.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| *c != ',').collect();
        if spec.is_empty() || !lower.contains(&normalise_name(name)) {
            continue;
        }
        let mut versions = available_versions(source, name, &info.version).await;
        if versions.is_empty() {
            out.push(format!("`{name}` has no version with wheels for Python {} in {source}", info.version));
            continue;
        }
        let want = version_parts(&pinned);
        versions.sort_by_key(|v| version_distance(&version_parts(v), &want));
        versions.truncate(3);
        out.push(format!(
            "`{req}` cannot be installed for Python {}; the nearest versions that can: {} (lift the pin with an override, e.g. `{name}=={}`)",
            info.version,
            versions.join(", "),
            versions[0]
        ));
    }
    out
}

fn version_parts(v: &str) -> Vec<u64> {
    v.trim_end_matches(".*").split('.').map_while(|p| p.parse().ok()).collect()
}

fn version_distance(a: &[u64], b: &[u64]) -> Vec<u64> {
    (0..a.len().max(b.len())).map(|i| a.get(i).copied().unwrap_or(0).abs_diff(b.get(i).copied().unwrap_or(0))).collect()
}

/// Versions of `name` with a wheel this interpreter can install.
async fn available_versions(source: &PackageSource, name: &str, python_version: &str) -> Vec<String> {
    let files: Vec<String> = match source {
        PackageSource::Wheels { dir } => std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default(),
        PackageSource::Index { url, ca, .. } => {
            let page = format!("{}/{}/", url.trim_end_matches('/'), normalise_name(name));
            let Ok(client) = index_client(ca.as_deref()) else { return Vec::new() };
            match client.get(&page).send().await {
                Ok(r) if r.status().is_success() => {
                    let body = r.text().await.unwrap_or_default();
                    body.split("href=\"")
                        .skip(1)
                        .filter_map(|s| s.split('"').next())
                        .map(|h| h.split('#').next().unwrap_or(h).rsplit('/').next().unwrap_or(h).to_string())
                        .collect()
                }
                _ => Vec::new(),
            }
        }
    };
    let minor: String = python_version.split('.').take(2).collect();
    let mut out: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_suffix(".whl"))
        .filter_map(|f| {
            let parts: Vec<&str> = f.split('-').collect();
            let [dist, version, .., py, _abi, platform] = parts.as_slice() else { return None };
            let py_ok = py.split('.').any(|t| t == "py3" || *t == format!("py{minor}") || *t == format!("cp{minor}"))
                || py.split('.').any(|t| t.starts_with("cp3")) && f.contains("abi3");
            let platform_ok = platform.split('.').any(|p| {
                p == "any"
                    || p.ends_with(std::env::consts::ARCH) && (p.starts_with("manylinux") || p.starts_with("linux"))
            });
            (normalise_name(dist) == normalise_name(name) && py_ok && platform_ok).then(|| version.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_the_index_does() {
        assert_eq!(normalise_name("Scikit_Learn"), "scikit-learn");
        assert_eq!(normalise_name("zope.interface"), "zope-interface");
    }

    #[test]
    fn builds_take_wheels_only_unless_the_environment_allows_source_builds() {
        let wheels = PackageSource::Wheels { dir: "/w".into() };
        assert_eq!(source_args(&wheels, false, false), ["--no-index", "--find-links", "/w", "--only-binary", ":all:"]);
        assert_eq!(source_args(&wheels, false, true), ["--no-index", "--find-links", "/w", "--no-build"]);
        assert_eq!(source_args(&wheels, true, true), ["--no-index", "--find-links", "/w"]);
        let index = PackageSource::Index {
            url: "http://198.18.0.5/simple".into(),
            address: "198.18.0.5:80".parse().unwrap(),
            ca: None,
        };
        assert_eq!(
            source_args(&index, false, false),
            ["--index-url", "http://198.18.0.5/simple", "--only-binary", ":all:"]
        );
    }

    #[test]
    fn locks_pin_every_file_by_its_sha256_and_keys_cover_how_it_was_built() {
        let uv =
            "covepin==1.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\ncovedep==2.0 \\\n    --hash=sha256:cc\n";
        assert_eq!(
            uv_lock_lines(uv),
            ["covepin==1.0 --hash=sha256:aa --hash=sha256:bb", "covedep==2.0 --hash=sha256:cc"]
        );
        let report = r#"{"install": [
            {"metadata": {"name": "CovePin", "version": "1.0"}, "download_info": {"archive_info": {"hashes": {"sha256": "aa"}}}},
            {"metadata": {"name": "covedep", "version": "2.0"}, "download_info": {"archive_info": {"hash": "sha256=cc"}}}
        ]}"#;
        assert_eq!(
            pip_report_lock(report).unwrap(),
            ["covedep==2.0 --hash=sha256:cc", "covepin==1.0 --hash=sha256:aa"]
        );
        let unhashed = r#"{"install": [{"metadata": {"name": "x", "version": "1"}, "download_info": {}}]}"#;
        assert_eq!(pip_report_lock(unhashed).unwrap_err(), "pip's report gives no sha256 of x 1");
        let python = InterpreterInfo { executable: "/usr/bin/python3".into(), version: "3.11.7".into() };
        let key = |lock: &str, source_builds: bool| environment_key(lock, &python, source_builds);
        let lock = "covepin==1.0 --hash=sha256:aa\n";
        assert_eq!(key(lock, false), key(lock, false));
        assert_ne!(key(lock, false), key(lock, true), "how it was built is part of the key");
        assert_ne!(key(lock, false), key("covepin==1.0 --hash=sha256:ab\n", false), "so are the bytes installed");
    }

    #[test]
    fn runs_that_may_build_from_source_never_share_a_cache() {
        let (root, own) = (Path::new("/r"), Path::new("/r/key"));
        assert_eq!(cache_dir(root, "uv-cache", false, own), Path::new("/r/uv-cache"));
        assert_eq!(cache_dir(root, "uv-cache", true, own), Path::new("/r/key"));
    }

    #[tokio::test]
    async fn wheel_folders_list_the_versions_this_interpreter_can_install() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "covepin-1.0-py3-none-any.whl",
            "covepin-2.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "covepin-3.0-cp38-cp38-manylinux_2_17_x86_64.whl",
            "other-1.0-py3-none-any.whl",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let source = PackageSource::Wheels { dir: dir.path().display().to_string() };
        let got = available_versions(&source, "CovePin", "3.11.7").await;
        let expected: Vec<&str> = if std::env::consts::ARCH == "x86_64" { vec!["1.0", "2.0"] } else { vec!["1.0"] };
        assert_eq!(got, expected);
    }
}
