//! Google Cloud Storage datastores against gcp-storage-emulator, a GCS API server, on loopback: reached
//! only through their private endpoint, read and written by jobs, and publishing nothing when the store
//! stalls in the middle of a job; and over HTTPS, verified against their private endpoint's CA.

use crate::support::{kill, ChildServer, Project, Workspace, LIST_SCRIPT};
use std::path::{Path, PathBuf};
use std::process::Command;

struct GcsServer(ChildServer);

impl GcsServer {
    /// Starts the server with `bucket` made; `scripts/setup` installs it.
    fn start(bucket: &str) -> GcsServer {
        let port = crate::support::free_port();
        let mut command = Command::new("python3");
        command.args(["-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--in-memory", "-q"]).args([
            "--port",
            &port.to_string(),
            "--default-bucket",
            bucket,
        ]);
        GcsServer(ChildServer::start(&mut command, port, "gcp-storage-emulator (run scripts/setup)"))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The names of the bucket's objects, listed by the JSON API.
    fn object_names(&self, bucket: &str) -> Vec<String> {
        let code = "import json, sys, urllib.request\n\
                    page = json.load(urllib.request.urlopen(sys.argv[1]))\n\
                    print('\\n'.join(sorted(o['name'] for o in page.get('items', []))))";
        let url = format!("{}/storage/v1/b/{bucket}/o", self.endpoint());
        let out = Command::new("python3").args(["-c", code, &url]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
    }
}

/// A service account key file, as Google issues them, with a fresh RSA key, readable only by its owner.
fn service_account_key(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "scoring",
        "private_key_id": "0123abcd",
        "private_key": String::from_utf8(out.stdout).unwrap(),
        "client_email": "batch@scoring.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, key.to_string()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn yaml(name: &str, bucket: &str, endpoint: &str, key: &Path) -> String {
    format!(
        "name: {name}\ntype: gcs\ndescription: scoring data\nbucket: {bucket}\nendpoint: {endpoint}\n\
         credentials:\n  service_account_key_file: {}\n",
        key.display()
    )
}

/// Uploads three files into datastore `gcsdata` through the API, scores them with a job of a new
/// endpoint whose workers read them straight from the store, and checks the published output.
fn score_through(ws: &Workspace, server: &GcsServer, bucket: &str, endpoint: &str, dir: &Path) {
    for i in 0..3 {
        let (s, body) =
            ws.http_bytes("PUT", &format!("/api/v1/datastores/gcsdata/files/in/file-{i:03}.txt"), format!("{i}\n"));
        assert_eq!(s, 201, "{body}");
    }
    assert_eq!(server.object_names(bucket), ["in/file-000.txt", "in/file-001.txt", "in/file-002.txt"]);
    let p = Project::new(ws.dir.path(), endpoint, LIST_SCRIPT, "mini_batch_size: 2");
    p.deploy(ws);
    let (input, output) = ("azureml://datastores/gcsdata/paths/in", "azureml://datastores/gcsdata/paths/out");
    let run = ws.cove(&["--json", "endpoint", "invoke", endpoint, "--input", input, "--output-path", output]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    // The service account's key signs a URL per file, and workers read straight from the store.
    for a in job["attempts"].as_array().unwrap() {
        assert_eq!(a["isolation"]["inputs"], "direct from the store", "{a}");
    }
    assert!(server.object_names(bucket).contains(&"out/predictions.csv".to_string()));
    let dl = dir.join(format!("{endpoint}-download"));
    ws.cove(&["job", "download", job["name"].as_str().unwrap(), "--download-path", &dl.display().to_string()]).ok();
    let predictions = std::fs::read_to_string(dl.join("named-outputs/score/predictions.csv")).unwrap();
    assert_eq!(predictions, "file-000.txt 0\nfile-001.txt 2\nfile-002.txt 4\n");
}

#[test]
fn gcs_datastores_through_their_private_endpoint() {
    let server = GcsServer::start("scoring-data");
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.yml");
    std::fs::write(
        &network,
        format!(
            "networks:\n  - name: workspace\n    address_space: [127.0.0.0/8]\nprivate_endpoints:\n  - name: api\n    service: api\n    \
             address: 127.0.0.1:0\n    network: workspace\n  - name: gcs-pe\n    service: 'datastore:gcsdata'\n    \
             address: 127.0.0.1:{}\n    network: workspace\n",
            server.port()
        ),
    )
    .unwrap();
    let ws = Workspace::start_with(&["--config", &network.display().to_string()], &[]);
    let key = service_account_key(dir.path());
    let write = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = server.endpoint();

    // Refused: a key readable by others, an address that is not the private endpoint, a datastore
    // with no private endpoint, a bucket the store does not have, a key that is not a service account's.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let gcs = write("gcs.yml", &yaml("gcsdata", "scoring-data", &good, &key));
    ws.cove(&["datastore", "create", "-f", &gcs]).fails_with(2, "is readable by others");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = format!("http://127.0.0.2:{}", server.port());
    let outside = write("outside.yml", &yaml("gcsdata", "scoring-data", &elsewhere, &key));
    ws.cove(&["datastore", "create", "-f", &outside])
        .fails_with(2, &format!("endpoint: `{elsewhere}` is not datastore `gcsdata`'s private endpoint gcs-pe"));
    let unnamed = write("unnamed.yml", &yaml("nope", "scoring-data", &good, &key));
    ws.cove(&["datastore", "create", "-f", &unnamed]).fails_with(2, "is not a configured private endpoint");
    let google = write("google.yml", &yaml("gcsdata", "scoring-data", "https://storage.googleapis.com", &key));
    ws.cove(&["datastore", "create", "-f", &google]).fails_with(
        2,
        "endpoint: `https://storage.googleapis.com` is not datastore `gcsdata`'s private endpoint gcs-pe",
    );
    for bad in ["..", "a", "Upper-Case", "x/../y"] {
        let named = write("bad.yml", &yaml("gcsdata", bad, &good, &key));
        ws.cove(&["datastore", "create", "-f", &named]).fails_with(2, &format!("bucket: `{bad}` is not a bucket name"));
    }
    let missing = write("missing.yml", &yaml("gcsdata", "no-such-bucket", &good, &key));
    ws.cove(&["datastore", "create", "-f", &missing]).fails_with(2, "bucket `no-such-bucket` at");
    let user_key = dir.path().join("user.json");
    std::fs::write(&user_key, std::fs::read_to_string(&key).unwrap().replace("service_account", "authorized_user"))
        .unwrap();
    std::fs::set_permissions(&user_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let user = write("user.yml", &yaml("gcsdata", "scoring-data", &good, &user_key));
    ws.cove(&["datastore", "create", "-f", &user])
        .fails_with(2, "credentials.service_account_key_file: `type` is `authorized_user`, not `service_account`");
    let keyless =
        write("keyless.yml", &yaml("gcsdata", "scoring-data", &good, &key).replace("service_account_key_file", "x"));
    ws.cove(&["datastore", "create", "-f", &keyless]).fails_with(2, "unknown field `x`");
    assert_eq!(ws.cove(&["--json", "datastore", "list"]).ok().json().as_array().unwrap().len(), 1, "none was made");

    ws.cove(&["datastore", "create", "-f", &gcs]).ok();
    let list = ws.cove(&["--json", "datastore", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    assert!(!list.to_string().contains("PRIVATE KEY"), "no secret is shown: {list:#}");
    let shown = ws.cove(&["datastore", "show", "-n", "gcsdata"]).ok().stdout.clone();
    assert!(shown.contains("gs://scoring-data"), "{shown}");

    score_through(&ws, &server, "scoring-data", "gcsjob", dir.path());

    // The store stalls while the output is being published: the job is canceled and publishes nothing.
    let slow = LIST_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):\n    import time; time.sleep(1.5)");
    let slow = Project::new(ws.dir.path(), "gcsslow", &slow, "mini_batch_size: 4");
    slow.deploy(&ws);
    let inputs = slow.inputs(4).display().to_string();
    let stalled = "azureml://datastores/gcsdata/paths/stalled";
    let run = ws.cove(&["--json", "endpoint", "invoke", "gcsslow", "--input", &inputs, "--output-path", stalled]);
    kill(server.0.child.id(), "STOP");
    let name = run.ok().json()["name"].as_str().unwrap().to_string();
    ws.wait_status(&name, "Finalizing");
    ws.cove(&["job", "cancel", &name]).ok();
    kill(server.0.child.id(), "CONT");
    assert_eq!(ws.wait_job(&name)["status"], "Canceled");
    let names = server.object_names("scoring-data");
    assert!(!names.iter().any(|n| n.starts_with("stalled/")), "a canceled job publishes nothing: {names:?}");

    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(diag.stdout.contains("OK   datastore gcsdata: reached through its private endpoint"), "{}", diag.stdout);
    // A datastore a job's output names cannot be deleted; one nothing references can.
    ws.cove(&["datastore", "delete", "-n", "gcsdata"]).fails_with(2, "datastore `gcsdata` is in use");
}

/// A TLS-terminating reverse proxy in front of the emulator, as a private endpoint serving a store over
/// HTTPS would be. The emulator serves plain HTTP and names its upload sessions with its own `http://`
/// address, so the proxy gives them its own `https://` one (as a proxy's `proxy_redirect` does).
const TLS_PROXY: &str = r#"
import http.client, http.server, socketserver, ssl, sys

listen, upstream, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
inside, outside = f"http://127.0.0.1:{upstream}", f"https://127.0.0.1:{listen}"
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

class Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def forward(self):
        data = self.body()
        conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in HOP or k.lower() == "content-length":
                continue
            if k.lower() == "location":
                # The emulator names the session after the Host it was asked as (the proxy's, or its own).
                v = v.replace(inside, outside).replace(f"http://127.0.0.1:{listen}", outside)
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = forward

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", listen), Forward)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// Starts [`TLS_PROXY`] in front of the emulator on `upstream`, serving `tls`'s certificate.
fn tls_proxy(upstream: u16, tls: &crate::support::TlsFiles) -> ChildServer {
    let port = crate::support::free_port();
    let mut command = Command::new("python3");
    command.args(["-c", TLS_PROXY, &port.to_string(), &upstream.to_string()]).args([&tls.cert, &tls.key]);
    ChildServer::start(&mut command, port, "the TLS proxy")
}

/// A GCS store served over HTTPS is verified against the CA its private endpoint names (`ca_file`), by
/// the control plane and by workers reading straight from it through signed URLs; without that CA, its
/// certificate is refused.
#[test]
fn a_gcs_store_over_https_is_verified_against_the_ca_of_its_private_endpoint() {
    let server = GcsServer::start("secure-data");
    let dir = tempfile::tempdir().unwrap();
    let tls = crate::support::tls_files(dir.path(), "store");
    let proxy = tls_proxy(server.port(), &tls);
    let network = crate::support::https_store_network(dir.path(), "gcsdata", proxy.port);
    let ws = Workspace::start_with(&["--config", &network.display().to_string()], &[]);
    let key = service_account_key(dir.path());
    let url = format!("https://127.0.0.1:{}", proxy.port);
    // Without the CA, the store's certificate is not trusted: creation fails, saying why.
    let yml = |name: &str, store: &str| {
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, yaml(name, store, &url, &key)).unwrap();
        path.display().to_string()
    };
    let refused = ws.cove(&["datastore", "create", "-f", &yml("plain", "secure-data")]);
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("the store's certificate is not issued by the CA this client trusts"),
        "{}",
        refused.stderr
    );
    ws.cove(&["datastore", "create", "-f", &yml("gcsdata", "secure-data")]).ok();
    // The control plane uploads and publishes through resumable sessions the proxy named, and workers
    // read over HTTPS, verifying the store with the CA the lease carried.
    score_through(&ws, &server, "secure-data", "securejob", dir.path());
    let diag = ws.cove(&["workspace", "diagnose"]);
    assert!(diag.stdout.contains("OK   datastore gcsdata: reached through its private endpoint"), "{}", diag.stdout);
}
