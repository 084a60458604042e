//! The scoring sandbox: every scorer process runs under bubblewrap in its own user, network, PID, IPC,
//! UTS and mount namespaces. Its network namespace has only a loopback interface (not the host's), so
//! it can reach nothing: no host service, no private network, no name server. Its file view holds the
//! system's read-only runtime, the interpreter, the model, the code and its staged inputs, and writable
//! only its output folder, its part folder, its stdout log folder and a private `/tmp`; the workspace's
//! state, tokens and other jobs' files are simply absent.
//!
//! Why bubblewrap rather than calling unshare(2) ourselves: building a file view means bind mounts and a
//! pivot_root between fork and exec, where a multi-threaded Rust process may not allocate; bubblewrap is
//! a small, audited, unprivileged tool that does exactly that, and it costs a few milliseconds per start.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use cove_common::sandbox_probe::BWRAP;

/// The namespaces every sandboxed scorer gets.
pub const NAMESPACES: &str = "user, network (loopback only), pid, ipc, uts, mount";

/// What the scorer may see of the filesystem, besides the system runtime and the interpreter.
#[derive(Debug, Clone, Default)]
pub struct FileView {
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
}

/// What one attempt ran under, reported with the attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationRecord {
    /// `namespaces` or `none`.
    pub sandbox: String,
    pub namespaces: String,
    pub read_only: Vec<String>,
    pub writable: Vec<String>,
    pub memory_mb: u64,
    pub cpu_seconds: u64,
    pub egress: Vec<String>,
    /// Network calls the scorer's Python made other than to its allowed egress, as its audit hook saw
    /// them (connects, sends, name lookups), whatever became of them: inside the sandbox none leads
    /// anywhere, but a datagram to its own loopback, say, is sent without error.
    #[serde(default, alias = "refused_network")]
    pub network_attempts: Vec<String>,
}

pub use cove_common::sandbox_probe::{available, probed, PROBED_ON_THIS_HOST};

/// The interpreter's real executable and the folders it loads from, learned by asking it once.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub executable: PathBuf,
    pub roots: Vec<PathBuf>,
}

pub fn interpreter(python: &str) -> Result<Interpreter, String> {
    static CACHE: Mutex<Vec<(String, Interpreter)>> = Mutex::new(Vec::new());
    if let Some((_, i)) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(p, _)| p == python) {
        return Ok(i.clone());
    }
    let found = interpreter_known_in(python, known_interpreters_file().as_deref())?;
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).push((python.to_string(), found.clone()));
    Ok(found)
}

/// Where the answers of interpreters asked before are kept for later workers of this user: asking
/// starts an interpreter, a sizeable part of a job's start.
fn known_interpreters_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cove").join("interpreters.json"))
}

/// An interpreter's answer, kept with what it depended on: the interpreter's files, and every folder
/// of its path (installing or removing a package changes its folder). Any change, and it is asked again.
#[derive(Serialize, Deserialize, PartialEq)]
struct KnownInterpreter {
    answer: Vec<String>,
    seen: Fingerprint,
    /// When a worker last used the answer (seconds since the epoch, refreshed at most hourly so a
    /// job's start does not write the file): the least recently used answers go first.
    #[serde(default)]
    used: u64,
}

/// How many answers are kept: the interpreters of one user's workspaces, environments included.
const KNOWN_INTERPRETERS: usize = 64;

/// Each file or folder an answer depends on, with its modification time, size and inode (none: absent).
type Fingerprint = Vec<(String, Option<(i64, i64, u64, u64)>)>;

fn fingerprint(python: &str, answer: &[String]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let stat = |m: std::io::Result<std::fs::Metadata>| m.ok().map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()));
    let mut seen = vec![
        (format!("link {python}"), stat(std::fs::symlink_metadata(python))),
        (python.to_string(), stat(std::fs::metadata(python))),
    ];
    seen.extend(answer.iter().map(|p| (p.clone(), stat(std::fs::metadata(p)))));
    seen
}

