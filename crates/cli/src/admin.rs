//! `cove token|compute|audit ...` and `cove workspace diagnose`.

use crate::render::table;
use crate::{print_json, Output};
use anyhow::{bail, Context};
use cove_api::{encode, AuditEntry, Check, Client, Compute, CreateDatastore, CreateToken, Datastore, Token};

/// Parses `30s`, `15m`, `12h`, `7d` into seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("--expires-in `{s}`: expected a number and a unit, like 12h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => bail!("--expires-in `{s}`: unknown unit `{other}` (s, m, h, d)"),
    };
    if secs == 0 {
        bail!("--expires-in `{s}`: must be longer than zero");
    }
    Ok(secs)
}

pub async fn token_create(
    client: &Client,
    role: String,
    endpoint: Option<String>,
    expires_in: Option<String>,
    out: Output,
) -> anyhow::Result<()> {
    let expires_in_secs = expires_in.as_deref().map(parse_duration).transpose()?;
    let token: Token = client.post("/api/v1/tokens", &CreateToken { role, endpoint, expires_in_secs }).await?;
    if out.json {
        return print_json(&token);
    }
    println!("{}", token.secret.as_deref().unwrap_or(""));
    eprintln!(
        "Created token {} ({}{}{}); the secret above is shown once",
        token.id,
        token.role,
        token.endpoint.as_deref().map(|e| format!(", endpoint {e}")).unwrap_or_default(),
        token.expires_at.as_deref().map(|t| format!(", expires {t}")).unwrap_or_default()
    );
    Ok(())
}

pub async fn token_list(client: &Client, out: Output) -> anyhow::Result<()> {
    let tokens: Vec<Token> = client.get("/api/v1/tokens").await?;
    if out.json {
        return print_json(&tokens);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                t.role.clone(),
                t.endpoint.clone().or(t.compute.clone()).unwrap_or_else(|| "*".into()),
                t.expires_at.clone().unwrap_or_else(|| "never".into()),
                if t.revoked { "revoked".into() } else { "active".into() },
            ]
        })
        .collect();
    print!("{}", table(&["ID", "KIND", "ROLE", "SCOPE", "EXPIRES", "STATE"], &rows));
    Ok(())
}

pub async fn token_revoke(client: &Client, id: &str) -> anyhow::Result<()> {
    client.delete(&format!("/api/v1/tokens/{}", encode(id))).await?;
    println!("Revoked token {id}");
    Ok(())
}

pub async fn compute_list(client: &Client, out: Output) -> anyhow::Result<()> {
    let computes: Vec<Compute> = client.get("/api/v1/computes").await?;
    if out.json {
        return print_json(&computes);
    }
    let rows: Vec<Vec<String>> =
        computes.iter().map(|c| vec![c.name.clone(), c.kind.clone(), c.max_instances.to_string()]).collect();
    print!("{}", table(&["NAME", "KIND", "MAX INSTANCES"], &rows));
    Ok(())
}

pub async fn compute_create(client: &Client, file: &std::path::Path, out: Output) -> anyhow::Result<()> {
    let text = crate::resources::read_yaml(file)?;
    cove_spec::check_untrusted_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let bad = |e: serde_norway::Error| anyhow::anyhow!("{}: {e}", file.display());
    let compute: Compute = match doc.get("type").and_then(|t| t.as_str()) {
        Some("amlcompute") => {
            let spec: cove_api::AmlComputeSpec = serde_norway::from_value(doc).map_err(bad)?;
            client.post("/api/v1/computes", &spec).await?
        }
        Some("slurm") => {
            let spec: cove_api::ComputeSpec = serde_norway::from_value(doc).map_err(bad)?;
            client.post("/api/v1/computes", &spec).await?
        }
        // The control plane names the types it runs.
        _ => client.post("/api/v1/computes", &doc).await?,
    };
    if out.json {
        return print_json(&compute);
    }
    println!("Created compute {} ({}, up to {} nodes)", compute.name, compute.kind, compute.max_instances);
    Ok(())
}

