//! Endpoints, deployments and models over the CLI: the Azure ML YAML, its defaults, and bad YAML that
//! must fail with the file, line and field, creating nothing.

use crate::support::{Project, Workspace, LIST_SCRIPT};

#[test]
fn endpoints_are_created_listed_shown_updated_and_deleted() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "crud", LIST_SCRIPT, "");
    let created = ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]);
    created.ok();
    assert!(created.stdout.contains("Scoring URI: https://127.0.0.1:"), "{}", created.stdout);
    // Create is create-or-update, as the reference's is.
    std::fs::write(p.dir.join("endpoint.yml"), "name: crud\ndescription: updated\n").unwrap();
    let again = ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]);
    assert!(again.ok().stdout.contains("Updated endpoint crud"), "{}", again.stdout);
    assert_eq!(ws.cove(&["--json", "endpoint", "show", "crud"]).ok().json()["description"], "updated");
    ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml")]).ok();
    let list = ws.cove(&["endpoint", "list"]);
    assert!(list.ok().stdout.lines().nth(1).unwrap().starts_with("crud "), "{}", list.stdout);
    ws.cove(&["endpoint", "update", "crud", "--set", "defaults.deployment_name=green"])
        .fails_with(2, "deployment `green` does not exist");
    ws.cove(&["endpoint", "update", "crud", "--set", "defaults.deployment_name=blue"]).ok();
    let shown = ws.cove(&["--json", "endpoint", "show", "CRUD"]);
    let ep = shown.ok().json();
    assert_eq!(ep["default_deployment"], "blue");
    assert_eq!(ep["deployments"], serde_json::json!(["blue"]));
    assert_eq!(ep["auth_mode"], "aad_token");
    ws.cove(&["deployment", "delete", "blue", "-e", "crud"]).fails_with(2, "is the default of endpoint `crud`");
    ws.cove(&["endpoint", "delete", "crud", "--yes"]).ok();
    ws.cove(&["endpoint", "show", "crud"]).fails_with(5, "endpoint `crud` does not exist");
}

#[test]
fn deployments_take_both_yaml_forms_with_the_reference_defaults() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "forms", LIST_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let minimal = "name: minimal\nendpoint_name: forms\ntype: model\nmodel:\n  path: model\ncode_configuration:\n  code: code\n  scoring_script: score.py\ncompute: azureml:local\n";
    std::fs::write(p.dir.join("minimal.yml"), minimal).unwrap();
    let legacy = "name: legacy\nendpoint_name: forms\nmodel: azureml:forms-forms-minimal-model:1\ncode_configuration:\n  code: code\n  scoring_script: score.py\ncompute: local\nmini_batch_size: 4\noutput_action: summary_only\nretry_settings:\n  max_retries: 5\n  timeout: PT2M\n";
    std::fs::write(p.dir.join("legacy.yml"), legacy).unwrap();
    let dep = ws.cove(&["--json", "deployment", "create", "-f", &p.file("minimal.yml"), "--set-default"]).ok().json();
    let s = &dep["settings"];
    assert_eq!(
        (s["instance_count"].as_u64(), s["max_concurrency_per_instance"].as_u64(), s["mini_batch_size"].as_u64()),
        (Some(1), Some(1), Some(10))
    );
    assert_eq!(s["output_action"], "append_row");
    assert_eq!(s["output_file_name"], "predictions.csv");
    assert_eq!(
        (s["retry_settings"]["max_retries"].as_u64(), s["retry_settings"]["timeout_secs"].as_u64()),
        (Some(3), Some(30))
    );
    assert_eq!((s["error_threshold"].as_i64(), s["logging_level"].as_str()), (Some(-1), Some("info")));
    assert_eq!(
        dep["model"],
        serde_json::json!({"name": "forms-minimal-model", "version": 1}),
        "an inline model is registered"
    );
    std::fs::write(p.dir.join("legacy.yml"), legacy.replace("forms-forms-minimal-model", "forms-minimal-model"))
        .unwrap();
    let dep = ws.cove(&["--json", "deployment", "create", "-f", &p.file("legacy.yml")]).ok().json();
    assert_eq!(dep["settings"]["mini_batch_size"], 4);
    assert_eq!(dep["settings"]["output_action"], "summary_only");
    assert!(dep["settings"]["output_file_name"].is_null());
    assert_eq!(dep["settings"]["retry_settings"]["timeout_secs"], 120);
    let list = ws.cove(&["deployment", "list", "-e", "forms"]);
    assert!(list.ok().stdout.contains("minimal  yes"), "{}", list.stdout);
    let shown = ws.cove(&["deployment", "show", "legacy", "-e", "forms"]);
    assert!(shown.ok().stdout.contains("retry_settings:               max_retries=5 timeout=120s"), "{}", shown.stdout);
    // Creating the same inline model again registers no new version (its files are unchanged).
    ws.cove(&["deployment", "create", "-f", &p.file("minimal.yml")]).ok();
    let models = ws.cove(&["--json", "model", "list", "--name", "forms-minimal-model"]).ok().json();
    assert_eq!(models.as_array().unwrap().len(), 1);
    let m = ws
        .cove(&[
            "--json",
            "model",
            "create",
            "--name",
            "standalone",
            "--path",
            &p.file("model"),
            "--type",
            "mlflow_model",
        ])
        .ok()
        .json();
    assert_eq!((m["version"].as_u64(), m["model_type"].as_str()), (Some(1), Some("mlflow_model")));
    ws.cove(&["model", "show", "standalone"]).ok();
}

