//! The workspace's certificates and the TLS listeners.
//!
//! `cove up` keeps a certificate authority under `tls/` (its key readable only by the owner), issues
//! the listeners' certificate for every API address (and private DNS name) at each start, and issues
//! each compute cluster a client certificate its workers present. A user may bring the listeners'
//! certificate, key and CA instead (`tls:` in the network configuration); workers' certificates are
//! always the workspace CA's. Every connection is TLS: a client that speaks plain HTTP gets a short
//! plain-text refusal and nothing else.

use crate::netpolicy::{BroughtTls, NetworkPolicy};
use anyhow::Context;
use cove_store::{self as store, Store};
use cove_tls::{Authority, Issued, ServerIdentity};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files of the workspace's TLS, under `tls/`.
pub mod files {
    use std::path::{Path, PathBuf};
    pub fn dir(ws: &Path) -> PathBuf {
        ws.join("tls")
    }
    pub fn ca_cert(ws: &Path) -> PathBuf {
        dir(ws).join("ca.pem")
    }
    pub fn ca_key(ws: &Path) -> PathBuf {
        dir(ws).join("ca.key")
    }
    pub fn server_cert(ws: &Path) -> PathBuf {
        dir(ws).join("server.pem")
    }
    pub fn server_key(ws: &Path) -> PathBuf {
        dir(ws).join("server.key")
    }
    /// What clients trust to verify the listeners: the workspace CA, or the CA a user brought.
    pub fn trust(ws: &Path) -> PathBuf {
        dir(ws).join("trust.pem")
    }
    pub fn compute_cert(ws: &Path, compute: &str) -> PathBuf {
        dir(ws).join(format!("compute-{compute}.pem"))
    }
    pub fn compute_key(ws: &Path, compute: &str) -> PathBuf {
        dir(ws).join(format!("compute-{compute}.key"))
    }
}

/// The running control plane's TLS.
pub struct WorkspaceTls {
    pub authority: Arc<Authority>,
    pub identity: Arc<ServerIdentity>,
    pub config: Arc<cove_tls::rustls::ServerConfig>,
    /// The names and addresses the listeners' certificate is issued for (none when brought).
    pub names: Vec<String>,
    pub brought: Option<BroughtTls>,
}

/// Loads or creates the workspace CA, and issues (or loads, when brought) the listeners' certificate.
pub fn prepare(ws: &Path, policy: &NetworkPolicy, listeners: &[SocketAddr]) -> anyhow::Result<WorkspaceTls> {
    let dir = files::dir(ws);
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    restrict(&dir, 0o700)?;
    let authority = match (std::fs::read_to_string(files::ca_cert(ws)), std::fs::read_to_string(files::ca_key(ws))) {
        (Ok(cert), Ok(key)) => Authority::load(&cert, &key).with_context(|| format!("in {}", dir.display()))?,
        _ => {
            let name = ws.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (authority, ca) = Authority::create(&name, &ca_scope(policy, listeners))?;
            write_private(&files::ca_key(ws), &ca.key_pem)?;
            write_public(&files::ca_cert(ws), &ca.cert_pem)?;
            authority
        }
    };
    let mut names: Vec<String> = listeners.iter().map(|a| a.ip().to_string()).collect();
    for pe in policy.api_endpoints() {
        names.push(pe.address.ip().to_string());
        names.extend(pe.host_name.clone());
    }
    if listeners.iter().any(|a| a.ip().is_loopback()) {
        names.push("localhost".into());
    }
    names.sort();
    names.dedup();
    let (key, trust) = match &policy.tls {
        Some(b) => {
            let (key, ca, _) = load_brought(b)?;
            (key, ca)
        }
        None => {
            let issued = authority.issue_server(&names, cove_tls::SERVER_DAYS)?;
            write_server(ws, &issued)?;
            (
                cove_tls::certified_key("the listeners' certificate", &issued.cert_pem, &issued.key_pem)?,
                authority.cert_pem.clone(),
            )
        }
    };
    write_public(&files::trust(ws), &trust)?;
    let identity = ServerIdentity::new(key);
    let config = Arc::new(cove_tls::server_config(identity.clone(), &authority.cert_pem)?);
    let names = if policy.tls.is_some() { Vec::new() } else { names };
    Ok(WorkspaceTls { authority: Arc::new(authority), identity, config, names, brought: policy.tls.clone() })
}

