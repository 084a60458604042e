//! Datastores: named object stores through the `object_store` crate, and the URIs that address them.
//!
//! A datastore URI is `azureml://datastores/<name>/paths/<path>` (the reference's form) or
//! `cove://<name>/<path>` (Cove's own). Paths are normalised here, once, and a path that would leave
//! its datastore (`..`, `.`, backslashes, control characters) is refused, so no caller can escape.

pub mod gcs;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a datastore, or a place in one, cannot be used. Each names what is wrong in words a user acts
/// on; none is an internal failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// A URI or path that names no place inside a datastore (or one Cove keeps for itself).
    #[error("{0}")]
    BadPath(String),
    /// A datastore the workspace does not have.
    #[error("datastore `{name}` does not exist (known: {known})")]
    Unknown { name: String, known: String },
    /// A datastore the workspace has but left closed, and why.
    #[error("datastore `{name}` is not open: {why}")]
    Closed { name: String, why: String },
    /// A place that cannot be reached beneath the datastore's root: a link on the way, a name that is
    /// not UTF-8, a file that cannot be read.
    #[error("{0}")]
    Unreachable(String),
    /// A network store's client cannot be built from its credentials or CA.
    #[error("{0}")]
    Client(String),
}

pub type DatastoreResult<T> = Result<T, DatastoreError>;

/// A location inside a named datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPath {
    pub datastore: String,
    /// Normalised, relative, `/`-separated; empty for the datastore's root.
    pub path: String,
}

impl DataPath {
    pub fn uri(&self) -> String {
        format!("azureml://datastores/{}/paths/{}", self.datastore, self.path)
    }

    pub fn object_path(&self) -> ObjectPath {
        object_path_of(&self.path)
    }

    pub fn join(&self, rest: &str) -> DatastoreResult<DataPath> {
        let rest = normalise(rest)?;
        let path = match (self.path.is_empty(), rest.is_empty()) {
            (true, _) => rest,
            (false, true) => self.path.clone(),
            (false, false) => format!("{}/{}", self.path, rest),
        };
        Ok(DataPath { datastore: self.datastore.clone(), path })
    }
}

/// The object path of a datastore-relative path, its characters kept as they are. `Path::from`
/// percent-encodes some (`#`, `%`, `[`, `{`, `<`, ...), which stored an uploaded `report #3.csv` as
/// `report%20%233.csv`-like names and looked up names a listing gave under another key. A normalised
/// path is always accepted by `Path::parse`; anything else keeps the encoding rather than failing.
pub fn object_path_of(rel: &str) -> ObjectPath {
    ObjectPath::parse(rel).unwrap_or_else(|_| ObjectPath::from(rel))
}

/// Reads a file of a local datastore the way nothing in it can redirect (`cove_common::beneath`). Blocking.
pub fn read_local(root: &std::path::Path, rel: &str) -> DatastoreResult<bytes::Bytes> {
    cove_common::beneath::read(root, rel).map_err(DatastoreError::Unreachable)
}

/// The files directly in the folder `rel` of a local datastore, as datastore-relative paths, unsorted;
/// only counted when `keep` is false. The names `object_store`'s listing would give (a name that is not
/// UTF-8 or holds a control character cannot be addressed, and fails the listing; its upload staging
/// files are not listed; a link to a file is listed, and fails its item when read), from one pass over
/// the folder: `object_store` walks every level beneath and calls `stat` three times per file, which
/// made listing a folder of many small files the largest part of planning. Blocking.
pub fn list_local_folder(root: &std::path::Path, rel: &str, keep: bool) -> DatastoreResult<(usize, Vec<String>)> {
    list_folder(root, rel, keep).map_err(DatastoreError::Unreachable)
}

fn list_folder(root: &std::path::Path, rel: &str, keep: bool) -> Result<(usize, Vec<String>), String> {
    let dir = match cove_common::beneath::open_dir(root, rel) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(
                "it is, or lies behind, a symbolic link; a datastore's folders are read without following links".into(),
            )
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => return Err("it leaves its datastore".into()),
        Err(e) => return Err(e.to_string()),
    };
    use std::os::fd::AsRawFd;
    let through = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let (mut count, mut files) = (0, Vec::new());
    for entry in std::fs::read_dir(&through).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!("the file name `{}` is not UTF-8", name.to_string_lossy()));
        };
        if name.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "the file name `{}` holds a control character, and cannot be addressed in a datastore",
                name.escape_debug()
            ));
        }
        if name.split_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let is_file =
            kind.is_file() || (kind.is_symlink() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()));
        if !is_file {
            continue;
        }
        count += 1;
        if keep {
            files.push(if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") });
        }
    }
    Ok((count, files))
}