#[test]
fn bad_yaml_names_the_file_line_and_field_and_creates_nothing() {
    let ws = Workspace::start();
    let p = Project::new(ws.dir.path(), "bad", LIST_SCRIPT, "");
    ws.cove(&["endpoint", "create", "-f", &p.file("endpoint.yml")]).ok();
    let write = |name: &str, text: &str| {
        std::fs::write(p.dir.join(name), text).unwrap();
        p.file(name)
    };
    let typo = write("typo.yml", "name: typo\ndescriptoin: x\n");
    ws.cove(&["endpoint", "create", "-f", &typo])
        .fails_with(2, &format!("{typo}:2: field `descriptoin`: unknown field, did you mean `description`?"));
    let base = std::fs::read_to_string(p.dir.join("deployment.yml")).unwrap();
    let zero = write("zero.yml", &base.replace("mini_batch_size: 2", "mini_batch_size: 0"));
    ws.cove(&["deployment", "create", "-f", &zero])
        .fails_with(2, "zero.yml:12: field `settings.mini_batch_size`: must be at least 1");
    let both = write(
        "both.yml",
        &base.replace(
            "  mini_batch_size: 2",
            "  mini_batch_size: 2\n  output_action: summary_only\n  output_file_name: out.csv",
        ),
    );
    ws.cove(&["deployment", "create", "-f", &both]).fails_with(2, "settings.output_file_name");
    let missing_code = write("nocode.yml", &base.replace("code: code", "code: no-such-dir"));
    ws.cove(&["deployment", "create", "-f", &missing_code]).fails_with(2, "field `code_configuration.code`");
    let no_compute = write("nocompute.yml", &base.replace("azureml:local", "azureml:gpu-cluster"));
    ws.cove(&["deployment", "create", "-f", &no_compute])
        .fails_with(2, "compute: `gpu-cluster` does not exist (known: local)");
    std::fs::write(p.dir.join("code/broken.py"), "def init(:\n").unwrap();
    let broken = write("broken.yml", &base.replace("score.py", "broken.py"));
    ws.cove(&["deployment", "create", "-f", &broken]).fails_with(2, "broken.py:1: syntax error");
    std::fs::write(p.dir.join("code/norun.py"), "def init():\n    pass\n").unwrap();
    let norun = write("norun.yml", &base.replace("score.py", "norun.py"));
    ws.cove(&["deployment", "create", "-f", &norun]).fails_with(2, "defines no run()");
    std::fs::write(
        p.dir.join("conda.yml"),
        "dependencies:\n  - python=3.11\n  - pip:\n    - azureml-core\n    - no-such-package-cove\n    - pyyaml\n",
    )
    .unwrap();
    let env = write("env.yml", &format!("{base}environment:\n  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04\n  conda_file: conda.yml\n"));
    ws.cove(&["deployment", "create", "-f", &env])
        .fails_with(2, "environment: this workspace has no package source for environment builds");
    let nested = write(
        "nested.yml",
        &"a:\n".repeat(1).replace("a:\n", &(0..80).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect::<String>()),
    );
    ws.cove(&["endpoint", "create", "-f", &nested]).fails_with(2, "nested.yml");
    let list = ws.cove(&["--json", "deployment", "list", "-e", "bad"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "no bad deployment was created");
    let models = ws.cove(&["--json", "model", "list"]).ok().json();
    assert_eq!(models.as_array().unwrap().len(), 0, "no model was registered by a failed deployment");
}

#[test]
fn the_cli_reaches_a_control_plane_by_url_and_token() {
    let ws = Workspace::start();
    let trust = ws.path().join("tls/trust.pem");
    let run_trusting = |token: &str, ca: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(crate::support::COVE);
        c.args(["--json", "workspace", "show"])
            .env_remove("COVE_WORKSPACE")
            .env_remove("COVE_CA_FILE")
            .env("COVE_URL", &ws.url)
            .env("COVE_TOKEN", token);
        if let Some(ca) = ca {
            c.env("COVE_CA_FILE", ca);
        }
        c.output().unwrap()
    };
    let run = |token: &str| run_trusting(token, Some(&trust));
    // A URL alone is not enough: the client must be told which CA vouches for the control plane.
    let unverified = run_trusting(&ws.token(), None);
    assert_eq!(unverified.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unverified.stderr).contains("no CA to verify it: set COVE_CA_FILE"));
    // A CA that did not issue the control plane's certificate is refused with the reason, never skipped.
    let (_, other) = cove_tls::Authority::create("other", &cove_tls::NameScope::loopback()).unwrap();
    let other_file = ws.dir.path().join("other-ca.pem");
    std::fs::write(&other_file, &other.cert_pem).unwrap();
    let mistrusted = run_trusting(&ws.token(), Some(&other_file));
    assert_eq!(mistrusted.status.code(), Some(4), "{}", String::from_utf8_lossy(&mistrusted.stderr));
    assert!(
        String::from_utf8_lossy(&mistrusted.stderr)
            .contains("the server's certificate is not issued by the CA this client trusts"),
        "{}",
        String::from_utf8_lossy(&mistrusted.stderr)
    );
    // The name is checked too: the same listener reached as the IPv4-mapped IPv6 address is not the
    // address the certificate is for.
    let renamed = ws.url.replace("127.0.0.1", "[::ffff:127.0.0.1]");
    let misnamed = std::process::Command::new(crate::support::COVE)
        .args(["--json", "workspace", "show"])
        .env_remove("COVE_WORKSPACE")
        .env("COVE_URL", &renamed)
        .env("COVE_CA_FILE", &trust)
        .env("COVE_TOKEN", ws.token())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&misnamed.stderr);
    assert!(said.contains("not valid for the address or name this client connected to"), "{said}");
    let ok = run(&ws.token());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(shown["default_datastore"], "workspaceblobstore");
    let refused = run("cove_bad_token");
    assert_eq!(refused.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the token is not valid"));
    let none = std::process::Command::new(crate::support::COVE)
        .args(["endpoint", "list"])
        .env_remove("COVE_WORKSPACE")
        .env_remove("COVE_URL")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no workspace given"));
    // The token file is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ws.path().join("owner.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_api_serves_its_openapi_description_and_refuses_oversized_bodies() {
    let ws = Workspace::start();
    let (status, doc) = ws.http("GET", "/api/v1/openapi.json", None, &[]);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/endpoints/{endpoint}/jobs"]["post"].is_object());
    let huge = serde_json::json!({ "name": "big", "description": "x".repeat(2 * 1024 * 1024) });
    // The control plane answers 413 from the Content-Length alone and closes the connection without
    // reading the body, so a client still sending it may see the connection closed instead.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sent = rt.block_on(async {
        let req =
            crate::support::https(&ws.path()).post(format!("{}/api/v1/endpoints", ws.url)).bearer_auth(ws.token());
        req.json(&huge).send().await.map(|r| r.status().as_u16())
    });
    match sent {
        Ok(status) => assert_eq!(status, 413),
        Err(e) => {
            assert!(format!("{e:?}").contains("BrokenPipe") || format!("{e:?}").contains("ConnectionReset"), "{e:?}")
        }
    }
    let (status, body) = ws.http("POST", "/api/v1/endpoints", Some(serde_json::json!({ "name": 7 })), &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("invalid request body"));
    assert_eq!(ws.http("GET", "/api/v1/endpoints", None, &[]).1, serde_json::json!([]));
}

