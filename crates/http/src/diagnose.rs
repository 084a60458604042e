//! `cove workspace diagnose`: one check per line, each failing check with its fix.

use crate::AppRef;
use cove_api::worker::SandboxMode;
use cove_api::Check;
use cove_store as store;

fn check(name: &str, status: &str, detail: String, fix: Option<String>) -> Check {
    Check { name: name.into(), status: status.into(), detail, fix }
}

pub async fn run(app: &AppRef) -> Result<Vec<Check>, store::StoreError> {
    let computes = app.store.call(|c| store::compute_list(c)).await?;
    let mut out = vec![listener_check(app)];
    out.extend(compute_network_checks(app, &computes).await?);
    out.extend(sandbox_checks(app, &computes).await);
    out.push(workspace_mode_check(app).await);
    out.push(token_expiry_check(app).await?);
    // Where environment builds get packages: a wheel folder, or an index that answers at its private endpoint.
    out.push(package_index_check(app).await);
    out.extend(datastore_checks(app).await?);
    out.extend(certificate_checks(app).await?);
    Ok(out)
}

/// Every listener is a private endpoint of a private workspace.
fn listener_check(app: &AppRef) -> Check {
    if app.policy.public_network_access {
        check(
            "public network access",
            "warn",
            "enabled: any source address may connect".into(),
            Some("set public_network_access: disabled in the workspace config".into()),
        )
    } else {
        // `cove up` refuses to listen anywhere but the API's private endpoints of a private workspace,
        // so there is nothing here that could fail.
        let list: Vec<String> = app.listeners.iter().map(|a| a.to_string()).collect();
        check(
            "public network access",
            "ok",
            format!("disabled: listening only on private endpoints {}", list.join(", ")),
            None,
        )
    }
}

/// Every compute network can use the API's private endpoint. (The control plane cannot probe from inside
/// another network; the evidence that it really works is a worker that reached it.)
async fn compute_network_checks(app: &AppRef, computes: &[cove_api::Compute]) -> Result<Vec<Check>, store::StoreError> {
    let mut out = Vec::new();
    let endpoints = app.store.call(|c| store::endpoint_list(c)).await?;
    let mut used_computes: Vec<String> = Vec::new();
    for ep in &endpoints {
        let name = ep.spec.name.clone();
        for d in app.store.call(move |c| store::deployment_list(c, &name)).await? {
            if !used_computes.contains(&d.compute) {
                used_computes.push(d.compute);
            }
        }
    }
    let policy = &app.policy;
    let allowed = policy.allowed_networks();
    for c in computes {
        let Some(net) = policy.computes.iter().find(|x| x.name == c.name) else { continue };
        let used = if used_computes.contains(&c.name) { " (used by deployments)" } else { "" };
        if policy.public_network_access || allowed.contains(&net.network.as_str()) {
            out.push(check(
                &format!("compute {} reaches the API", c.name),
                "ok",
                format!("network {} may reach the API private endpoint{used}", net.network),
                None,
            ));
        } else {
            out.push(check(
                &format!("compute {} reaches the API", c.name),
                "fail",
                format!("network {} is neither the workspace's network nor peered with it{used}", net.network),
                Some(format!("add a peering between {} and the API endpoint's network", net.network)),
            ));
        }
        // The proof that the endpoint answers from the compute's own network is a worker that reached it.
        let contact = app.worker_contact.lock().unwrap_or_else(|e| e.into_inner()).get(&c.name).copied();
        let name = format!("compute {} workers answered", c.name);
        match contact {
            Some((ip, at)) => out.push(check(
                &name,
                "ok",
                format!("a worker reached the API from {ip} at {}", cove_store::timestamp(at)),
                None,
            )),
            None if c.kind == "local" => {}
            None => out.push(check(
                &name,
                "warn",
                "no worker of this compute has reached the API since the control plane started".into(),
                Some(format!("start a worker on network {} (cove worker --url ... --worker-token ...)", net.network)),
            )),
        }
    }
    Ok(out)
}

