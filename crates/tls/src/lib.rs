//! The workspace's certificate authority and the TLS configurations of Cove's listeners and clients.
//!
//! A workspace has its own CA. It signs one server certificate for the addresses and names of the
//! API's private endpoints, and one client certificate per compute cluster, which workers present
//! (mutual TLS). Clients trust the workspace CA (or a CA the user brought), never the system's roots.
//! rustls with the ring provider, no OpenSSL.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sha2::Digest;
use std::path::Path;
use std::sync::{Arc, RwLock};
use time::{Duration, OffsetDateTime};

pub use rustls;

/// How long what Cove issues lasts. Bounded, so a leaked key stops working by itself; renewed by
/// `cove workspace rotate-certificates`, and `diagnose` warns before the end.
pub const CA_DAYS: i64 = 3650;
pub const SERVER_DAYS: i64 = 90;
pub const CLIENT_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(what: impl Into<String>, why: impl ToString) -> TlsError {
    TlsError::Invalid { what: what.into(), why: why.to_string() }
}

pub type TlsResult<T> = Result<T, TlsError>;

/// A certificate and its private key, as PEM, with what the workspace records of it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix seconds after which the certificate is no longer valid.
    pub not_after: i64,
    /// SHA-256 of the certificate's DER, hex: how the control plane knows a worker's certificate.
    pub fingerprint: String,
}

/// The workspace's certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl Authority {
    /// A new self-signed CA named after the workspace.
    pub fn create(workspace: &str) -> TlsResult<(Authority, Issued)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Cove workspace CA ({workspace})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let (not_before, not_after) = validity(CA_DAYS);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().map_err(|e| invalid("the workspace CA key", e))?;
        let cert = params.self_signed(&key).map_err(|e| invalid("the workspace CA", e))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.unix_timestamp(),
            fingerprint: fingerprint(cert.der()),
        };
        let authority = Authority { issuer: Issuer::new(params, key), cert_pem: issued.cert_pem.clone() };
        Ok((authority, issued))
    }

    /// The CA kept in a workspace.
    pub fn load(cert_pem: &str, key_pem: &str) -> TlsResult<Authority> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("the workspace CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| invalid("the workspace CA certificate", e))?;
        Ok(Authority { issuer, cert_pem: cert_pem.to_string() })
    }

    /// A server certificate for the given IP addresses and DNS names.
    pub fn issue_server(&self, names: &[String], days: i64) -> TlsResult<Issued> {
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| invalid("the server certificate's names", e))?;
        params.distinguished_name = name(names.first().map_or("cove", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, days)
    }

    /// A client certificate for a compute cluster's workers, named after the cluster.
    pub fn issue_client(&self, compute: &str, days: i64) -> TlsResult<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("cove compute {compute}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, days)
    }

    fn sign(&self, mut params: CertificateParams, days: i64) -> TlsResult<Issued> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(days);
        params.not_before = not_before;
        params.not_after = not_after;
        let mut serial = [0u8; 16];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut serial)
            .map_err(|e| invalid("a serial number", format!("{e:?}")))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let key = KeyPair::generate().map_err(|e| invalid("a key", e))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| invalid("a certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.unix_timestamp(),
            fingerprint: fingerprint(cert.der()),
        })
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// From an hour ago (clocks of hosts differ a little) to `days` from now.
fn validity(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::hours(1), now + Duration::days(days))
}

/// SHA-256 of a certificate's DER, hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn read(path: &Path) -> TlsResult<String> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// Replaces `path` with `text` whole, created with `mode`: written to a name of its own beside it (a
/// certificate and its key must not share one) and renamed over it, so a reader sees the old file or
/// the new one, never part of either.
pub fn write_replacing(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let staged = write_staged(path, text, mode)?;
    std::fs::rename(&staged, path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Where [`write_staged`] puts the text that is to replace `path`.
pub fn staged_name(path: &Path) -> std::path::PathBuf {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".tmp");
    std::path::PathBuf::from(staged)
}

/// Writes `text` to [`staged_name`]`(path)`, created with `mode` and synced to disk, for the caller
/// to rename over `path` when it is ready; returns that name.
pub fn write_staged(path: &Path, text: &str, mode: u32) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staged = staged_name(path);
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", staged.display()));
    let _ = std::fs::remove_file(&staged);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&staged).map_err(named)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(named)?;
    Ok(staged)
}

/// The certificates in a PEM text (`what` names it in errors).
pub fn certificates(what: &str, pem: &str) -> TlsResult<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

pub fn private_key(what: &str, pem: &str) -> TlsResult<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| invalid(what, format!("not a PEM private key: {e}")))
}

