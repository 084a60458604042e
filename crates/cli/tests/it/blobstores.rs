//! Azure Blob and ADLS Gen2 datastores against Azurite, the Azure Storage emulator, on loopback: each
//! reached only through its private endpoint, read and written by jobs, and publishing nothing when
//! the store stalls in the middle of a job.

use crate::support::{kill, Project, Workspace, LIST_SCRIPT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The emulator's published development account.
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    port: u16,
    /// The CA of the emulator's certificate, when it serves HTTPS.
    ca: Option<PathBuf>,
    _data: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        Self::start_with_tls(None)
    }

    /// Starts the emulator; with `tls` (a certificate, its key and the CA that issued it) it serves HTTPS.
    fn start_with_tls(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Azurite {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/azurite/node_modules/.bin/azurite-blob");
        assert!(bin.exists(), "{} is missing: run scripts/setup", bin.display());
        let data = tempfile::tempdir().unwrap();
        let port = crate::support::free_port();
        let mut command = Command::new(bin);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
            .arg("--location")
            .arg(data.path());
        if let Some((cert, key, _)) = &tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        crate::support::wait_for_listener(port, "Azurite");
        Azurite { child, port, ca: tls.map(|(_, _, ca)| ca), _data: data }
    }

    fn account_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Runs Python with the Azure SDK against the emulator: `service` is a BlobServiceClient.
    fn python(&self, code: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import sys\nfrom azure.storage.blob import *\nfrom datetime import datetime, timedelta, timezone\n\
             service = BlobServiceClient('{}', credential={{'account_name': '{ACCOUNT}', 'account_key': '{ACCOUNT_KEY}'}}, \
             connection_verify={})\n",
            self.account_url(),
            self.ca.as_ref().map_or("True".to_string(), |ca| format!("{:?}", ca.display().to_string()))
        );
        let out = Command::new("python3").arg("-c").arg(prelude + code).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn create_container(&self, name: &str) {
        self.python("service.create_container(sys.argv[1])", &[name]);
    }

    fn blob_names(&self, container: &str) -> Vec<String> {
        let out = self.python(
            "print('\\n'.join(b.name for b in service.get_container_client(sys.argv[1]).list_blobs()))",
            &[container],
        );
        out.lines().map(str::to_string).collect()
    }

    /// An account SAS allowing everything for a day.
    fn sas(&self) -> String {
        let code = format!(
            "print(generate_account_sas('{ACCOUNT}', '{ACCOUNT_KEY}', ResourceTypes(service=True, container=True, object=True), \
             AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True), \
             datetime.now(timezone.utc) + timedelta(days=1)))"
        );
        self.python(&code, &[]).trim().to_string()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16) -> String {
    format!(
        "networks:\n  - name: workspace\n    address_space: [127.0.0.0/8]\nprivate_endpoints:\n  - name: api\n    service: api\n    \
         address: 127.0.0.1:0\n    network: workspace\n  - name: blob-pe\n    service: 'datastore:blob'\n    address: 127.0.0.1:{port}\n    \
         network: workspace\n  - name: lake-pe\n    service: 'datastore:lake2'\n    address: 127.0.0.1:{port}\n    network: workspace\n"
    )
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The reference's datastore YAML for each type, with Cove's `account_url` to reach the emulator by address.
fn yaml(kind: &str, name: &str, container: &str, account_url: &str, credential: &str) -> String {
    let container_field = if kind == "azure_blob" { "container_name" } else { "filesystem" };
    format!(
        "$schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json\nname: {name}\ntype: {kind}\n\
         description: test store\naccount_name: {ACCOUNT}\n{container_field}: {container}\nendpoint: core.windows.net\n\
         protocol: http\naccount_url: {account_url}\ncredentials:\n  {credential}\n"
    )
}

#[test]
fn azure_blob_and_adls_gen2_datastores_through_their_private_endpoints() {
    let azurite = Azurite::start();
    azurite.create_container("blobdata");
    azurite.create_container("lakefs");
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.yml");
    std::fs::write(&network, config(azurite.port)).unwrap();
    let ws = Workspace::start_with(&["--config", &network.display().to_string()], &[]);
    let key = secret_file(dir.path(), "account.key", ACCOUNT_KEY);
    let sas = secret_file(dir.path(), "account.sas", &azurite.sas());
    let write = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = azurite.account_url();
    let elsewhere = format!("http://127.0.0.2:{}/{ACCOUNT}", azurite.port);
    let key_line = format!("account_key_file: {}", key.display());
    let sas_line = format!("sas_token_file: {}", sas.display());

    // Refused: a key readable by others, an address that is not the private endpoint, an inline key
    // in a YAML others can read, no private endpoint at all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let blob = write("blob.yml", &yaml("azure_blob", "blob", "blobdata", &good, &key_line));
    ws.cove(&["datastore", "create", "-f", &blob]).fails_with(2, "is readable by others");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let outside = write("outside.yml", &yaml("azure_blob", "blob", "blobdata", &elsewhere, &key_line));
    ws.cove(&["datastore", "create", "-f", &outside])
        .fails_with(2, &format!("account_url: `{elsewhere}` is not datastore `blob`'s private endpoint blob-pe"));
    let inline =
        write("inline.yml", &yaml("azure_blob", "blob", "blobdata", &good, &format!("account_key: {ACCOUNT_KEY}")));
    std::fs::set_permissions(&inline, std::fs::Permissions::from_mode(0o644)).unwrap();
    ws.cove(&["datastore", "create", "-f", &inline]).fails_with(2, "field `credentials.account_key` is inline, but");
    let unnamed = write("unnamed.yml", &yaml("azure_blob", "nope", "blobdata", &good, &key_line));
    ws.cove(&["datastore", "create", "-f", &unnamed]).fails_with(2, "is not a configured private endpoint");
    let principal = write("sp.yml", &yaml("azure_data_lake_gen2", "lake2", "lakefs", &good, "client_id: x"));
    ws.cove(&["datastore", "create", "-f", &principal])
        .fails_with(2, "service principal credentials are not supported");

    // Created: an account key for the blob container, an account SAS for the ADLS Gen2 filesystem.
    ws.cove(&["datastore", "create", "-f", &blob]).ok();
    let lake = write("lake.yml", &yaml("azure_data_lake_gen2", "lake2", "lakefs", &good, &sas_line));
    ws.cove(&["datastore", "create", "-f", &lake]).ok();
    let list = ws.cove(&["--json", "datastore", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list:#}");
    assert!(!list.to_string().contains(ACCOUNT_KEY) && !list.to_string().contains("sig="), "no secret is shown");
    let shown = ws.cove(&["datastore", "show", "-n", "lake2"]).ok().stdout.clone();
    assert!(shown.contains("abfss://lakefs@devstoreaccount1.dfs.core.windows.net"), "{shown}");

    let p = Project::new(ws.dir.path(), "azstores", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    // Scores slowly enough that the store can be stopped after the job is accepted, before it publishes.
    let slow = LIST_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):\n    import time; time.sleep(1.5)");
    let slow = Project::new(ws.dir.path(), "azslow", &slow, "mini_batch_size: 4");
    slow.deploy(&ws);
    for (store, container) in [("blob", "blobdata"), ("lake2", "lakefs")] {
        for i in 0..3 {
            let path = format!("/api/v1/datastores/{store}/files/in/file-{i:03}.txt");
            let (s, body) = ws.http_bytes("PUT", &path, format!("{i}\n"));
            assert_eq!(s, 201, "{body}");
        }
        assert_eq!(azurite.blob_names(container), ["in/file-000.txt", "in/file-001.txt", "in/file-002.txt"]);
        let input = format!("azureml://datastores/{store}/paths/in");
        let output = format!("azureml://datastores/{store}/paths/out");
        let run = ws.cove(&["--json", "endpoint", "invoke", "azstores", "--input", &input, "--output-path", &output]);
        let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
        assert_eq!(job["status"], "Completed", "{job:#}");
        // A store reached with its account key signs a URL per file and workers read straight from it;
        // one reached with a SAS cannot sign, so its files come through the control plane.
        let route = if store == "blob" { "direct from the store" } else { "through the control plane" };
        for a in job["attempts"].as_array().unwrap() {
            assert_eq!(a["isolation"]["inputs"], route, "{a}");
        }
        assert!(azurite.blob_names(container).contains(&"out/predictions.csv".to_string()));
        let dl = dir.path().join(format!("dl-{store}"));
        ws.cove(&["job", "download", job["name"].as_str().unwrap(), "--download-path", &dl.display().to_string()]).ok();
        let predictions = std::fs::read_to_string(dl.join("named-outputs/score/predictions.csv")).unwrap();
        assert_eq!(predictions, "file-000.txt 0\nfile-001.txt 2\nfile-002.txt 4\n");

        // The store stalls while the output is being published: the job is canceled and publishes nothing.
        let stalled = format!("azureml://datastores/{store}/paths/stalled");
        let inputs = slow.inputs(4).display().to_string();
        let run = ws.cove(&["--json", "endpoint", "invoke", "azslow", "--input", &inputs, "--output-path", &stalled]);
        kill(azurite.child.id(), "STOP");
        let name = run.ok().json()["name"].as_str().unwrap().to_string();
        ws.wait_status(&name, "Finalizing");
        ws.cove(&["job", "cancel", &name]).ok();
        kill(azurite.child.id(), "CONT");
        assert_eq!(ws.wait_job(&name)["status"], "Canceled");
        let names = azurite.blob_names(container);
        assert!(!names.iter().any(|n| n.starts_with("stalled/")), "a canceled job publishes nothing: {names:?}");
    }
    // A URL is signed for one file: Azurite, which checks signatures, serves that file with it and
    // refuses any other. (The test takes a lease as a worker of the `local` compute would.)
    let held = Project::new(ws.dir.path(), "azsign", crate::support::SLEEPER, "mini_batch_size: 1");
    held.deploy(&ws);
    let run = ws.cove(&["--json", "endpoint", "invoke", "azsign", "--input", "azureml://datastores/blob/paths/in"]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    let lease = ws.lease_as_local_worker(&job);
    let file = lease["files"][0].as_str().unwrap().to_string();
    let url = lease["signed_inputs"][0].as_str().unwrap_or_else(|| panic!("no signed URL: {lease}")).to_string();
    let other = ["file-000.txt", "file-001.txt", "file-002.txt"].into_iter().find(|f| *f != file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let get =
        |u: &str| rt.block_on(async { crate::support::plain_http().get(u).send().await.unwrap().status().as_u16() });
    assert_eq!(get(&url), 200, "the URL reads its file {file}");
    let forged = url.replace(&file, other);
    assert_ne!(forged, url);
    assert_eq!(get(&forged), 403, "a URL signed for {file} reads {other}");
    ws.cove(&["job", "cancel", &job]).ok();
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(diag.stdout.contains("OK   datastore blob: reached through its private endpoint"), "{}", diag.stdout);
    assert!(diag.stdout.contains("OK   datastore lake2: reached through its private endpoint"), "{}", diag.stdout);
}

/// A store served over HTTPS is verified against the CA its private endpoint names (`ca_file`), by
/// the control plane and by workers reading straight from it; without that CA, the store's
/// certificate is refused.
#[test]
fn an_https_store_is_verified_against_the_ca_of_its_private_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = crate::support::tls_files(dir.path(), "store");
    let azurite = Azurite::start_with_tls(Some((tls.cert, tls.key, tls.ca)));
    azurite.create_container("secure");
    let network = crate::support::https_store_network(dir.path(), "blob", azurite.port);
    let ws = Workspace::start_with(&["--config", &network.display().to_string()], &[]);
    let key = secret_file(dir.path(), "account.key", ACCOUNT_KEY);
    let key_line = format!("account_key_file: {}", key.display());
    let url = azurite.account_url();
    assert!(url.starts_with("https://"), "{url}");
    // Without the CA, the store's certificate is not trusted: creation fails, saying why.
    let plain = file(
        "plain.yml",
        &yaml("azure_blob", "plain", "secure", &url, &key_line).replace("protocol: http", "protocol: https"),
    );
    let refused = ws.cove(&["datastore", "create", "-f", &plain.display().to_string()]);
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("the store's certificate is not issued by the CA this client trusts; name the CA")
            && refused.stderr.contains("with ca_file on the store's private endpoint"),
        "{}",
        refused.stderr
    );

    let blob = file(
        "blob.yml",
        &yaml("azure_blob", "blob", "secure", &url, &key_line).replace("protocol: http", "protocol: https"),
    );
    ws.cove(&["datastore", "create", "-f", &blob.display().to_string()]).ok();
    for i in 0..3 {
        let (s, body) =
            ws.http_bytes("PUT", &format!("/api/v1/datastores/blob/files/in/file-{i:03}.txt"), format!("{i}\n"));
        assert_eq!(s, 201, "{body}");
    }
    let p = Project::new(ws.dir.path(), "secure", LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(&ws);
    let (input, output) = ("azureml://datastores/blob/paths/in", "azureml://datastores/blob/paths/out");
    let run = ws.cove(&["--json", "endpoint", "invoke", "secure", "--input", input, "--output-path", output]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    // The workers read straight from the store over HTTPS, verifying it with the CA the lease carried.
    for a in job["attempts"].as_array().unwrap() {
        assert_eq!(a["isolation"]["inputs"], "direct from the store", "{a}");
    }
    assert!(azurite.blob_names("secure").contains(&"out/predictions.csv".to_string()));
}