/// The key of an interpreter's answer: its path, and the variables that change what it says.
fn interpreter_key(python: &str) -> String {
    let var = |v: &str| std::env::var(v).unwrap_or_default();
    format!("{python}\n{}\n{}\n{}", var("PYTHONPATH"), var("PYTHONHOME"), var("PYTHONUSERBASE"))
}

fn interpreter_known_in(python: &str, known: Option<&Path>) -> Result<Interpreter, String> {
    type Known = std::collections::BTreeMap<String, KnownInterpreter>;
    let key = interpreter_key(python);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut all: Known =
        known.and_then(|f| std::fs::read(f).ok()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some(entry) = all.get_mut(&key) {
        if entry.seen == fingerprint(python, &entry.answer) {
            let interpreter = from_answer(&entry.answer);
            if now.saturating_sub(entry.used) >= 3600 {
                entry.used = now;
                keep_known(known, &all);
            }
            return Ok(interpreter);
        }
    }
    let answer = ask_interpreter(python)?;
    let seen = fingerprint(python, &answer);
    all.insert(key.clone(), KnownInterpreter { answer: answer.clone(), seen, used: now });
    // The least recently used go, never the answer just learned (the first in key order once was).
    while all.len() > KNOWN_INTERPRETERS {
        let oldest = all.iter().filter(|(k, _)| **k != key).min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone());
        all.remove(&oldest.expect("more than one answer is kept"));
    }
    keep_known(known, &all);
    Ok(from_answer(&answer))
}

