//! The workspace's network configuration and the access rule derived from it.
//!
//! A workspace declares named private networks (address ranges), peerings between them, and private
//! endpoints: the addresses at which its services are reached. With public network access disabled (the
//! default), the API and invocation listeners bind only to `api` private endpoints, and a connection is
//! accepted only from a network that hosts one of them or is peered with one. Everything is checked here,
//! once, so the listener, the request guard, the worker check and `diagnose` all apply the same rule.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Why a source may not connect here: the network it is on and why that is not enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A network configuration, or a file it names, that cannot be used; the message names the file,
/// field or flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    public_network_access: Option<String>,
    #[serde(default)]
    networks: Vec<Network>,
    #[serde(default)]
    peerings: Vec<Vec<String>>,
    #[serde(default)]
    private_endpoints: Vec<PrivateEndpoint>,
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    computes: Vec<ComputeNetwork>,
    /// The listeners' certificate, key and CA, when the user brings them (else the workspace CA issues them).
    #[serde(default)]
    tls: Option<BroughtTls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub address_space: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateEndpoint {
    pub name: String,
    /// `api` (the API and invocation URLs), `datastore:<name>`, `egress` (a service scoring code may
    /// be allowed to reach), or `package-index` (where environment builds get packages).
    pub service: String,
    pub address: SocketAddr,
    pub network: String,
    /// The endpoint's name in the workspace's private DNS zone, put in the listeners' certificate
    /// (for `service: api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// The CA that signed the service's TLS certificate (datastores and package indexes served over
    /// HTTPS), when it is not a CA the system trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeNetwork {
    pub name: String,
    pub network: String,
    /// `local` (workers started by the control plane) or `external` (workers started elsewhere that dial in).
    #[serde(default = "external")]
    pub kind: String,
    #[serde(default = "default_instances")]
    pub max_instances: u32,
}

impl PrivateEndpoint {
    /// The CA (PEM) its `ca_file` names, when it names one; an unreadable file or one holding no
    /// certificate is an error naming the endpoint and the file.
    pub fn ca(&self) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.ca_file else { return Ok(None) };
        read_ca(&format!("private endpoint {}: ca_file {}", self.name, file.display()), file).map(Some)
    }
}

/// A certificate and key the user brought for the listeners, with the CA that signed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroughtTls {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A CA file's PEM, refused (naming it as `what`) when it cannot be read or holds no certificate.
pub fn read_ca(what: &str, file: &std::path::Path) -> Result<String, ConfigError> {
    read_pem(what, file).map_err(ConfigError)
}

fn read_pem(what: &str, file: &std::path::Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(file).map_err(|e| format!("{what}: {e}"))?;
    cove_tls::certificates(what, &pem).map_err(|e| e.to_string())?;
    Ok(pem)
}

fn external() -> String {
    "external".into()
}
fn default_instances() -> u32 {
    8
}

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub public_network_access: bool,
    pub networks: Vec<Network>,
    pub peerings: Vec<(String, String)>,
    pub private_endpoints: Vec<PrivateEndpoint>,
    pub trusted_proxies: Vec<IpNet>,
    pub computes: Vec<ComputeNetwork>,
    pub tls: Option<BroughtTls>,
}

/// The network a loopback-only workspace lives on when no configuration is given.
pub const LOOPBACK_NETWORK: &str = "loopback";

