//! The workspace's certificate authority and the TLS configurations of Cove's listeners and clients.
//!
//! A workspace has its own CA. It signs one server certificate for the addresses and names of the
//! API's private endpoints, and one client certificate per compute cluster, which workers present
//! (mutual TLS). Clients trust the workspace CA (or a CA the user brought), never the system's roots.
//! rustls with the ring provider, no OpenSSL.

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
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

/// What a workspace CA may vouch for: X.509 name constraints, so that a CA that users import into
/// their browsers for the studio can never sign a certificate that a browser or client accepts for
/// another host. DNS names match themselves and their subdomains; addresses match their range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameScope {
    pub dns: Vec<String>,
    pub ip: Vec<(std::net::IpAddr, u8)>,
}

impl NameScope {
    /// This host's loopback: `localhost`, 127.0.0.0/8 and ::1.
    pub fn loopback() -> NameScope {
        NameScope {
            dns: vec!["localhost".into()],
            ip: vec![(std::net::Ipv4Addr::new(127, 0, 0, 0).into(), 8), (std::net::Ipv6Addr::LOCALHOST.into(), 128)],
        }
    }

    /// Whether `name` (a DNS name or an IP address) lies within the scope.
    pub fn permits(&self, name: &str) -> bool {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => self.ip.iter().any(|(net, prefix)| in_range(ip, *net, *prefix)),
            Err(_) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.dns.iter().any(|d| {
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    name == d || name.ends_with(&format!(".{d}"))
                })
            }
        }
    }

    fn constraints(&self) -> NameConstraints {
        let mut permitted: Vec<GeneralSubtree> = self.dns.iter().map(|d| GeneralSubtree::DnsName(d.clone())).collect();
        permitted.extend(
            self.ip.iter().map(|(ip, prefix)| GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, *prefix))),
        );
        NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() }
    }

    /// The scope a CA certificate's name constraints give (none: it may vouch for anything).
    fn of(cert_pem: &str) -> TlsResult<Option<NameScope>> {
        use x509_parser::extensions::GeneralName;
        let what = "the workspace CA certificate";
        let certs = certificates(what, cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
            .map_err(|e| invalid(what, format!("not an X.509 certificate: {e}")))?;
        let constraints = cert.name_constraints().map_err(|e| invalid(what, format!("its name constraints: {e}")))?;
        let Some(permitted) = constraints.and_then(|c| c.value.permitted_subtrees.clone()) else { return Ok(None) };
        let mut scope = NameScope::default();
        let prefix = |mask: &[u8]| mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
        for subtree in permitted {
            match subtree.base {
                GeneralName::DNSName(d) => scope.dns.push(d.to_string()),
                GeneralName::IPAddress(b) if b.len() == 8 => {
                    let addr: [u8; 4] = b[..4].try_into().expect("4 bytes");
                    scope.ip.push((std::net::IpAddr::from(addr), prefix(&b[4..])));
                }
                GeneralName::IPAddress(b) if b.len() == 32 => {
                    let addr: [u8; 16] = b[..16].try_into().expect("16 bytes");
                    scope.ip.push((std::net::IpAddr::from(addr), prefix(&b[16..])));
                }
                _ => {}
            }
        }
        Ok(Some(scope))
    }
}

fn in_range(ip: std::net::IpAddr, net: std::net::IpAddr, prefix: u8) -> bool {
    let bits = |a: std::net::IpAddr| -> u128 {
        match a {
            std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            std::net::IpAddr::V6(v6) => u128::from(v6),
        }
    };
    if ip.is_ipv4() != net.is_ipv4() {
        return false;
    }
    let width = if net.is_ipv4() { 32 } else { 128 };
    let prefix = u32::from(prefix.min(width));
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    bits(ip) & mask == bits(net) & mask
}

/// The workspace's certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// What it may vouch for (none for a CA made before name constraints, which may vouch for anything).
    pub scope: Option<NameScope>,
}

impl Authority {
    /// A new self-signed CA named after the workspace, which may vouch only for the names of `scope`.
    pub fn create(workspace: &str, scope: &NameScope) -> TlsResult<(Authority, Issued)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Cove workspace CA ({workspace})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.name_constraints = Some(scope.constraints());
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
        let authority = Authority {
            issuer: Issuer::new(params, key),
            cert_pem: issued.cert_pem.clone(),
            scope: Some(scope.clone()),
        };
        Ok((authority, issued))
    }

    /// The CA kept in a workspace.
    pub fn load(cert_pem: &str, key_pem: &str) -> TlsResult<Authority> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("the workspace CA key", e))?;
        let scope = NameScope::of(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| invalid("the workspace CA certificate", e))?;
        Ok(Authority { issuer, cert_pem: cert_pem.to_string(), scope })
    }

    /// A server certificate for the given IP addresses and DNS names, each of which must lie within
    /// the CA's scope (a certificate outside it would be refused by every client anyway).
    pub fn issue_server(&self, names: &[String], days: i64) -> TlsResult<Issued> {
        if let Some(outside) = names.iter().find(|n| self.scope.as_ref().is_some_and(|s| !s.permits(n))) {
            return Err(invalid(
                "the listeners' certificate",
                format!(
                    "the workspace CA may vouch only for the names it was created for, and `{outside}` is not one of them; \
                     a CA cannot be widened: move tls/ca.pem and tls/ca.key aside to create a new one (clients then trust the new tls/trust.pem)"
                ),
            ));
        }
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| invalid("the server certificate's names", e))?;
        // Not a name or an address: OpenSSL checks a common name that looks like a host name against
        // the CA's DNS name constraints, and the names are in the subject alternative names anyway.
        params.distinguished_name = name("Cove workspace API");
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
        ("NameConstraintViolation", C_CONSTRAINED),
    ];
    match known.iter().find(|(needle, _)| text.contains(needle)) {
        Some((_, said)) => said.to_string(),
        None => format!("TLS failed: {}", text.rsplit(": ").next().unwrap_or(text)),
    }
}