/// What the workspace CA may vouch for (its name constraints, set when it is created): the address
/// ranges of the workspace's networks, loopback, the listeners' own addresses, `localhost` and the host
/// names of the API's private endpoints. So the CA that users import for the studio can sign nothing a
/// browser would accept for another host.
fn ca_scope(policy: &NetworkPolicy, listeners: &[SocketAddr]) -> cove_tls::NameScope {
    let mut ip: Vec<(std::net::IpAddr, u8)> =
        policy.networks.iter().flat_map(|n| n.address_space.iter().map(|r| (r.network(), r.prefix_len()))).collect();
    ip.extend([("127.0.0.0".parse().expect("valid"), 8), ("::1".parse().expect("valid"), 128)]);
    ip.extend(listeners.iter().map(|a| (a.ip(), if a.is_ipv4() { 32 } else { 128 })));
    ip.sort();
    ip.dedup();
    let mut dns = vec!["localhost".to_string()];
    dns.extend(policy.api_endpoints().iter().filter_map(|pe| pe.host_name.clone()));
    dns.sort();
    dns.dedup();
    cove_tls::NameScope { dns, ip }
}

/// Reads the certificate, key and CA the user brought: a key that is not the certificate's, a CA that
/// is not PEM, or a certificate already expired (every client would refuse it) is an error naming the file.
/// Returns the key, the CA's PEM and the certificate's expiry.
fn load_brought(b: &BroughtTls) -> anyhow::Result<(Arc<cove_tls::rustls::sign::CertifiedKey>, String, i64)> {
    let read = |p: &Path| cove_tls::read(p).map_err(anyhow::Error::from);
    let (cert, key, ca) = (read(&b.certificate)?, read(&b.key)?, read(&b.ca)?);
    let what = format!("the certificate {} with the key {}", b.certificate.display(), b.key.display());
    cove_tls::certificates(&format!("the CA {}", b.ca.display()), &ca)?;
    let certified = cove_tls::certified_key(&what, &cert, &key)?;
    let not_after = cove_tls::not_after(&b.certificate.display().to_string(), &cert)?;
    if not_after <= chrono::Utc::now().timestamp() {
        anyhow::bail!(
            "tls.certificate: {} expired at {}, and every client refuses an expired certificate; replace it (and its key) under tls: in the workspace configuration",
            b.certificate.display(),
            store::timestamp(not_after * 1000)
        );
    }
    Ok((certified, ca, not_after))
}

/// Issues the listeners a new certificate for the same names and serves it to new connections; a
/// certificate the user brought is read again from its files instead, so replacing those files and
/// rotating renews it without a restart. Returns the new certificate's expiry.
pub fn rotate_server(tls: &WorkspaceTls, ws: &Path) -> anyhow::Result<i64> {
    if let Some(b) = &tls.brought {
        let (key, ca, not_after) = load_brought(b)?;
        if ca != std::fs::read_to_string(files::trust(ws)).unwrap_or_default() {
            anyhow::bail!(
                "tls.ca: {} is not the CA the workspace started with; clients trust that one, so a new CA needs a restart",
                b.ca.display()
            );
        }
        tls.identity.replace(key);
        return Ok(not_after);
    }
    let issued = tls.authority.issue_server(&tls.names, cove_tls::SERVER_DAYS)?;
    write_server(ws, &issued)?;
    tls.identity.replace(cove_tls::certified_key("the listeners' certificate", &issued.cert_pem, &issued.key_pem)?);
    Ok(issued.not_after)
}

fn write_server(ws: &Path, issued: &Issued) -> anyhow::Result<()> {
    write_private(&files::server_key(ws), &issued.key_pem)?;
    write_public(&files::server_cert(ws), &issued.cert_pem)
}

/// Writes a file only its owner can read, replacing it whole.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    write_mode(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    write_mode(path, text, 0o644)
}

fn write_mode(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    cove_tls::write_replacing(path, text, mode).with_context(|| format!("failed to write {}", path.display()))
}

fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to restrict {}", path.display()))
}

/// A compute cluster's worker credential on this host: its token, and its client certificate files.
#[derive(Debug, Clone)]
pub struct WorkerCredential {
    pub token: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust: PathBuf,
}

impl WorkerCredential {
    /// The environment a worker process is started with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COVE_WORKER_TOKEN", self.token.clone()),
            ("COVE_CA_FILE", self.trust.display().to_string()),
            ("COVE_CLIENT_CERT", self.cert.display().to_string()),
            ("COVE_CLIENT_KEY", self.key.display().to_string()),
        ]
    }
}

/// Gives the cluster's current worker credential each time a worker process starts, so that workers
/// started after a rotation or a revocation get the new one (issued then, if need be).
pub type CredentialSource = Arc<dyn Fn() -> anyhow::Result<WorkerCredential> + Send + Sync>;

/// Issues a compute's workers a client certificate and records it as that compute's; the certificate
/// files on this host are replaced, and earlier certificates stay valid until they expire or are
/// revoked (so workers already running keep working through a rotation).
pub fn issue_worker_certificate(
    authority: &Authority,
    store: &Store,
    ws: &Path,
    compute: &str,
) -> anyhow::Result<Issued> {
    let _one_at_a_time = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
    issue_and_write(authority, store, ws, compute)
}

/// Held while a compute's certificate files are checked or replaced: workers of one cluster start
/// together, and two of them renewing at once could leave one's key beside the other's certificate.
static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn issue_and_write(authority: &Authority, store: &Store, ws: &Path, compute: &str) -> anyhow::Result<Issued> {
    let issued = issue_client_certificate(authority, store, compute)?;
    write_private(&files::compute_key(ws, compute), &issued.key_pem)?;
    write_private(&files::compute_cert(ws, compute), &issued.cert_pem)?;
    Ok(issued)
}

/// Issues a client certificate for a compute's workers and records it as that compute's.
pub fn issue_client_certificate(authority: &Authority, store: &Store, compute: &str) -> anyhow::Result<Issued> {
    let issued = authority.issue_client(compute, cove_tls::CLIENT_DAYS)?;
    let (fp, name, until) = (issued.fingerprint.clone(), compute.to_string(), issued.not_after * 1000);
    store.call_now(move |c| store::worker_certificate_add(c, &fp, &name, until))?;
    Ok(issued)
}

/// The client certificate files of a compute on this host, issued anew when missing, unknown to the
/// store (revoked), or past two thirds of their life.
pub fn ensure_worker_certificate(authority: &Authority, store: &Store, ws: &Path, compute: &str) -> anyhow::Result<()> {
    let _one_at_a_time = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(pem) = std::fs::read_to_string(files::compute_cert(ws, compute)) {
        if let (Ok(certs), Ok(until)) = (cove_tls::certificates("", &pem), cove_tls::not_after("", &pem)) {
            let fp = cove_tls::fingerprint(&certs[0]);
            let known = store.call_now(move |c| store::worker_certificate_compute(c, &fp, store::now_ms()))?;
            let fresh = until * 1000 - store::now_ms() > cove_tls::CLIENT_DAYS * 86_400_000 / 3;
            if known.as_deref() == Some(compute) && fresh {
                return Ok(());
            }
        }
    }
    issue_and_write(authority, store, ws, compute).map(|_| ())
}

/// Why a request may not use the worker protocol, when its connection presented no certificate of
/// the token's compute.
pub fn check_worker_certificate(presented: Option<&str>, bound_to: Option<&str>, compute: &str) -> Result<(), String> {
    match (presented, bound_to) {
        (None, _) => Err(
            "the worker API needs the compute's client certificate (mutual TLS); a bearer token alone is not enough"
                .into(),
        ),
        (Some(_), None) => {
            Err("the client certificate is not a current worker certificate of this workspace (revoked or expired)"
                .into())
        }
        (Some(_), Some(owner)) if owner != compute => {
            Err(format!("the client certificate belongs to compute `{owner}`, not to `{compute}`"))
        }
        _ => Ok(()),
    }
}
