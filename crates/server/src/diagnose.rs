//! `cove workspace diagnose`: one check per line, each failing check with its fix.

use crate::store;
use crate::AppRef;
use cove_api::worker::SandboxMode;
use cove_api::Check;
use std::time::Duration;

fn check(name: &str, status: &str, detail: String, fix: Option<String>) -> Check {
    Check { name: name.into(), status: status.into(), detail, fix }
}

pub async fn run(app: &AppRef) -> Result<Vec<Check>, store::StoreError> {
    let policy = &app.policy;
    let mut out = Vec::new();

    // Every listener is a private endpoint of a private workspace.
    if policy.public_network_access {
        out.push(check(
            "public network access",
            "warn",
            "enabled: any source address may connect".into(),
            Some("set public_network_access: disabled in the workspace config".into()),
        ));
    } else {
        let public: Vec<String> = app
            .listeners
            .iter()
            .filter(|a| a.ip().is_unspecified() || policy.network_of(a.ip()).is_none())
            .map(|a| a.to_string())
            .collect();
        if public.is_empty() {
            let list: Vec<String> = app.listeners.iter().map(|a| a.to_string()).collect();
            out.push(check(
                "no public listener",
                "ok",
                format!("listening only on private endpoints {}", list.join(", ")),
                None,
            ));
        } else {
            out.push(check(
                "no public listener",
                "fail",
                format!("listening on {} outside the private networks", public.join(", ")),
                Some("declare those addresses as private endpoints, or stop listening on them".into()),
            ));
        }
    }

    // Every private endpoint that deployments need answers, and every compute network can use it.
    // Listeners were bound in the order of the API endpoints, so each has its actual address.
    for (pe, address) in policy.api_endpoints().into_iter().zip(app.listeners.iter().copied()) {
        let answered = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)).await;
        match answered {
            Ok(Ok(_)) => out.push(check(
                &format!("private endpoint {}", pe.name),
                "ok",
                format!("{address} answers on network {}", pe.network),
                None,
            )),
            _ => out.push(check(
                &format!("private endpoint {}", pe.name),
                "fail",
                format!("{address} does not answer"),
                Some(format!("check that {} is configured on this host", pe.address.ip())),
            )),
        }
    }
    let (computes, endpoints) = app.store.call(|c| Ok((store::compute_list(c)?, store::endpoint_list(c)?))).await?;
    let mut used_computes: Vec<String> = Vec::new();
    for ep in &endpoints {
        let name = ep.spec.name.clone();
        for d in app.store.call(move |c| store::deployment_list(c, &name)).await? {
            if !used_computes.contains(&d.compute) {
                used_computes.push(d.compute);
            }
        }
    }
    let allowed = policy.allowed_networks();
    for c in &computes {
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
                format!("a worker reached the API from {ip} at {}", crate::logs::timestamp(at)),
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

    // The scoring sandbox works on this host.
    match (app.config.sandbox, cove_worker::sandbox::available()) {
        (SandboxMode::None, _) => out.push(check(
            "scoring sandbox",
            "warn",
            "disabled by the workspace (--sandbox none): scoring code runs with the worker's network and files".into(),
            Some("start the workspace without --sandbox none".into()),
        )),
        (_, Ok(())) => out.push(check(
            "scoring sandbox",
            "ok",
            "bubblewrap builds user and network namespaces on this host".into(),
            None,
        )),
        (_, Err(e)) => out.push(check(
            "scoring sandbox",
            "fail",
            e,
            Some("install bubblewrap and allow unprivileged user namespaces".into()),
        )),
    }

    // Tokens that never expire.
    let forever: Vec<String> = app
        .store
        .call(|c| store::token_list(c))
        .await?
        .into_iter()
        .filter(|t| t.kind == "user" && !t.revoked && t.expires_ms.is_none())
        .map(|t| format!("{} ({})", t.id, t.role))
        .collect();
    if forever.is_empty() {
        out.push(check("token expiry", "ok", "every user token expires".into(), None));
    } else {
        out.push(check(
            "token expiry",
            "warn",
            format!("tokens that never expire: {}", forever.join(", ")),
            Some("create tokens with --expires-in and revoke these (cove token revoke ID)".into()),
        ));
    }

    // Datastores reached outside a private endpoint.
    for ds in app.store.call(|c| store::datastore_list(c)).await? {
        if ds.kind == "local" {
            out.push(check(
                &format!("datastore {}", ds.name),
                "ok",
                "a folder on the control plane's host; no network involved".into(),
                None,
            ));
        } else if policy.private_endpoints.iter().any(|p| p.service == format!("datastore:{}", ds.name)) {
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