/// Parses a datastore URI.
///
/// # Errors
/// A message naming the problem: an unknown scheme, a missing datastore name, or a path that escapes.
pub fn parse_uri(uri: &str) -> DatastoreResult<DataPath> {
    parse(uri).map_err(DatastoreError::BadPath)
}

fn parse(uri: &str) -> Result<DataPath, String> {
    // The long form names the subscription, resource group and workspace too: within one workspace
    // those say nothing, so only its datastore and path are used.
    let long = uri
        .strip_prefix("azureml://subscriptions/")
        .and_then(|rest| rest.find("/datastores/").map(|i| &rest[i + 1..]))
        .map(|tail| format!("azureml://{tail}"));
    let uri = long.as_deref().unwrap_or(uri);
    let (datastore, path) = if let Some(rest) = uri.strip_prefix("azureml://datastores/") {
        let (ds, path) =
            rest.split_once("/paths/").or_else(|| rest.strip_suffix("/paths").map(|ds| (ds, ""))).ok_or_else(|| {
                format!("`{uri}` is not a datastore URI: expected azureml://datastores/<datastore>/paths/<path>")
            })?;
        (ds, path)
    } else if let Some(rest) = uri.strip_prefix("cove://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else if uri.starts_with("azureml:") {
        return Err(format!(
            "`{uri}` names a data asset, not a datastore location: data assets are job inputs (azureml:NAME@latest or azureml:NAME:VERSION); here use a datastore URI (azureml://datastores/<datastore>/paths/<path>)"
        ));
    } else {
        return Err(format!(
            "`{uri}` is not a datastore URI: expected azureml://datastores/<datastore>/paths/<path> or cove://<datastore>/<path>"
        ));
    };
    if datastore.is_empty() || datastore.contains(['/', '\\']) {
        return Err(format!("`{uri}` names no datastore"));
    }
    let path = normalised(path).map_err(|e| format!("`{uri}`: {e}"))?;
    Ok(DataPath { datastore: datastore.to_string(), path })
}

/// Normalises a relative path, refusing any segment that could leave its root.
pub fn normalise(path: &str) -> DatastoreResult<String> {
    normalised(path).map_err(DatastoreError::BadPath)
}

