//! What the control plane and the worker agree on about an environment: its content address, the
//! interpreter it is built for, package names as an index compares them, and the index's client.

use sha2::{Digest, Sha256};

/// What an interpreter is: its real executable and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterInfo {
    pub executable: String,
    pub version: String,
}

pub fn interpreter_info(python: &str) -> Result<InterpreterInfo, String> {
    let code = "import sys, platform; print(sys.executable); print(platform.python_version())";
    let out = std::process::Command::new(python)
        .args(["-I", "-c", code])
        .output()
        .map_err(|e| format!("the interpreter `{python}` cannot be started: {e}"))?;
    if !out.status.success() {
        return Err(format!("the interpreter `{python}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let executable = lines.next().unwrap_or_default().to_string();
    let executable = std::fs::canonicalize(&executable).map(|p| p.display().to_string()).unwrap_or(executable);
    Ok(InterpreterInfo { executable, version: lines.next().unwrap_or_default().trim().to_string() })
}

/// The content address of an environment: what is installed, from which interpreter, on which platform.
/// The lock carries every file's sha256, so the package source (index or wheel folder) is covered by
/// the bytes it served; whether source builds were allowed changes what is built from those bytes.
pub fn environment_key(lock: &str, interpreter: &InterpreterInfo, allow_source_builds: bool) -> String {
    let mut h = Sha256::new();
    let builds = if allow_source_builds { "source-builds" } else { "wheels-only" };
    for part in
        ["cove-environment-2", &interpreter.executable, &interpreter.version, std::env::consts::ARCH, builds, lock]
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The normalised form of a package name (PEP 503).
pub fn normalise_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c == '_' || c == '.' { '-' } else { c.to_ascii_lowercase() };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out
}

/// A client of the package index, verifying it against the system's CAs and `ca`, its private
/// endpoint's.
pub fn index_client(ca: Option<&str>) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10));
    crate::trusting(builder, ca).map_err(|e| format!("the index's CA: {e}"))
}