/// Scoring code can be sandboxed where it runs: as the hosts of each compute's workers said when they
/// last asked for work, or, for the local compute before any worker ran, this host.
async fn sandbox_checks(app: &AppRef, computes: &[cove_api::Compute]) -> Vec<Check> {
    let mut out = Vec::new();
    for c in computes {
        let name = format!("scoring sandbox on compute {}", c.name);
        if app.config.sandbox == SandboxMode::None {
            out.push(check(
                &name,
                "warn",
                "disabled by the workspace (--sandbox none): scoring code runs with the worker's network and files"
                    .into(),
                Some("start the workspace without --sandbox none".into()),
            ));
            continue;
        }
        let reported = app.worker_hosts.lock().unwrap_or_else(|e| e.into_inner()).get(&c.name).cloned();
        let (host, verdict) = match reported {
            Some((node, caps)) => (format!("the host of worker {node}"), caps.sandbox_problem.map_or(Ok(()), Err)),
            None if c.kind == "local" => {
                // Probed once per process; the first call runs the probe.
                let here = tokio::task::spawn_blocking(cove_common::sandbox_probe::available).await;
                ("this host".to_string(), here.unwrap_or_else(|e| Err(format!("the probe failed: {e}"))))
            }
            None => continue,
        };
        match verdict {
            Ok(()) => out.push(check(&name, "ok", format!("{host} builds user and network namespaces"), None)),
            Err(why) => out.push(check(
                &name,
                "fail",
                format!("{host} cannot: {why}; its scoring-code jobs fail"),
                Some("install bubblewrap there and allow unprivileged user namespaces".into()),
            )),
        }
    }
    out
}

/// The workspace is its owner's alone on this host.
async fn workspace_mode_check(app: &AppRef) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let dir = app.config.dir.clone();
    let mut open: Vec<String> = Vec::new();
    for p in [dir.clone(), cove_workspace::layout::owner_token(&dir), cove_workspace::layout::state_db(&dir)] {
        let Ok(meta) = tokio::fs::metadata(&p).await else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{} is mode {mode:o}", p.display()));
        }
    }
    if open.is_empty() {
        check("workspace private on this host", "ok", format!("{} is its owner's alone", dir.display()), None)
    } else {
        check(
            "workspace private on this host",
            "fail",
            format!("other users of this host can reach it: {}", open.join(", ")),
            Some(format!("chmod 700 {} (cove up does this when it starts)", dir.display())),
        )
    }
}

/// Tokens that never expire.
async fn token_expiry_check(app: &AppRef) -> Result<Check, store::StoreError> {
    let forever: Vec<String> = app
        .store
        .call(|c| store::token_list(c))
        .await?
        .into_iter()
        .filter(|t| t.kind == "user" && !t.revoked && t.expires_ms.is_none())
        .map(|t| format!("{} ({})", t.id, t.role))
        .collect();
    Ok(if forever.is_empty() {
        check("token expiry", "ok", "every user token expires".into(), None)
    } else {
        check(
            "token expiry",
            "warn",
            format!("tokens that never expire: {}", forever.join(", ")),
            Some("create tokens with --expires-in and revoke these (cove token revoke ID)".into()),
        )
    })
}

/// Datastores reached outside a private endpoint.
async fn datastore_checks(app: &AppRef) -> Result<Vec<Check>, store::StoreError> {
    let mut out = Vec::new();
    for ds in app.store.call(|c| store::datastore_list(c)).await? {
        if ds.kind == "local" {
            out.push(check(
                &format!("datastore {}", ds.name),
                "ok",
                "a folder on the control plane's host; no network involved".into(),
                None,
            ));
        } else if app.policy.private_endpoints.iter().any(|p| p.service == format!("datastore:{}", ds.name)) {
            out.push(check(
                &format!("datastore {}", ds.name),
                "ok",
                "reached through its private endpoint".into(),
                None,
            ));
        } else {
            out.push(check(
                &format!("datastore {}", ds.name),
                "fail",
                format!("{} is reached outside a private endpoint", ds.root),
                Some(format!("declare a private endpoint with service: datastore:{}", ds.name)),
            ));
        }
    }
    Ok(out)
}

/// An index served over HTTPS answers its simple API with a certificate the builds will accept.
async fn index_tls_check(name: &str, url: &str, address: std::net::SocketAddr, ca: Option<&str>) -> Check {
    let fix = "name the CA that issued the index's certificate with ca_file on its private endpoint";
    let client = match cove_common::environment::index_client(ca) {
        Ok(c) => c,
        Err(e) => return check(name, "fail", format!("{url}: {e}"), Some(fix.into())),
    };
    match client.get(format!("{url}/")).send().await {
        Ok(r) if r.status().is_success() || r.status().is_redirection() => check(
            name,
            "ok",
            format!("{url} answers at its private endpoint {address}, its certificate verified"),
            None,
        ),
        Ok(r) => check(name, "fail", format!("{url} answered {}", r.status()), Some("check the index's URL".into())),
        Err(e) => {
            let why = cove_tls::explain(&e).map_or_else(|| e.to_string(), |w| w.replace("server's", "index's"));
            check(name, "fail", format!("{url}: {why}; environment builds fail"), Some(fix.into()))
        }
    }
}

/// Warn this long before a certificate expires.
const EXPIRY_WARNING_MS: i64 = 14 * 86_400_000;

