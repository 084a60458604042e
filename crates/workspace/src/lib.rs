//! A workspace on disk and the rules it is served under: where its files live, its network
//! configuration, its certificates, and the credentials its compute clusters' workers are started with.
//!
//! Everything here is decided before a request arrives; the control plane's other crates read it.

pub mod netpolicy;
pub mod tls;

use anyhow::Context;
use cove_store::Store;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use tls::{CredentialSource, WorkerCredential};

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The workspace directory: state, datastores, tokens.
    pub dir: PathBuf,
    /// The address to listen on (port 0 picks a free one); with a network configuration, the API's
    /// private endpoints are the listeners and this must be one of them or absent.
    pub listen: Option<SocketAddr>,
    /// The workspace's network configuration file; none means private to this host's loopback.
    pub network_config: Option<PathBuf>,
    /// The workspace's default Python interpreter.
    pub python: String,
    /// The `cove` executable the local compute backend runs as `cove worker`.
    pub worker_exe: PathBuf,
    /// Whether scoring code runs in the sandbox (the default) or, by explicit choice, without one.
    pub sandbox: cove_api::worker::SandboxMode,
    /// How deployments' environments are built.
    pub environments: EnvironmentSettings,
    /// How long a planned stop waits for workers to finish the mini-batches they hold.
    pub shutdown_grace: std::time::Duration,
}

/// Where environment builds get packages and which interpreters they may use.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentSettings {
    /// A package index (the simple API), reached through a private endpoint with `service: package-index`.
    pub package_index: Option<String>,
    /// The CA (a PEM file) that issued an HTTPS index's certificate, when no private endpoint names it
    /// (a workspace on loopback has none).
    pub package_index_ca: Option<PathBuf>,
    /// A folder of wheels on this host, for hosts with no network at all.
    pub wheels: Option<PathBuf>,
    /// Interpreters a `python=X.Y` pin may pick, besides the default.
    pub interpreters: Vec<String>,
    /// Requirements that replace any pin of the same package in every environment (uv's overrides).
    pub overrides: Vec<String>,
    /// Refuse a deployment whose `python` pin no interpreter matches, instead of warning.
    pub strict_python: bool,
}

/// Files a workspace keeps under its directory.
pub mod layout {
    use std::path::{Path, PathBuf};
    pub fn state_db(dir: &Path) -> PathBuf {
        dir.join("state").join("cove.db")
    }
    pub fn internal_objects(dir: &Path) -> PathBuf {
        dir.join("state").join("objects")
    }
    /// Outputs being assembled while their jobs run (`jobs::assembly`).
    pub fn assemblies(dir: &Path) -> PathBuf {
        dir.join("state").join("assembly")
    }
    pub fn datastore(dir: &Path, name: &str) -> PathBuf {
        dir.join("datastores").join(name)
    }
    pub fn owner_token(dir: &Path) -> PathBuf {
        dir.join("owner.token")
    }
    pub fn datastore_secret(dir: &Path, name: &str) -> PathBuf {
        dir.join("state").join(format!("datastore-{name}.secret"))
    }
    pub fn worker_token(dir: &Path, compute: &str) -> PathBuf {
        dir.join("state").join(format!("worker-{compute}.token"))
    }
    /// Environments built on this host, each under its content address.
    pub fn environments(dir: &Path) -> PathBuf {
        dir.join("state").join("environments")
    }
    pub fn compute_dir(dir: &Path, compute: &str) -> PathBuf {
        dir.join("compute").join(compute)
    }
    /// Held locked by the one control plane serving the workspace; says which it is.
    pub fn lock_file(dir: &Path) -> PathBuf {
        dir.join("state").join("lock")
    }
    /// Where `cove up` records the URL it serves, for `--workspace DIR` clients.
    pub fn url_file(dir: &Path) -> PathBuf {
        dir.join("state").join("url")
    }
}

pub const DEFAULT_DATASTORE: &str = "workspaceblobstore";
pub const LOCAL_COMPUTE: &str = "local";
/// Where a workspace without a network configuration listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// A network datastore's credentials, from their 0600 file beside the state store.
pub fn read_datastore_secret<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<T> {
    let path = layout::datastore_secret(dir, name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read the credentials of datastore {name}"))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not the credentials of datastore {name}", path.display()))
}

/// A compute cluster's worker credential on this host: its token and its client certificate (issued
/// anew when missing, revoked or aging), as files the compute backend hands to the workers it starts.
pub fn ensure_worker_credential(
    store: &Store,
    authority: &cove_tls::Authority,
    dir: &Path,
    compute: &str,
) -> anyhow::Result<tls::WorkerCredential> {
    let token = ensure_worker_token(store, dir, compute)?;
    tls::ensure_worker_certificate(authority, store, dir, compute)?;
    Ok(tls::WorkerCredential {
        token,
        cert: tls::files::compute_cert(dir, compute),
        key: tls::files::compute_key(dir, compute),
        trust: tls::files::trust(dir),
    })
}

/// The credential of a cluster whose workers this control plane starts, looked up (and renewed if
/// revoked or aging) at each worker start.
pub fn credential_source(
    store: &Store,
    authority: &Arc<cove_tls::Authority>,
    dir: &Path,
    compute: &str,
) -> CredentialSource {
    let (store, authority, dir, compute) = (store.clone(), authority.clone(), dir.to_path_buf(), compute.to_string());
    Arc::new(move || ensure_worker_credential(&store, &authority, &dir, &compute))
}

/// Returns the compute cluster's worker credential, minting it on first use. Only its hash is in the
/// state store; the secret sits in a 0600 file that the compute backend hands to the workers it starts.
pub fn ensure_worker_token(store: &Store, dir: &Path, compute: &str) -> anyhow::Result<String> {
    let path = layout::worker_token(dir, compute);
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_string();
        if store.call_now(|c| cove_store::auth::resolve(c, &secret))?.is_some() {
            return Ok(secret);
        }
    }
    let (_, secret) = store.call_now(|c| {
        cove_store::auth::mint(
            c,
            cove_store::auth::TokenKind::Worker,
            cove_store::auth::Role::Worker,
            None,
            Some(compute.into()),
            None,
        )
    })?;
    write_secret(&path, &secret)?;
    Ok(secret)
}

pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    tls::write_private(path, &format!("{secret}\n"))
}
