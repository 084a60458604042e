//! Keeps a worker's client certificate current: a worker that runs for weeks (one that dials in, not
//! bound to a job) asks the control plane for a new certificate once its own nears its expiry, writes
//! it over its files and uses it from the next connection on. Without this, it would be refused the
//! day its certificate expired, and someone would have to issue a credential and restart it.

use crate::WorkerConfig;
use anyhow::Context;
use cove_api::Client;
use std::time::Duration;

/// Renew when less than this is left: a third of a worker certificate's life.
const RENEW_WITHIN_SECS: i64 = cove_tls::CLIENT_DAYS * 86_400 / 3;
/// How often the certificate's expiry is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Checks now and then every hour, for as long as the worker runs.
pub async fn keep_fresh(client: Client, config: WorkerConfig) {
    // `COVE_WORKER_RENEW_WITHIN_SECS` moves the threshold (a site that wants renewals sooner, or a test).
    let within =
        std::env::var("COVE_WORKER_RENEW_WITHIN_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(RENEW_WITHIN_SECS);
    loop {
        match renew_if_due(&client, &config, within).await {
            Ok(Some(not_after)) => tracing::info!(not_after, "renewed the worker's client certificate"),
            Ok(None) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "the client certificate was not renewed"),
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Renews the certificate when less than `within` seconds of it are left; returns the new expiry.
async fn renew_if_due(client: &Client, config: &WorkerConfig, within: i64) -> anyhow::Result<Option<i64>> {
    let current = cove_tls::read(&config.client_cert)?;
    let not_after = cove_tls::not_after(&config.client_cert.display().to_string(), &current)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if not_after - now > within {
        return Ok(None);
    }
    let renewed: cove_api::worker::RenewedCredential =
        client.post("/worker/v1/credential", &serde_json::json!({})).await.context("asking for a new certificate")?;
    let ca = cove_tls::read(&config.ca_file)?;
    let what = format!("the CA file {}", config.ca_file.display());
    let tls = cove_tls::client_config(&what, &ca, Some((&renewed.cert_pem, &renewed.key_pem)))?;
    // The files first, so a worker started again from them has the new pair; then every connection
    // from now on. A certificate that cannot be written still serves this process until it ends.
    let written = [(&config.client_key, &renewed.key_pem), (&config.client_cert, &renewed.cert_pem)]
        .into_iter()
        .try_for_each(|(path, pem)| cove_tls::write_replacing(path, pem, 0o600))
        .context("writing the new certificate over the old");
    client.reconnect(tls);
    written?;
    Ok(Some(renewed.not_after))
}