pub async fn compute_show(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let c: Compute = client.get(&format!("/api/v1/computes/{}", encode(name))).await?;
    if out.json {
        return print_json(&c);
    }
    println!("Name:           {}", c.name);
    println!("Type:           {}", c.kind);
    println!("Max instances:  {}", c.max_instances);
    if let Some(a) = &c.aml {
        println!("Size:           {} (recorded; workers run on this host)", a.size.as_deref().unwrap_or("-"));
        println!("Min instances:  {} (workers start per job and end with it)", a.min_instances);
        println!("Idle scale-down: {} s (recorded)", a.idle_time_before_scale_down);
        if let Some(d) = &a.description {
            println!("Description:    {d}");
        }
    }
    if let Some(s) = &c.slurm {
        println!("Partition:      {}", s.partition);
    }
    Ok(())
}

pub async fn compute_delete(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let deleted: serde_json::Value =
        client.json(cove_api::Method::DELETE, &format!("/api/v1/computes/{}", encode(name)), None::<&()>, &[]).await?;
    if out.json {
        return print_json(&deleted);
    }
    println!("Deleted compute {name}");
    Ok(())
}

pub async fn compute_token(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let token: Token = client.post(&format!("/api/v1/computes/{}/token", encode(name)), &serde_json::json!({})).await?;
    if out.json {
        return print_json(&token);
    }
    println!("{}", token.secret.as_deref().unwrap_or(""));
    eprintln!("Created worker credential {} for compute {name}; give it to `cove worker --worker-token`", token.id);
    Ok(())
}

/// Writes a compute's worker credential into a new folder (0700, files 0600), and says how to start
/// a worker with it.
pub async fn compute_credential(
    client: &Client,
    name: &str,
    folder: &std::path::Path,
    out: Output,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(folder)
        .with_context(|| format!("--out {}: cannot create it (it must not exist yet)", folder.display()))?;
    let path = format!("/api/v1/computes/{}/credential", encode(name));
    let credential: cove_api::WorkerCredential = client.post(&path, &serde_json::json!({})).await?;
    let files = [
        ("token", format!("{}\n", credential.token)),
        ("client.pem", credential.certificate.clone()),
        ("client.key", credential.key.clone()),
        ("ca.pem", credential.ca.clone()),
    ];
    for (file, text) in &files {
        write_private(&folder.join(file), text)?;
    }
    if out.json {
        return print_json(&serde_json::json!({
            "compute": credential.compute, "token_id": credential.token_id, "folder": folder,
            "expires_at": credential.expires_at,
        }));
    }
    let d = folder.display();
    println!(
        "Wrote the worker credential of compute {name} to {d} (certificate valid until {})",
        credential.expires_at
    );
    println!("Start a worker there with:");
    println!(
        "  COVE_URL={} COVE_CA_FILE={d}/ca.pem COVE_CLIENT_CERT={d}/client.pem COVE_CLIENT_KEY={d}/client.key \\\n  \
         COVE_WORKER_TOKEN=$(cat {d}/token) cove worker --node NAME --work-dir DIR",
        client.base_url()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn revoke_credential(client: &Client, name: &str, out: Output) -> anyhow::Result<()> {
    let path = format!("/api/v1/computes/{}/credential", encode(name));
    let revoked: cove_api::CredentialRevoked = client.delete_json(&path).await?;
    if out.json {
        return print_json(&revoked);
    }
    println!(
        "Revoked {} worker token(s) and {} client certificate(s) of compute {name}; its workers are refused from now on",
        revoked.tokens, revoked.certificates
    );
    Ok(())
}

pub async fn rotate_certificates(client: &Client, out: Output) -> anyhow::Result<()> {
    let rotated: cove_api::RotatedCertificates =
        client.post("/api/v1/workspace/rotate-certificates", &serde_json::json!({})).await?;
    if out.json {
        return print_json(&rotated);
    }
    let until = &rotated.server_expires_at;
    match &rotated.server_certificate_from {
        Some(file) => println!(
            "The listeners serve {file} as it is now, valid until {until}; open connections keep the one they had"
        ),
        None => println!("The listeners have a new certificate, valid until {until}; open connections keep theirs"),
    }
    for c in &rotated.computes {
        println!("Compute {c}: new worker certificate; running workers keep theirs until it expires");
    }
    Ok(())
}

pub async fn audit_list(client: &Client, since: Option<&str>, out: Output) -> anyhow::Result<()> {
    let path = match since {
        Some(s) => format!("/api/v1/audit?since={}", encode(s)),
        None => "/api/v1/audit".into(),
    };
    let entries: Vec<AuditEntry> = client.get(&path).await?;
    if out.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![e.time.clone(), e.principal.clone(), e.source.clone(), e.action.clone(), e.outcome.clone()])
        .collect();
    print!("{}", table(&["TIME", "PRINCIPAL", "SOURCE", "ACTION", "OUTCOME"], &rows));
    Ok(())
}

pub async fn diagnose(client: &Client, out: Output) -> anyhow::Result<i32> {
    let checks: Vec<Check> = client.get("/api/v1/workspace/diagnose").await?;
    if out.json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            println!("{:<4} {}: {}", c.status.to_uppercase(), c.name, c.detail);
            if let (Some(fix), true) = (&c.fix, c.status != "ok") {
                println!("     fix: {fix}");
            }
        }
    }
    Ok(if checks.iter().any(|c| c.status == "fail") {
        cove_api::exit_code::JOB_FAILED
    } else {
        cove_api::exit_code::OK
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_have_units() {
        assert_eq!(super::parse_duration("90s").unwrap(), 90);
        assert_eq!(super::parse_duration("15m").unwrap(), 900);
        assert_eq!(super::parse_duration("2d").unwrap(), 172_800);
        assert!(super::parse_duration("0h").is_err());
        assert!(super::parse_duration("h").is_err());
        assert!(super::parse_duration("3w").unwrap_err().to_string().contains("unknown unit"));
    }
}

/// Reads a secret from a file that only its owner can read; a world- or group-readable file is refused.
pub fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("failed to read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others; make it readable only by its owner (chmod 600)", path.display());
    }
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// A datastore's YAML, in the reference's datastore schema where it has one: `type: azure_blob`
/// (`account_name`, `container_name`, `endpoint` (the storage suffix), `protocol`, `credentials`),
/// `type: azure_data_lake_gen2` (`filesystem` for the container), and Cove's `type: s3` (`endpoint`,
/// `bucket`, `region`, `access_key_id`, `secret_access_key_file`), `type: gcs` (`bucket`, `endpoint`,
/// `credentials.service_account_key_file`) and `type: local` (a folder `path`).
/// Cove's `account_url` reaches an Azure account by address. Secrets come from files readable only by
/// their owner, or inline from a YAML file that is itself readable only by its owner.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DatastoreYaml {
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default, rename = "tags")]
    _tags: Option<serde_norway::Value>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key_file: Option<String>,
    #[serde(default)]
    account_name: Option<String>,
    #[serde(default)]
    container_name: Option<String>,
    #[serde(default)]
    filesystem: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    account_url: Option<String>,
    #[serde(default)]
    credentials: Option<CredentialsYaml>,
}

