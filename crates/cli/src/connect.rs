//! Finding the control plane: `--url`/`COVE_URL` with `--token`/`COVE_TOKEN`, or a workspace directory
//! (`--workspace DIR`/`COVE_WORKSPACE`) whose running control plane recorded its URL and owner token.

use anyhow::{bail, Context};
use cove_api::Client;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The workspace directory of a running `cove up` (or set COVE_WORKSPACE).
    #[arg(long, global = true, env = "COVE_WORKSPACE")]
    pub workspace: Option<PathBuf>,
    /// The control plane's URL (or set COVE_URL); needs a token.
    #[arg(long, global = true, env = "COVE_URL")]
    pub url: Option<String>,
    /// A bearer token (or set COVE_TOKEN).
    #[arg(long, global = true, env = "COVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA that verifies the control plane's certificate (or set COVE_CA_FILE); by default the
    /// workspace's `tls/trust.pem`.
    #[arg(long, global = true, env = "COVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Target {
    pub fn client(&self) -> anyhow::Result<Client> {
        if let Some(url) = &self.url {
            if !url.starts_with("https://") {
                bail!("COVE_URL {url}: Cove's control plane speaks only HTTPS; use its https:// URL");
            }
            let token = match (&self.token, &self.workspace) {
                (Some(t), _) => t.clone(),
                (None, Some(dir)) => read_token(dir)?,
                (None, None) => bail!("COVE_URL is set but no token: set COVE_TOKEN (or --token)"),
            };
            let ca = match (&self.ca_file, &self.workspace) {
                (Some(file), _) => file.clone(),
                (None, Some(dir)) => cove_server::tls::files::trust(dir),
                (None, None) => bail!(
                    "COVE_URL is set but no CA to verify it: set COVE_CA_FILE (or --ca-file) to the workspace's \
                     tls/trust.pem"
                ),
            };
            return Ok(Client::new(url, &token, tls(&ca)?));
        }
        let Some(dir) = &self.workspace else {
            bail!("no workspace given: use --workspace DIR (or COVE_WORKSPACE), or COVE_URL with COVE_TOKEN");
        };
        let url_file = cove_server::layout::url_file(dir);
        let url = std::fs::read_to_string(&url_file).with_context(|| {
            format!("no control plane has run in {} (start one with `cove up --dir {}`)", dir.display(), dir.display())
        })?;
        let token = match &self.token {
            Some(t) => t.clone(),
            None => read_token(dir)?,
        };
        let ca = self.ca_file.clone().unwrap_or_else(|| cove_server::tls::files::trust(dir));
        Ok(Client::new(url.trim(), &token, tls(&ca)?))
    }
}

/// The TLS of a user's client: trusts only the given CA file.
pub fn tls(ca: &std::path::Path) -> anyhow::Result<cove_tls::rustls::ClientConfig> {
    Ok(cove_tls::client_config_from_files(ca, None)?)
}

fn read_token(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = cove_server::layout::owner_token(dir);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read the owner token {}", path.display()))?
        .trim()
        .to_string())
}