impl NetworkPolicy {
    /// The embedded default: a private workspace whose private network is this host's loopback, with
    /// its API on `listen` and the `local` compute cluster on the same network.
    pub fn loopback(listen: SocketAddr) -> Result<Self, ConfigError> {
        if !listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "--listen {listen}: a workspace without a network configuration is private to this host's loopback; \
                 give --config FILE declaring the private network of {} (or public_network_access: enabled)",
                listen.ip()
            )));
        }
        Ok(NetworkPolicy {
            public_network_access: false,
            networks: vec![Network {
                name: LOOPBACK_NETWORK.into(),
                address_space: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            }],
            peerings: Vec::new(),
            private_endpoints: vec![PrivateEndpoint {
                name: "api".into(),
                service: "api".into(),
                address: listen,
                network: LOOPBACK_NETWORK.into(),
                host_name: None,
                ca_file: None,
            }],
            trusted_proxies: Vec::new(),
            computes: vec![ComputeNetwork {
                name: crate::LOCAL_COMPUTE.into(),
                network: LOOPBACK_NETWORK.into(),
                kind: "local".into(),
                max_instances: 8,
            }],
            tls: None,
        })
    }

    /// Parses and checks a configuration file; errors name the file and the field.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        Self::parse_text(file, text).map_err(ConfigError)
    }

    fn parse_text(file: &str, text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        let err = |field: &str, msg: String| format!("{file}: field `{field}`: {msg}");
        if let Some(v) = raw.version {
            if v != 1 {
                return Err(err("version", format!("unsupported version {v}; this Cove reads version 1")));
            }
        }
        let public = match raw.public_network_access.as_deref().unwrap_or("disabled") {
            "disabled" => false,
            "enabled" => true,
            other => return Err(err("public_network_access", format!("`{other}` is not `disabled` or `enabled`"))),
        };
        let mut seen = std::collections::BTreeSet::new();
        for n in &raw.networks {
            if !seen.insert(n.name.as_str()) {
                return Err(err("networks", format!("network `{}` is declared twice", n.name)));
            }
            if n.address_space.is_empty() {
                return Err(err(&format!("networks.{}.address_space", n.name), "needs at least one range".into()));
            }
        }
        let known = |name: &str, field: &str| -> Result<(), String> {
            if raw.networks.iter().any(|n| n.name == name) {
                Ok(())
            } else {
                let names: Vec<&str> = raw.networks.iter().map(|n| n.name.as_str()).collect();
                Err(err(field, format!("network `{name}` is not declared (networks: {})", names.join(", "))))
            }
        };
        let mut peerings = Vec::new();
        for p in &raw.peerings {
            let [a, b] = p.as_slice() else {
                return Err(err("peerings", format!("a peering names exactly two networks, got {p:?}")));
            };
            known(a, "peerings")?;
            known(b, "peerings")?;
            peerings.push((a.clone(), b.clone()));
        }
        for pe in &raw.private_endpoints {
            let field = format!("private_endpoints.{}", pe.name);
            known(&pe.network, &format!("{field}.network"))?;
            let net = raw.networks.iter().find(|n| n.name == pe.network).expect("checked");
            if !net.address_space.iter().any(|r| r.contains(&pe.address.ip())) {
                return Err(err(
                    &format!("{field}.address"),
                    format!("{} is not in network `{}`", pe.address.ip(), pe.network),
                ));
            }
            let ok = ["api", "egress", "package-index"].contains(&pe.service.as_str())
                || pe.service.starts_with("datastore:");
            if !ok {
                return Err(err(
                    &format!("{field}.service"),
                    format!("`{}` is not api, egress, package-index or datastore:<name>", pe.service),
                ));
            }
        }
        if !public && !raw.private_endpoints.iter().any(|p| p.service == "api") {
            return Err(err(
                "private_endpoints",
                "a private workspace needs a private endpoint with service: api".into(),
            ));
        }
        for c in &raw.computes {
            known(&c.network, &format!("computes.{}.network", c.name))?;
            if c.kind != "local" && c.kind != "external" {
                return Err(err(
                    &format!("computes.{}.kind", c.name),
                    format!("`{}` is not local or external", c.kind),
                ));
            }
        }
        let mut computes = raw.computes.clone();
        if !computes.iter().any(|c| c.name == crate::LOCAL_COMPUTE) {
            if let Some(api) = raw.private_endpoints.iter().find(|p| p.service == "api") {
                computes.push(ComputeNetwork {
                    name: crate::LOCAL_COMPUTE.into(),
                    network: api.network.clone(),
                    kind: "local".into(),
                    max_instances: 8,
                });
            }
        }
        // Files the configuration names are found beside it.
        let beside = |p: std::path::PathBuf| match std::path::Path::new(file).parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        };
        let mut private_endpoints = raw.private_endpoints;
        for pe in &mut private_endpoints {
            pe.ca_file = pe.ca_file.take().map(beside);
        }
        let tls =
            raw.tls.map(|t| BroughtTls { certificate: beside(t.certificate), key: beside(t.key), ca: beside(t.ca) });
        Ok(NetworkPolicy {
            public_network_access: public,
            networks: raw.networks,
            peerings,
            private_endpoints,
            trusted_proxies: raw.trusted_proxies,
            computes,
            tls,
        })
    }

    /// The addresses the API and invocation listeners bind to.
    pub fn api_endpoints(&self) -> Vec<&PrivateEndpoint> {
        self.private_endpoints.iter().filter(|p| p.service == "api").collect()
    }

    pub fn network_of(&self, ip: IpAddr) -> Option<&Network> {
        self.networks.iter().find(|n| n.address_space.iter().any(|r| r.contains(&ip)))
    }

    /// Networks whose hosts may connect: those hosting an API endpoint, and those peered with them.
    pub fn allowed_networks(&self) -> Vec<&str> {
        let home: Vec<&str> = self.api_endpoints().iter().map(|p| p.network.as_str()).collect();
        let mut out: Vec<&str> = home.clone();
        for (a, b) in &self.peerings {
            if home.contains(&a.as_str()) {
                out.push(b);
            }
            if home.contains(&b.as_str()) {
                out.push(a);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether hosts of network `a` reach network `b`: the same network, or the two are peered.
    pub fn connected(&self, a: &str, b: &str) -> bool {
        a == b || self.peerings.iter().any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// Whether a connection from `ip` is accepted; `Err` says why not.
    pub fn admits(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.public_network_access {
            return Ok(());
        }
        match self.network_of(ip) {
            Some(n) if self.allowed_networks().contains(&n.name.as_str()) => Ok(()),
            Some(n) => Err(Refusal(format!(
                "source {ip} is on network `{}`, which is not peered with the workspace's network",
                n.name
            ))),
            None => Err(Refusal(format!("source {ip} is outside the workspace's private networks"))),
        }
    }

    /// Whether a worker of `compute` may connect from `ip`.
    pub fn admits_worker(&self, compute: &str, ip: IpAddr) -> Result<(), Refusal> {
        match self.computes.iter().find(|c| c.name == compute) {
            Some(c) => self.admits_from(compute, &c.network, ip),
            None => Ok(()),
        }
    }

    /// Whether a worker of `compute`, whose nodes are on `network`, may connect from `ip`.
    pub fn admits_from(&self, compute: &str, network: &str, ip: IpAddr) -> Result<(), Refusal> {
        let net = self.networks.iter().find(|n| n.name == network);
        match net {
            Some(n) if n.address_space.iter().any(|r| r.contains(&ip)) => Ok(()),
            _ => Err(Refusal(format!(
                "worker credentials of compute `{compute}` are accepted only from network `{network}`, not from {ip}"
            ))),
        }
    }

    /// Whether a worker of `compute`, a cluster with no network of its own whose workers run on the
    /// control plane's host, may connect from `ip`: only from an address of the API's own listeners.
    pub fn admits_from_this_host(&self, compute: &str, ip: IpAddr) -> Result<(), Refusal> {
        let own =
            |pe: &&PrivateEndpoint| pe.address.ip() == ip || (pe.address.ip().is_unspecified() && ip.is_loopback());
        if self.api_endpoints().iter().any(own) {
            return Ok(());
        }
        Err(Refusal(format!(
            "worker credentials of compute `{compute}`, which has no network of its own, are accepted only from this host's API address, not from {ip}; declare the compute's network to run its workers elsewhere"
        )))
    }

    /// The CA (PEM) of the private endpoint for `service` (`datastore:NAME`, `package-index`), when its
    /// configuration names one; an unreadable file is an error naming it.
    pub fn endpoint_ca(&self, service: &str) -> Result<Option<String>, ConfigError> {
        self.private_endpoints.iter().find(|p| p.service == service).map_or(Ok(None), PrivateEndpoint::ca)
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
public_network_access: disabled
networks:
  - name: workspace
    address_space: [198.18.1.0/24]
  - name: jump
    address_space: [198.18.2.0/24]
  - name: compute
    address_space: [198.18.4.0/24]
  - name: lab
    address_space: [198.18.5.0/24]
peerings:
  - [workspace, jump]
  - [workspace, compute]
private_endpoints:
  - name: api
    service: api
    address: 198.18.1.10:8470
    network: workspace
computes:
  - name: cluster
    network: compute
";

    #[test]
    fn only_the_workspace_network_and_its_peers_are_admitted() {
        let p = NetworkPolicy::parse("ws.yml", CONFIG).unwrap();
        assert!(p.admits("198.18.1.20".parse().unwrap()).is_ok());
        assert!(p.admits("198.18.2.10".parse().unwrap()).is_ok());
        assert!(p.admits("198.18.4.10".parse().unwrap()).is_ok());
        assert!(p.admits("198.18.5.10".parse().unwrap()).unwrap_err().0.contains("not peered"));
        assert!(p.admits("198.19.0.10".parse().unwrap()).unwrap_err().0.contains("outside"));
        assert!(p.admits_worker("cluster", "198.18.4.10".parse().unwrap()).is_ok());
        assert!(p.admits_worker("cluster", "198.18.2.10".parse().unwrap()).is_err());
        assert_eq!(p.computes.iter().find(|c| c.name == "local").unwrap().network, "workspace");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let bad = CONFIG.replace("address: 198.18.1.10:8470", "address: 198.18.9.10:8470");
        assert_eq!(
            NetworkPolicy::parse("ws.yml", &bad).unwrap_err().0,
            "ws.yml: field `private_endpoints.api.address`: 198.18.9.10 is not in network `workspace`"
        );
        let bad = CONFIG.replace("[workspace, jump]", "[workspace, nowhere]");
        assert!(NetworkPolicy::parse("ws.yml", &bad)
            .unwrap_err()
            .0
            .contains("field `peerings`: network `nowhere` is not declared"));
        let bad = CONFIG.replace("public_network_access: disabled", "public_network_acess: disabled");
        assert!(NetworkPolicy::parse("ws.yml", &bad).unwrap_err().0.contains("unknown field `public_network_acess`"));
        assert!(NetworkPolicy::loopback("198.18.1.1:80".parse().unwrap()).is_err());
    }
}