/// Every certificate the workspace serves or trusts, with how long it has left: the CA, the listeners'
/// certificate (issued or brought) and each compute's current worker certificate.
/// Every certificate the workspace depends on: what it is, when it expires (or why that cannot be
/// read), and what renews it.
pub async fn certificate_expiries(
    app: &AppRef,
) -> Result<Vec<(String, Result<i64, String>, &'static str)>, store::StoreError> {
    let now = store::now_ms();
    let mut certs: Vec<(String, Result<i64, String>, &'static str)> = Vec::new();
    let ws = &app.config.dir;
    let pem_expiry = |path: std::path::PathBuf| {
        cove_tls::read(&path)
            .and_then(|pem| cove_tls::not_after(&path.display().to_string(), &pem))
            .map(|s| s * 1000)
            .map_err(|e| e.to_string())
    };
    certs.push((
        "the workspace CA".into(),
        pem_expiry(cove_workspace::tls::files::ca_cert(ws)),
        "the workspace CA cannot be renewed in place; create a new workspace before then",
    ));
    match &app.tls.brought {
        Some(b) => certs.push((
            format!("the listeners' certificate {}", b.certificate.display()),
            pem_expiry(b.certificate.clone()),
            "replace the certificate named under tls: in the workspace configuration (its files), then run `cove workspace rotate-certificates`",
        )),
        None => certs.push((
            "the listeners' certificate".into(),
            pem_expiry(cove_workspace::tls::files::server_cert(ws)),
            "run `cove workspace rotate-certificates`",
        )),
    }
    let workers = app.store.call(move |c| store::worker_certificates_current(c, now)).await?;
    for (compute, until) in workers {
        certs.push((
            format!("the worker certificate of compute {compute}"),
            Ok(until),
            "run `cove workspace rotate-certificates` (clusters on this host) or `cove compute credential` (others)",
        ));
    }
    Ok(certs)
}

async fn certificate_checks(app: &AppRef) -> Result<Vec<Check>, store::StoreError> {
    let now = store::now_ms();
    let certs = certificate_expiries(app).await?;
    Ok(certs
        .into_iter()
        .map(|(what, until, fix)| match until {
            Err(why) => check("certificates", "fail", format!("{what}: {why}"), Some(fix.into())),
            Ok(t) if t <= now => check(
                "certificates",
                "fail",
                format!("{what} expired at {}", cove_store::timestamp(t)),
                Some(fix.into()),
            ),
            Ok(t) if t - now < EXPIRY_WARNING_MS => check(
                "certificates",
                "warn",
                format!("{what} expires in {} hours, at {}", (t - now) / 3_600_000, cove_store::timestamp(t)),
                Some(fix.into()),
            ),
            Ok(t) => check(
                "certificates",
                "ok",
                format!("{what} is valid until {} ({} days)", cove_store::timestamp(t), (t - now) / 86_400_000),
                None,
            ),
        })
        .collect())
}

/// How many wheels the folder holds.
async fn wheels_in(dir: &str) -> std::io::Result<usize> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut wheels = 0;
    while let Some(e) = entries.next_entry().await? {
        wheels += usize::from(e.file_name().to_string_lossy().ends_with(".whl"));
    }
    Ok(wheels)
}

async fn package_index_check(app: &AppRef) -> Check {
    use cove_api::worker::PackageSource;
    let name = "package index";
    match &app.package_source {
        None => check(
            name,
            "warn",
            "none configured: deployments with an environment (or an MLflow model and no script) are refused".into(),
            Some("start the workspace with --package-index URL (a private endpoint with service: package-index) or --wheels DIR".into()),
        ),
        Some(PackageSource::Wheels { dir }) => match wheels_in(dir).await {
            Ok(wheels) => check(name, "ok", format!("the wheel folder {dir} ({wheels} wheels); builds use no network"), None),
            Err(e) => check(name, "fail", format!("the wheel folder {dir} cannot be read: {e}"), Some("fix --wheels".into())),
        },
        Some(PackageSource::Index { url, address, ca }) => {
            let connect = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(address));
            // The probe's connection is closed before anything else is sent (a server that handshakes
            // in its accept loop would wait on it).
            let connected = connect.await.map(|r| r.map(drop));
            match connected {
                Ok(Ok(())) if url.starts_with("https://") => index_tls_check(name, url, *address, ca.as_deref()).await,
                Ok(Ok(())) => check(name, "ok", format!("{url} answers at its private endpoint {address}"), None),
                Ok(Err(e)) => check(
                    name,
                    "fail",
                    format!("{url}: nothing answers at {address}: {e}; environment builds fail"),
                    Some(format!("start the package index at {address}, or fix --package-index")),
                ),
                Err(_) => check(
                    name,
                    "fail",
                    format!("{url}: {address} did not answer within 3 s; environment builds fail"),
                    Some(format!("check the route to {address}")),
                ),
            }
        }
    }
}
