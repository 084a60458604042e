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
    // `COVE_WORKER_CREDENTIAL_CHECK_SECS` moves how often (a test).
    let every = std::env::var("COVE_WORKER_CREDENTIAL_CHECK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CHECK_EVERY, Duration::from_secs);
    // The certificate this worker connects with: the one its files held when it started.
    let mut in_use = cove_tls::read(&config.client_cert).unwrap_or_default();
    loop {
        match renew_if_due(&client, &config, within, &mut in_use).await {
            Ok(Some(Kept::Renewed(not_after))) => tracing::info!(not_after, "renewed the worker's client certificate"),
            Ok(Some(Kept::Taken(not_after))) => {
                tracing::info!(not_after, "using the client certificate another worker renewed into the same files")
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "the client certificate was not renewed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// What a check did, with the expiry of the certificate now in use.
enum Kept {
    /// This worker renewed its certificate.
    Renewed(i64),
    /// Another worker sharing its files renewed it: this one connects with what they now hold.
    Taken(i64),
}

/// Renews the certificate when less than `within` seconds of it are left, unless another worker that
/// shares the files renewed it first (the control plane renews a certificate once): then the pair
/// they hold is taken up.
async fn renew_if_due(
    client: &Client,
    config: &WorkerConfig,
    within: i64,
    in_use: &mut String,
) -> anyhow::Result<Option<Kept>> {
    if let Some(not_after) = take_renewed_files(client, config, in_use) {
        return Ok(Some(Kept::Taken(not_after)));
    }
    let not_after = cove_tls::not_after(&config.client_cert.display().to_string(), in_use)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if not_after - now > within {
        return Ok(None);
    }
    let asked: Result<cove_api::worker::RenewedCredential, _> =
        client.post("/worker/v1/credential", &serde_json::json!({})).await;
    let renewed = match asked {
        Ok(renewed) => renewed,
        Err(cove_api::ClientError::Api { status: 409, message, .. }) => {
            // Renewed already: by a worker sharing these files, which writes them once it has the answer.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(not_after) = take_renewed_files(client, config, in_use) {
                    return Ok(Some(Kept::Taken(not_after)));
                }
            }
            anyhow::bail!("the control plane refused to renew the certificate: {message}");
        }
        Err(e) => return Err(anyhow::Error::new(e).context("asking for a new certificate")),
    };
    let tls = client_config_for(config, &renewed.cert_pem, &renewed.key_pem)?;
    // The files first, so a worker started again from them has the new pair; then every connection
    // from now on. A certificate that cannot be written still serves this process until it ends.
    let written =
        replace_pair(config, &renewed.key_pem, &renewed.cert_pem).context("writing the new certificate over the old");
    client.reconnect(tls);
    *in_use = renewed.cert_pem;
    written?;
    Ok(Some(Kept::Renewed(renewed.not_after)))
}

/// When the worker's files hold a whole pair other than the one in use, expiring no sooner than it,
/// connects with it from now on; returns its expiry.
fn take_renewed_files(client: &Client, config: &WorkerConfig, in_use: &mut String) -> Option<i64> {
    let on_disk = cove_tls::read(&config.client_cert).ok().filter(|pem| pem != in_use)?;
    let key = cove_tls::read(&config.client_key).ok()?;
    let name = config.client_cert.display().to_string();
    let theirs = cove_tls::not_after(&name, &on_disk).ok()?;
    let ours = cove_tls::not_after(&name, in_use).ok()?;
    // A pair caught between its two renames does not load, and is looked at again next time.
    let tls = client_config_for(config, &on_disk, &key).ok().filter(|_| theirs >= ours)?;
    client.reconnect(tls);
    *in_use = on_disk;
    Some(theirs)
}

fn client_config_for(
    config: &WorkerConfig,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<cove_tls::rustls::ClientConfig> {
    let ca = cove_tls::read(&config.ca_file)?;
    let what = format!("the CA file {}", config.ca_file.display());
    Ok(cove_tls::client_config(&what, &ca, Some((cert_pem, key_pem)))?)
}

/// Writes a new key and certificate over the worker's files, so that a worker stopped at any point
/// leaves a pair [`finish_replacing`] can make whole: both are written beside the old ones first, then
/// the key is renamed into place and then the certificate. A staged certificate with no staged key
/// beside it is therefore complete, and belongs to the key in place.
fn replace_pair(config: &WorkerConfig, key_pem: &str, cert_pem: &str) -> std::io::Result<()> {
    let _replacing = pair_lock(config)?;
    let staged_key = cove_tls::write_staged(&config.client_key, key_pem, 0o600)?;
    let staged_cert = cove_tls::write_staged(&config.client_cert, cert_pem, 0o600)?;
    rename(&staged_key, &config.client_key)?;
    rename(&staged_cert, &config.client_cert)
}

/// Finishes a replacement [`replace_pair`] began and a stop cut short, before the worker reads its pair:
/// with the new key in place, the new certificate is put beside it; before that, the old pair is whole
/// and what was staged goes.
pub fn finish_replacing(config: &WorkerConfig) -> std::io::Result<()> {
    let staged_key = cove_tls::staged_name(&config.client_key);
    let staged_cert = cove_tls::staged_name(&config.client_cert);
    // Nothing staged, nothing to finish: a folder the worker may not write (a read-only mount) is fine.
    if !staged_key.exists() && !staged_cert.exists() {
        return Ok(());
    }
    // Not while a worker sharing the files is in the middle of replacing them: what it staged would
    // look like what a stop left behind. Once it is done, its staged files are gone.
    let _replacing = pair_lock(config)?;
    if staged_key.exists() {
        let _ = std::fs::remove_file(&staged_cert);
        return std::fs::remove_file(&staged_key);
    }
    if staged_cert.exists() {
        tracing::info!(cert = %config.client_cert.display(), "finishing a certificate renewal a stop cut short");
        return rename(&staged_cert, &config.client_cert);
    }
    Ok(())
}

/// An exclusive lock on `<key>.lock` beside the key, held while the pair is replaced or finished.
fn pair_lock(config: &WorkerConfig) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = config.client_key.as_os_str().to_owned();
    path.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    file.lock()?;
    Ok(file)
}

fn rename(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::rename(from, to).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", to.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &std::path::Path) -> WorkerConfig {
        WorkerConfig {
            url: String::new(),
            token: String::new(),
            job: None,
            node: "n".into(),
            concurrency: 1,
            work_dir: dir.into(),
            ca_file: dir.join("ca.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    fn pair(config: &WorkerConfig) -> (String, String) {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        (read(&config.client_key), read(&config.client_cert))
    }

    /// Every point a stop can cut a renewal at leaves a whole pair once the next start has finished it:
    /// the old one before the key's rename, the new one after it.
    #[test]
    fn a_renewal_cut_short_anywhere_leaves_a_whole_pair() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let old = || {
            std::fs::write(&config.client_key, "old key").unwrap();
            std::fs::write(&config.client_cert, "old cert").unwrap();
        };
        let staged_key = cove_tls::staged_name(&config.client_key);
        let staged_cert = cove_tls::staged_name(&config.client_cert);
        let no_staged = || assert!(!staged_key.exists() && !staged_cert.exists());
        let whole =
            |pair: (String, String)| ["old", "new"].iter().any(|a| pair == (format!("{a} key"), format!("{a} cert")));

        // Stopped while the certificate was being staged: part of it written.
        old();
        std::fs::write(&staged_key, "new key").unwrap();
        std::fs::write(&staged_cert, "new ce").unwrap();
        finish_replacing(&config).unwrap();
        assert_eq!(pair(&config), ("old key".into(), "old cert".into()));
        no_staged();
        // Stopped with both staged, before the renames.
        std::fs::write(&staged_key, "new key").unwrap();
        std::fs::write(&staged_cert, "new cert").unwrap();
        finish_replacing(&config).unwrap();
        assert_eq!(pair(&config), ("old key".into(), "old cert".into()));
        no_staged();
        // Stopped between the two renames: the new key beside the old certificate.
        std::fs::write(&config.client_key, "new key").unwrap();
        std::fs::write(&staged_cert, "new cert").unwrap();
        assert!(!whole(pair(&config)), "the pair a stop left does not match");
        finish_replacing(&config).unwrap();
        assert_eq!(pair(&config), ("new key".into(), "new cert".into()));
        no_staged();
        // A worker sharing the files, in the middle of its renewal: a start waits for it, and then
        // finds nothing to undo.
        old();
        let renewing = pair_lock(&config).unwrap();
        std::fs::write(&staged_key, "new key").unwrap();
        std::fs::write(&staged_cert, "new cert").unwrap();
        let starting = std::thread::spawn({
            let config = config.clone();
            move || finish_replacing(&config)
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!starting.is_finished(), "the start waits for the renewal");
        rename(&staged_key, &config.client_key).unwrap();
        rename(&staged_cert, &config.client_cert).unwrap();
        drop(renewing);
        starting.join().unwrap().unwrap();
        assert_eq!(pair(&config), ("new key".into(), "new cert".into()));
        no_staged();
        // A renewal that ran through, and a start with nothing to finish.
        old();
        replace_pair(&config, "new key", "new cert").unwrap();
        finish_replacing(&config).unwrap();
        assert_eq!(pair(&config), ("new key".into(), "new cert".into()));
        no_staged();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config.client_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
