//! `GET /healthz` and `GET /readyz`, for a service manager or a load balancer on the private network.
//! Neither needs a token (the network policy still applies), and neither says anything a token would be
//! needed for: no paths, no names of users' resources beyond the computes the answer is about.

use crate::AppRef;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cove_api::{Readiness, ReadinessCheck};
use cove_store as store;
use std::time::Duration;

/// How long a certificate must still be valid for the workspace to be ready.
const CERTIFICATE_MARGIN_MS: i64 = 86_400_000;
/// How long the state store's write probe may take before the store counts as not writable.
const STORE_PROBE: Duration = Duration::from_secs(2);
/// A worker heard from this recently shows a remote compute works without asking its scheduler.
const RECENT_WORKER_MS: i64 = 10 * 60_000;

/// The process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether this control plane can do its work now: 200 when every check passes, else 503; the body
/// names each check either way.
pub async fn readyz(State(app): State<AppRef>) -> (StatusCode, Json<Readiness>) {
    let stopping = app.draining.load(std::sync::atomic::Ordering::SeqCst);
    let serving = if stopping {
        Err("a planned stop is under way: no new work is taken".to_string())
    } else {
        Ok("taking work".to_string())
    };
    let mut checks = vec![check("serving", serving), store_check(&app).await];
    checks.extend(certificate_checks(&app).await);
    checks.extend(compute_checks(&app).await);
    let ready = checks.iter().all(|c| c.ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, checks }))
}

fn check(name: impl Into<String>, verdict: Result<String, String>) -> ReadinessCheck {
    let (ready, detail) = match verdict {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    ReadinessCheck { name: name.into(), ready, detail }
}

/// The state store takes a write within [`STORE_PROBE`].
async fn store_check(app: &AppRef) -> ReadinessCheck {
    let probe = app.store.call(store::probe_writable);
    let verdict = match tokio::time::timeout(STORE_PROBE, probe).await {
        Ok(Ok(())) => Ok("writable".to_string()),
        Ok(Err(e)) => Err(format!("not writable: {e}")),
        Err(_) => Err(format!("a write did not finish within {} s", STORE_PROBE.as_secs())),
    };
    check("state store", verdict)
}

/// Every certificate the listeners and workers depend on is valid for more than a day.
async fn certificate_checks(app: &AppRef) -> Vec<ReadinessCheck> {
    let now = store::now_ms();
    let Ok(certs) = crate::diagnose::certificate_expiries(app).await else {
        return vec![check("certificates", Err("the state store cannot list them".into()))];
    };
    certs
        .into_iter()
        .map(|(what, until, _)| {
            let verdict = match until {
                Err(why) => Err(format!("{what}: {why}")),
                Ok(t) if t - now <= CERTIFICATE_MARGIN_MS => {
                    Err(format!("{what} expires at {}, within a day", cove_store::timestamp(t)))
                }
                Ok(t) => Ok(format!("{what} is valid until {}", cove_store::timestamp(t))),
            };
            check("certificates", verdict)
        })
        .collect()
}

/// Each compute has a live worker or can start one: clusters on this host need the worker executable,
/// a Slurm cluster a worker heard from lately or a controller that answers.
async fn compute_checks(app: &AppRef) -> Vec<ReadinessCheck> {
    let Ok(computes) = app.store.call(|c| store::compute_list(c)).await else {
        return vec![check("computes", Err("the state store cannot list them".into()))];
    };
    let now = store::now_ms();
    let mut out = Vec::new();
    for c in computes {
        let name = format!("compute {}", c.name);
        let heard = app.worker_contact.lock().unwrap_or_else(|e| e.into_inner()).get(&c.name).map(|(_, at)| *at);
        let verdict = match (&c.slurm, heard) {
            (_, Some(at)) if now - at < RECENT_WORKER_MS => {
                Ok("a worker reached the API in the last 10 minutes".into())
            }
            (Some(spec), _) => match cove_compute::slurm::reachable(spec).await {
                Ok(()) => Ok("its Slurm controller answers".into()),
                Err(e) => Err(e.to_string()),
            },
            (None, _) => match tokio::fs::metadata(&app.config.worker_exe).await {
                Ok(m) if m.is_file() => Ok("workers start on this host".into()),
                _ => Err("the worker executable is missing; no worker can start".into()),
            },
        };
        out.push(check(name, verdict));
    }
    out
}