/// A request refused before its body is read (a bad token on a large upload) ends its connection, and
/// the answer says so: a client that keeps connections alive then opens a new one for its next request
/// instead of reusing the closed one (which failed that next request).
#[test]
fn a_refusal_before_the_body_is_read_tells_the_client_the_connection_closes() {
    let ws = Workspace::start();
    let script = r#"
import http.client, ssl, sys
ws = sys.argv[1]
host, port = open(ws + "/state/url").read().strip().split("//")[1].rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ws + "/tls/trust.pem")
token = open(ws + "/owner.token").read().strip()
# Whether hyper had the whole body when it answered depends on timing: each case is tried a few times.
for size in [10, 3_000_000] * 5:
    for auth in ("Bearer not-a-token", "Bearer " + token):
        c = http.client.HTTPSConnection(host, int(port), context=ctx)
        body = b'{"archived": true, "x": "' + b"a" * size + b'"}'
        c.request("POST", "/api/v1/models/m/versions/1/archive", body=body,
                  headers={"Authorization": auth, "Content-Type": "application/json"})
        first = c.getresponse()
        first.read()
        try:
            c.request("GET", "/api/v1/workspace", headers={"Authorization": "Bearer " + token})
            second = c.getresponse()
            second.read()
            then = second.status
        except Exception as e:
            then = type(e).__name__
        print(size, auth == "Bearer " + token, first.status, then)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &ws.path().display().to_string()])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    // The refusals happened (a bad token: 401; a body with a field the route does not take: 400; too large
    // for its route: 413), and the next request on the same client succeeded each time.
    let once = ["10 False 401 200", "10 True 400 200", "3000000 False 401 200", "3000000 True 413 200"];
    assert_eq!(lines, once.repeat(5));
}