const C_UNKNOWN: &str = "the server's certificate is not issued by the CA this client trusts";
const C_NAME: &str = "the server's certificate is not valid for the address or name this client connected to";
const C_EXPIRED: &str = "the server's certificate has expired";
const C_CONSTRAINED: &str =
    "the server's certificate names a host its CA may not vouch for (outside the CA's name constraints)";

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => C_UNKNOWN.into(),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => C_NAME.into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => C_EXPIRED.into(),
        rustls::Error::AlertReceived(alert) => format!("the server refused this client's TLS ({alert:?})"),
        other if format!("{other:?}").contains("NameConstraintViolation") => C_CONSTRAINED.into(),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn scope() -> NameScope {
        NameScope { dns: vec!["cove.internal".into()], ip: vec![("127.0.0.0".parse().unwrap(), 8)] }
    }

    #[test]
    fn a_loaded_authority_issues_certificates_its_roots_verify() {
        let (_, ca) = Authority::create("w", &scope()).unwrap();
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
        let (ours, _) = Authority::create("ours", &scope()).unwrap();
        let (_, theirs) = Authority::create("theirs", &scope()).unwrap();
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

    /// The CA's key signs a certificate for a name outside its scope, as a thief of the key would: every
    /// client that trusts the CA refuses it, and the CA itself will not issue it.
    #[test]
    fn the_workspace_ca_vouches_only_for_its_own_names() {
        let (_, ca) = Authority::create("w", &scope()).unwrap();
        let loaded = Authority::load(&ca.cert_pem, &ca.key_pem).unwrap();
        assert_eq!(loaded.scope, Some(scope()), "the scope is read back from the CA certificate");
        let refused = loaded.issue_server(&["127.0.0.1".into(), "bank.example".into()], 1).unwrap_err().to_string();
        assert!(refused.contains("`bank.example` is not one of them"), "{refused}");
        let trusted = roots("ca", &ca.cert_pem).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(trusted), provider()).build().unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for (names, name, good) in [
            (vec!["api.cove.internal"], "api.cove.internal", true),
            (vec!["127.0.0.9"], "127.0.0.9", true),
            (vec!["bank.example"], "bank.example", false),
            (vec!["api.cove.internal", "bank.example"], "api.cove.internal", false),
            (vec!["198.18.0.1"], "198.18.0.1", false),
            (vec!["cove.internal.example"], "cove.internal.example", false),
        ] {
            let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            let issued = loaded.sign(params, 1).unwrap();
            let cert = &certificates("server", &issued.cert_pem).unwrap()[0];
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            let verdict = verifier.verify_server_cert(cert, &[], &sn, &[], now);
            assert_eq!(verdict.is_ok(), good, "{names:?} as {name}: {verdict:?}");
            if !good {
                let why = format!("{:?}", verdict.unwrap_err());
                assert!(why.contains("NameConstraintViolation"), "{names:?}: {why}");
            }
        }
        // Client certificates (no names) of the same CA still verify.
        let client = loaded.issue_client("gpu", 1).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots("ca", &ca.cert_pem).unwrap()), provider())
                .build()
                .unwrap();
        verifier.verify_client_cert(&certificates("client", &client.cert_pem).unwrap()[0], &[], now).unwrap();
    }

    #[test]
    fn scopes_match_names_subdomains_and_ranges() {
        let s = NameScope {
            dns: vec!["localhost".into(), "cove.internal".into()],
            ip: vec![("198.18.1.0".parse().unwrap(), 24), ("::1".parse().unwrap(), 128)],
        };
        for (name, permitted) in [
            ("localhost", true),
            ("api.cove.internal", true),
            ("API.Cove.Internal.", true),
            ("evilcove.internal", false),
            ("198.18.1.255", true),
            ("198.18.2.1", false),
            ("::1", true),
            ("::2", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(s.permits(name), permitted, "{name}");
        }
    }

    #[test]
    fn bad_pem_is_named() {
        let e = certificates("the file x.pem", "hello").unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("no PEM certificate"), "{e}");
    }
}