/// Unix seconds after which the first certificate in `pem` is no longer valid.
pub fn not_after(what: &str, pem: &str) -> TlsResult<i64> {
    let certs = certificates(what, pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| invalid(what, format!("not an X.509 certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Makes ring the process's TLS provider, for clients that do not get a configuration of Cove's (a
/// datastore's signed URLs verified against the system's roots).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(what: &str, ca_pem: &str) -> TlsResult<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(what, ca_pem)? {
        roots.add(cert).map_err(|e| invalid(what, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A certificate and key as rustls signs with them.
pub fn certified_key(what: &str, cert_pem: &str, key_pem: &str) -> TlsResult<Arc<CertifiedKey>> {
    let certs = certificates(what, cert_pem)?;
    let key = private_key(what, key_pem)?;
    let key = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| invalid(what, e))?;
    Ok(Arc::new(key))
}

/// The server certificate a listener presents; replaced in place when certificates are rotated, so
/// connections already open keep theirs and new ones get the new one.
#[derive(Debug)]
pub struct ServerIdentity(RwLock<Arc<CertifiedKey>>);

impl ServerIdentity {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(RwLock::new(key)))
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The listeners' TLS: the server identity, and client certificates verified against the workspace
/// CA when a client presents one (users present none; the worker routes require one).
pub fn server_config(identity: Arc<ServerIdentity>, client_ca_pem: &str) -> TlsResult<rustls::ServerConfig> {
    let roots = roots("the workspace CA", client_ca_pem)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid("the client certificate verifier", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("the TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client's TLS: trusts only `ca_pem` (never the system's roots) and, for a worker, presents its
/// compute's certificate.
pub fn client_config(ca_what: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> TlsResult<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("the TLS versions", e))?
        .with_root_certificates(roots(ca_what, ca_pem)?);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs = certificates("the client certificate", cert_pem)?;
            let key = private_key("the client key", key_pem)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| invalid("the client certificate", e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client's TLS from files: the CA to trust and, for a worker, its certificate and key. Errors name
/// the file.
pub fn client_config_from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsResult<rustls::ClientConfig> {
    let ca_pem = read(ca)?;
    let what = format!("the CA file {}", ca.display());
    match identity {
        None => client_config(&what, &ca_pem, None),
        Some((cert, key)) => {
            let (cert_pem, key_pem) = (read(cert)?, read(key)?);
            client_config(&what, &ca_pem, Some((&cert_pem, &key_pem))).map_err(|e| match e {
                TlsError::Invalid { what: w, why } if w.starts_with("the client") => {
                    invalid(format!("{w} ({} / {})", cert.display(), key.display()), why)
                }
                other => other,
            })
        }
    }
}

/// Says in words why a TLS connection failed, from the error chain of a client call.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return Some(describe(tls));
            }
        }
        // Clients box their connectors' errors, which can hide the type; rustls's own words remain.
        let text = e.to_string();
        if text.contains("invalid peer certificate") || text.contains("received fatal alert") {
            return Some(describe_text(&text));
        }
        cause = e.source();
    }
    None
}

fn describe_text(text: &str) -> String {
    let known = [
        ("UnknownIssuer", C_UNKNOWN),
        ("BadSignature", C_UNKNOWN),
        ("NotValidForName", C_NAME),
        ("not valid for name", C_NAME),
        ("Expired", C_EXPIRED),
        ("expired", C_EXPIRED),
    ];
    match known.iter().find(|(needle, _)| text.contains(needle)) {
        Some((_, said)) => said.to_string(),
        None => format!("TLS failed: {}", text.rsplit(": ").next().unwrap_or(text)),
    }
}

const C_UNKNOWN: &str = "the server's certificate is not issued by the CA this client trusts";
const C_NAME: &str = "the server's certificate is not valid for the address or name this client connected to";
const C_EXPIRED: &str = "the server's certificate has expired";

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => C_UNKNOWN.into(),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => C_NAME.into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => C_EXPIRED.into(),
        rustls::Error::AlertReceived(alert) => format!("the server refused this client's TLS ({alert:?})"),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_loaded_authority_issues_certificates_its_roots_verify() {
        let (_, ca) = Authority::create("w").unwrap();
        let loaded = Authority::load(&ca.cert_pem, &ca.key_pem).unwrap();
        let server = loaded.issue_server(&["127.0.0.1".into(), "api.cove.internal".into()], 1).unwrap();
        let roots = roots("ca", &ca.cert_pem).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let cert = &certificates("server", &server.cert_pem).unwrap()[0];
        let now = rustls::pki_types::UnixTime::now();
        for name in ["127.0.0.1", "api.cove.internal"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(cert, &[], &sn, &[], now).expect(name);
        }
        let other = rustls::pki_types::ServerName::try_from("127.0.0.2").unwrap();
        assert!(verifier.verify_server_cert(cert, &[], &other, &[], now).is_err());
        let day = not_after("server", &server.cert_pem).unwrap() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((86_000..=86_400).contains(&day), "{day}");
        assert_eq!(server.fingerprint, fingerprint(cert));
    }

    #[test]
    fn a_certificate_of_another_authority_is_refused() {
        let (ours, _) = Authority::create("ours").unwrap();
        let (_, theirs) = Authority::create("theirs").unwrap();
        let client = ours.issue_client("gpu", 1).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots("theirs", &theirs.cert_pem).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        let cert = &certificates("client", &client.cert_pem).unwrap()[0];
        let now = rustls::pki_types::UnixTime::now();
        assert!(verifier.verify_client_cert(cert, &[], now).is_err());
    }

    #[test]
    fn bad_pem_is_named() {
        let e = certificates("the file x.pem", "hello").unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("no PEM certificate"), "{e}");
    }
}
