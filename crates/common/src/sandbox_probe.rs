//! Whether bubblewrap can build a sandbox on this host: asked by the control plane (to tell its own
//! workers, and `diagnose`) and by workers, with no sandboxing code of its own.

use std::sync::OnceLock;

/// The bubblewrap executable.
pub const BWRAP: &str = "bwrap";

/// Set by a control plane in the environment of the workers it starts on its own host, when its own
/// probe found the sandbox working there: such a worker need not build a sandbox once more before its
/// first lease (a sandbox that fails after all fails its scorer host's start, with bubblewrap's words).
pub const PROBED_ON_THIS_HOST: &str = "COVE_SANDBOX_PROBED";

static PROBE: OnceLock<Result<(), String>> = OnceLock::new();

/// What [`available`] found, if it has been asked in this process.
pub fn probed() -> Option<&'static Result<(), String>> {
    PROBE.get()
}

/// Checks once per process that bubblewrap can build a sandbox on this host.
pub fn available() -> Result<(), String> {
    PROBE
        .get_or_init(|| {
            if std::env::var_os(PROBED_ON_THIS_HOST).is_some_and(|v| v == "1") {
                return Ok(());
            }
            let out = std::process::Command::new(BWRAP)
                .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"])
                .output()
                .map_err(|e| format!("bubblewrap (`{BWRAP}`) cannot be run: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "bubblewrap cannot create namespaces here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}