/// Writes the kept answers whole and renames them into place, so workers starting together never read
/// half of the file. Keeping is an optimisation: a failure only means asking again next time.
fn keep_known(known: Option<&Path>, all: &std::collections::BTreeMap<String, KnownInterpreter>) {
    let Some(file) = known else { return };
    if let (Some(dir), Ok(bytes)) = (file.parent(), serde_json::to_vec(all)) {
        let tmp = dir.join(format!("interpreters.{}.tmp", std::process::id()));
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Starts the interpreter to ask for its executable, prefixes and path.
fn ask_interpreter(python: &str) -> Result<Vec<String>, String> {
    let code = "import sys, json; print(json.dumps([sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + sys.path))";
    let out = std::process::Command::new(python)
        .args(["-c", code])
        .output()
        .map_err(|e| format!("the interpreter `{python}` cannot be started: {e}"))?;
    if !out.status.success() {
        return Err(format!("the interpreter `{python}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let paths: Vec<String> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("unexpected answer from `{python}`: {e}"))?;
    if paths.is_empty() {
        return Err(format!("unexpected answer from `{python}`: no executable"));
    }
    Ok(paths)
}

fn from_answer(paths: &[String]) -> Interpreter {
    let executable = PathBuf::from(&paths[0]);
    let mut roots: Vec<PathBuf> = paths[1..]
        .iter()
        .chain(std::iter::once(&paths[0]))
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .map(|p| if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or(p) } else { p })
        .filter(|p| p.is_dir() && !p.starts_with("/usr"))
        .collect();
    roots.sort();
    roots.dedup();
    // Keep only outermost folders: a bind of the prefix covers its site-packages.
    let outer: Vec<PathBuf> =
        roots.iter().filter(|p| !roots.iter().any(|q| q != *p && p.starts_with(q))).cloned().collect();
    Interpreter { executable, roots: outer }
}

/// Returns bubblewrap's arguments for a sandbox with `view`, up to and including `--`. With
/// `net_admin`, the scorer may configure its own (empty) network namespace, which is how the driver
/// gives allowed egress addresses to its loopback; it still has no interface that leads anywhere.
pub fn bwrap_args(interp: &Interpreter, view: &FileView, net_admin: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-user",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "cove-sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Merged-/usr systems keep /bin, /lib... as symlinks into /usr; others as folders.
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::read_link(top) {
            Ok(target) => a.extend(["--symlink".into(), target.display().to_string(), top.into()]),
            Err(_) if Path::new(top).is_dir() => a.extend(["--ro-bind".into(), top.into(), top.into()]),
            Err(_) => {}
        }
    }
    for etc in
        ["/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types"]
    {
        a.extend(["--ro-bind-try".into(), etc.into(), etc.into()]);
    }
    for root in &interp.roots {
        a.extend(["--ro-bind".into(), root.display().to_string(), root.display().to_string()]);
    }
    for p in &view.read_only {
        a.extend(["--ro-bind".into(), p.display().to_string(), p.display().to_string()]);
    }
    for p in &view.writable {
        a.extend(["--bind".into(), p.display().to_string(), p.display().to_string()]);
    }
    if net_admin {
        a.extend(["--cap-add".into(), "CAP_NET_ADMIN".into()]);
    }
    // Everything not bound writable above is read-only, the sandbox's own root included.
    a.extend(["--remount-ro".into(), "/".into(), "--chdir".into(), "/tmp".into(), "--".into()]);
    a
}

#[cfg(test)]
mod interpreter_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_interpreter_is_asked_again_only_when_what_its_answer_depends_on_changed() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("venv");
        let site = prefix.join("lib/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        let asked = dir.path().join("asked");
        let python = dir.path().join("python");
        let answer = format!(
            r#"["{p}", "{v}", "/usr", "{v}", "/usr", "", "{s}"]"#,
            p = python.display(),
            v = prefix.display(),
            s = site.display()
        );
        std::fs::write(&python, format!("#!/bin/sh\necho asked >> '{}'\necho '{answer}'\n", asked.display())).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let python = python.to_str().unwrap();
        let known = dir.path().join("cache/cove/interpreters.json");
        let times_asked = || std::fs::read_to_string(&asked).unwrap_or_default().lines().count();

        let first = interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(first.roots, vec![std::fs::canonicalize(dir.path()).unwrap()]);
        assert_eq!(times_asked(), 1);
        let again = interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!((again.executable, again.roots), (first.executable.clone(), first.roots.clone()));
        assert_eq!(times_asked(), 1, "the kept answer was used");
        // A package installed: its folder changed, so the interpreter is asked again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir(site.join("newpackage")).unwrap();
        interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(times_asked(), 2);
        interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(times_asked(), 2);
        // A kept answer that cannot be read is no answer.
        std::fs::write(&known, b"{not json").unwrap();
        interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(times_asked(), 3);
        // Without a place to keep answers, it is asked every time.
        interpreter_known_in(python, None).unwrap();
        assert_eq!(times_asked(), 4);

        // A full file: the least recently used answer goes, never the one just learned, even when its
        // key comes first in order (the benchmark's interpreter was asked at every job start so).
        let others: std::collections::BTreeMap<String, serde_json::Value> = (0..KNOWN_INTERPRETERS)
            .map(|i| {
                (
                    format!("/zz/{i:02}/python\n\n\n"),
                    serde_json::json!({"answer": ["/zz"], "seen": [], "used": 100 + i}),
                )
            })
            .collect();
        assert!(others.keys().all(|k| *k > interpreter_key(python)), "the new key sorts first");
        std::fs::write(&known, serde_json::to_vec(&others).unwrap()).unwrap();
        interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(times_asked(), 5);
        interpreter_known_in(python, Some(&known)).unwrap();
        assert_eq!(times_asked(), 5, "the answer just learned was kept");
        let kept: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&known).unwrap()).unwrap();
        assert_eq!(kept.len(), KNOWN_INTERPRETERS);
        assert!(!kept.contains_key("/zz/00/python\n\n\n"), "the least recently used went");
        assert!(kept.contains_key("/zz/01/python\n\n\n"));
    }
}