/// `credentials:` of a datastore: an Azure account key or SAS, or a Google service account's key file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsYaml {
    #[serde(default)]
    account_key: Option<String>,
    #[serde(default)]
    sas_token: Option<String>,
    #[serde(default)]
    account_key_file: Option<String>,
    #[serde(default)]
    sas_token_file: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    service_account_key_file: Option<String>,
}

pub fn datastore_from_yaml(file: &std::path::Path) -> anyhow::Result<CreateDatastore> {
    let text = crate::resources::read_yaml(file)?;
    cove_spec::check_untrusted_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let y: DatastoreYaml = serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    let field = |name: &str, v: Option<String>| {
        v.ok_or_else(|| anyhow::anyhow!("{}: field `{name}`: required for type: {}", file.display(), y.kind))
    };
    match y.kind.as_str() {
        "local" => {
            let path = field("path", y.path.clone())?;
            // A relative folder is relative to the YAML, as every path in the reference's YAML is.
            let path = std::path::absolute(base.join(&path))?.display().to_string();
            Ok(CreateDatastore { name: y.name, kind: "local".into(), path: Some(path), ..Default::default() })
        }
        "s3" => {
            let secret_file = base.join(field("secret_access_key_file", y.secret_access_key_file.clone())?);
            Ok(CreateDatastore {
                name: y.name.clone(),
                kind: "s3".into(),
                endpoint: field("endpoint", y.endpoint.clone())?,
                bucket: field("bucket", y.bucket.clone())?,
                region: y.region.clone(),
                access_key_id: field("access_key_id", y.access_key_id.clone())?,
                secret_access_key: read_secret_file(&secret_file)?,
                ..Default::default()
            })
        }
        "azure_blob" | "azure_data_lake_gen2" => {
            let container = if y.kind == "azure_blob" {
                field("container_name", y.container_name.clone())?
            } else {
                field("filesystem", y.filesystem.clone())?
            };
            let creds = y.credentials.as_ref().ok_or_else(|| {
                anyhow::anyhow!("{}: field `credentials`: an account key or a SAS token is required", file.display())
            })?;
            if creds.tenant_id.is_some() || creds.client_id.is_some() || creds.client_secret.is_some() {
                anyhow::bail!(
                    "{}: field `credentials`: service principal credentials are not supported: a private workspace \
                     cannot reach Microsoft Entra ID; use account_key_file or sas_token_file",
                    file.display()
                );
            }
            let inline = |value: &Option<String>, key: &str| -> anyhow::Result<Option<String>> {
                let Some(v) = value else { return Ok(None) };
                // An inline secret is only as private as the file it is written in.
                read_secret_file(file).map_err(|e| anyhow::anyhow!("field `credentials.{key}` is inline, but {e}"))?;
                Ok(Some(v.trim().to_string()))
            };
            let from_file = |path: &Option<String>| -> anyhow::Result<Option<String>> {
                path.as_ref().map(|p| read_secret_file(&base.join(p))).transpose()
            };
            let account_key = inline(&creds.account_key, "account_key")?.or(from_file(&creds.account_key_file)?);
            let sas_token = inline(&creds.sas_token, "sas_token")?.or(from_file(&creds.sas_token_file)?);
            if account_key.is_none() == sas_token.is_none() {
                anyhow::bail!(
                    "{}: field `credentials`: give exactly one of account_key_file or sas_token_file",
                    file.display()
                );
            }
            Ok(CreateDatastore {
                name: y.name.clone(),
                kind: y.kind.clone(),
                endpoint: y.endpoint.clone().unwrap_or_else(|| "core.windows.net".into()),
                account_name: Some(field("account_name", y.account_name.clone())?),
                container_name: Some(container),
                account_url: y.account_url.clone(),
                protocol: y.protocol.clone(),
                account_key,
                sas_token,
                ..Default::default()
            })
        }
        "gcs" => {
            let key_file =
                y.credentials.as_ref().and_then(|c| c.service_account_key_file.clone()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: field `credentials.service_account_key_file`: required for type: gcs",
                        file.display()
                    )
                })?;
            Ok(CreateDatastore {
                name: y.name.clone(),
                kind: "gcs".into(),
                endpoint: y.endpoint.clone().unwrap_or_default(),
                bucket: field("bucket", y.bucket.clone())?,
                service_account_key: Some(read_secret_file(&base.join(key_file))?),
                ..Default::default()
            })
        }
        "azure_file" | "azure_data_lake_gen1" => anyhow::bail!(
            "{}: field `type`: `{}` datastores are not supported (azure_blob, azure_data_lake_gen2, gcs, s3, local)",
            file.display(),
            y.kind
        ),
        other => anyhow::bail!(
            "{}: field `type`: `{other}` is not a datastore type (azure_blob, azure_data_lake_gen2, gcs, s3, local)",
            file.display()
        ),
    }
}

pub async fn datastore_create(client: &Client, req: &CreateDatastore, out: Output) -> anyhow::Result<()> {
    let ds: Datastore = client.post("/api/v1/datastores", req).await?;
    if out.json {
        return print_json(&ds);
    }
    match &ds.endpoint {
        Some(endpoint) => println!("Created datastore {} ({} at {endpoint})", ds.name, ds.root),
        None => println!("Created datastore {} (the folder {})", ds.name, ds.root),
    }
    Ok(())
}

pub async fn datastore_list(client: &Client, out: Output) -> anyhow::Result<()> {
    let list: Vec<Datastore> = client.get("/api/v1/datastores").await?;
    if out.json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| vec![d.name.clone(), d.kind.clone(), d.root.clone(), d.endpoint.clone().unwrap_or_else(|| "-".into())])
        .collect();
    print!("{}", table(&["NAME", "KIND", "ROOT", "ENDPOINT"], &rows));
    Ok(())
}