fn normalised(path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" => continue,
            "." | ".." => {
                return Err(format!("path segment `{seg}` is not allowed (paths cannot leave their datastore)"))
            }
            s if s.chars().any(|c| c.is_control() || c == '\\') => {
                return Err("paths cannot contain control characters or backslashes".to_string())
            }
            s if s.starts_with(PUBLISHING) => {
                return Err(format!("`{s}`: folders named `{PUBLISHING}…` are where Cove stages the outputs it publishes; no path may name one"))
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// Refuses a write to `rel` under the local datastore folder `root` when a folder on its way is a
/// symbolic link: someone who can write the folder could plant one to send Cove's writes (an upload, a
/// job's output) outside the datastore. Each existing part of the path is looked at without following
/// links; the parts that do not exist yet, Cove creates. Blocking. (A link planted between this look
/// and the write is not seen: the look narrows the window to that moment.)
pub fn refuse_links_on_the_way(root: &std::path::Path, rel: &str) -> DatastoreResult<()> {
    links_on_the_way(root, rel).map_err(DatastoreError::Unreachable)
}

fn links_on_the_way(root: &std::path::Path, rel: &str) -> Result<(), String> {
    let mut at = root.to_path_buf();
    let mut walked = Vec::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        at.push(part);
        walked.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` is a symbolic link; Cove never writes through one into a local datastore",
                    walked.join("/")
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("`{}` cannot be looked at: {e}", walked.join("/"))),
        }
    }
    Ok(())
}

/// How the folder begins, beside a job's output location on a local datastore, where finalizing writes
/// the job's output set before renaming it into place whole (`jobs::finalize`): beside it, so on the
/// same filesystem. No path a caller gives may name one, at any depth.
pub const PUBLISHING: &str = ".cove-publishing";

/// The workspace's datastores, by name. Datastores are added while the control plane runs.
pub struct Datastores {
    stores: std::sync::RwLock<BTreeMap<String, Arc<dyn ObjectStore>>>,
    /// The folders of local datastores, read without following links (`read_local`).
    local_roots: std::sync::RwLock<BTreeMap<String, std::path::PathBuf>>,
    /// Network datastores that can sign short-lived URLs for one file, so workers read straight
    /// from the store without its credentials.
    signers: std::sync::RwLock<BTreeMap<String, Arc<dyn object_store::signer::Signer>>>,
    /// The CA (PEM) each HTTPS datastore's client trusts besides the system's: its private endpoint's.
    cas: std::sync::RwLock<BTreeMap<String, String>>,
    /// Registered datastores left closed at start, with why (`close`).
    closed: std::sync::RwLock<BTreeMap<String, String>>,
    pub default_name: String,
}

/// Credentials of an S3-compatible datastore, kept in a 0600 file beside the state store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct S3Secret {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

/// How an Azure Blob (or ADLS Gen2) datastore is reached, kept in a 0600 file beside the state store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AzureSecret {
    pub account: String,
    pub container: String,
    /// The account's blob service URL.
    pub account_url: String,
    #[serde(default)]
    pub account_key: Option<String>,
    #[serde(default)]
    pub sas_token: Option<String>,
}

/// How a Google Cloud Storage datastore is reached, kept in a 0600 file beside the state store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GcsSecret {
    pub endpoint: String,
    pub bucket: String,
    /// The service account's key file, as JSON.
    pub service_account_key: String,
}

impl Datastores {
    pub fn new(default_name: &str) -> Self {
        Self {
            stores: std::sync::RwLock::new(BTreeMap::new()),
            local_roots: std::sync::RwLock::new(BTreeMap::new()),
            signers: std::sync::RwLock::new(BTreeMap::new()),
            cas: std::sync::RwLock::new(BTreeMap::new()),
            closed: std::sync::RwLock::new(BTreeMap::new()),
            default_name: default_name.to_string(),
        }
    }

    /// Leaves a registered datastore closed: every use of it is refused with `why`.
    pub fn close(&self, name: &str, why: String) {
        self.closed.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), why);
    }

    pub fn insert(&self, name: &str, store: Arc<dyn ObjectStore>) {
        self.stores.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), store);
    }

    /// Adds a datastore backed by a local folder (created if needed).
    pub fn add_local(&self, name: &str, root: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(root)?;
        let fs = LocalFileSystem::new_with_prefix(root).map_err(std::io::Error::other)?;
        self.insert(name, Arc::new(fs));
        self.local_roots.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), root.to_path_buf());
        Ok(())
    }

    /// Adds a network datastore that can also sign URLs for its files.
    pub fn insert_signing<S: ObjectStore + object_store::signer::Signer>(&self, name: &str, store: Arc<S>) {
        self.insert(name, store.clone());
        self.signers.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), store);
    }

    /// The datastore's URL signer, when it has one.
    pub fn signer(&self, name: &str) -> Option<Arc<dyn object_store::signer::Signer>> {
        self.signers.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Forgets a datastore (its files stay where they are).
    pub fn remove(&self, name: &str) {
        self.stores.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.signers.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.cas.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.local_roots.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// A local datastore's folder, when `name` is one.
    pub fn local_root(&self, name: &str) -> Option<std::path::PathBuf> {
        self.local_roots.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Adds an S3-compatible datastore reached at `endpoint`.
    pub fn add_s3(
        &self,
        name: &str,
        endpoint: &str,
        bucket: &str,
        secret: &S3Secret,
        ca: Option<&str>,
    ) -> DatastoreResult<()> {
        self.insert_signing(name, build_s3(endpoint, bucket, secret, ca).map_err(DatastoreError::Client)?);
        self.set_ca(name, ca);
        Ok(())
    }

    fn set_ca(&self, name: &str, ca: Option<&str>) {
        let mut cas = self.cas.write().unwrap_or_else(|p| p.into_inner());
        match ca {
            Some(pem) => cas.insert(name.to_string(), pem.to_string()),
            None => cas.remove(name),
        };
    }

    /// The CA its client trusts for an HTTPS datastore (its private endpoint's), for workers that read
    /// from the store themselves.
    pub fn ca(&self, name: &str) -> Option<String> {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Adds an Azure Blob datastore; one reached with the account key can sign URLs (a SAS cannot).
    pub fn add_azure(&self, name: &str, secret: &AzureSecret, ca: Option<&str>) -> DatastoreResult<()> {
        let store = build_azure(secret, ca).map_err(DatastoreError::Client)?;
        self.set_ca(name, ca);
        if secret.account_key.is_some() {
            self.insert_signing(name, store);
        } else {
            self.insert(name, store);
        }
        Ok(())
    }

    /// Adds a Google Cloud Storage datastore; its service account's key signs URLs too.
    pub fn add_gcs(&self, name: &str, secret: &GcsSecret, ca: Option<&str>) -> DatastoreResult<()> {
        self.insert_signing(name, build_gcs(secret, ca).map_err(DatastoreError::Client)?);
        self.set_ca(name, ca);
        Ok(())
    }

    pub fn get(&self, name: &str) -> DatastoreResult<Arc<dyn ObjectStore>> {
        if let Some(why) = self.closed.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Err(DatastoreError::Closed { name: name.to_string(), why: why.clone() });
        }
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        stores.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = stores.keys().map(String::as_str).collect();
            DatastoreError::Unknown { name: name.to_string(), known: known.join(", ") }
        })
    }
}

/// Builds a client for an S3-compatible store (path-style requests, plain HTTP allowed for endpoints
/// inside the private network); over HTTPS it also trusts `ca`, the CA of the store's private endpoint.
pub fn build_s3(
    endpoint: &str,
    bucket: &str,
    secret: &S3Secret,
    ca: Option<&str>,
) -> Result<Arc<object_store::aws::AmazonS3>, String> {
    let (options, retry) = network_client_options(ca)?;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region(&secret.region)
        .with_access_key_id(&secret.access_key_id)
        .with_secret_access_key(&secret.secret_access_key)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_client_options(options)
        .with_retry(retry)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

/// Client settings every network datastore shares: plain HTTP allowed for endpoints inside the private
/// network, certificates verified (against the system's CAs and `ca`, the private endpoint's own), and a
/// private store that stops answering fails the step in seconds, not minutes.
fn network_client_options(
    ca: Option<&str>,
) -> Result<(object_store::ClientOptions, object_store::RetryConfig), String> {
    let mut options = object_store::ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .with_timeout(std::time::Duration::from_secs(15));
    if let Some(pem) = ca {
        for cert in object_store::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| format!("ca_file: {e}"))? {
            options = options.with_root_certificate(cert);
        }
    }
    let retry = object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    Ok((options, retry))
}

/// Builds a client for an Azure Blob container (an ADLS Gen2 filesystem is one too), addressed
/// path-style under the account URL.
pub fn build_azure(secret: &AzureSecret, ca: Option<&str>) -> Result<Arc<object_store::azure::MicrosoftAzure>, String> {
    let (options, retry) = network_client_options(ca)?;
    let mut builder = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(&secret.account)
        .with_container_name(&secret.container)
        .with_endpoint(secret.account_url.clone())
        .with_allow_http(true)
        .with_client_options(options)
        .with_retry(retry);
    builder = match (&secret.account_key, &secret.sas_token) {
        (Some(key), _) => builder.with_access_key(key),
        (None, Some(sas)) => {
            builder.with_config(object_store::azure::AzureConfigKey::SasKey, sas.trim_start_matches('?'))
        }
        (None, None) => return Err("an account key or a SAS token is required".into()),
    };
    Ok(Arc::new(builder.build().map_err(|e| e.to_string())?))
}

/// Builds a client for a Google Cloud Storage bucket, signed for by its service account.
pub fn build_gcs(secret: &GcsSecret, ca: Option<&str>) -> Result<Arc<gcs::GoogleCloudStorage>, String> {
    let account = gcs::ServiceAccount::from_key_json(&secret.service_account_key)
        .map_err(|e| format!("credentials.service_account_key_file: {e}"))?;
    Ok(Arc::new(gcs::GoogleCloudStorage::new(&secret.endpoint, &secret.bucket, account, ca)?))
}

/// Opens a local folder as an object store, creating it.
pub fn local_store(root: &std::path::Path) -> std::io::Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(root)?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(root).map_err(std::io::Error::other)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_uri_forms_parse_to_the_same_place() {
        let a = parse_uri("azureml://datastores/workspaceblobstore/paths/data/in/").unwrap();
        let b = parse_uri("cove://workspaceblobstore/data//in").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.path, "data/in");
        assert_eq!(a.uri(), "azureml://datastores/workspaceblobstore/paths/data/in");
        let long = "azureml://subscriptions/0000-1111/resourcegroups/my-rg/workspaces/my-ws/datastores/workspaceblobstore/paths/data/in";
        assert_eq!(parse_uri(long).unwrap(), a, "the long form's ids are ignored, its datastore used");
        assert!(parse_uri("azureml://subscriptions/x/resourcegroups/y/workspaces/z/datastores/ws/paths/../e").is_err());
    }

    #[test]
    fn uris_cannot_escape_their_datastore() {
        for bad in [
            "azureml://datastores/ws/paths/../other",
            "cove://ws/a/../../etc",
            "cove://ws/./a",
            "cove://ws/a\\..\\b",
            "cove:///etc/passwd",
            "file:///etc/passwd",
            "/etc/passwd",
            "azureml://datastores/ws/paths/.cove-publishing-job1",
            "cove://ws/azureml/job1/.cove-publishing-job1/x.csv",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad} must be refused");
        }
        // Finalizing's staging folders are named by no caller, at any depth.
        let staging = parse_uri("cove://ws/out/.cove-publishing-j/a").unwrap_err();
        assert!(staging.to_string().contains("no path may name one"), "{staging}");
        assert!(matches!(staging, DatastoreError::BadPath(_)), "{staging:?}");
        assert!(parse_uri("azureml:mydata:1").unwrap_err().to_string().contains("data assets"));
    }
}
