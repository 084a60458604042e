//! The studio: its session rules over HTTP (the cookie, CSRF on every change, sign-out, the security
//! headers, nothing loaded from elsewhere), and the whole of it in a real browser: headless Chromium
//! through chromedriver, driven by `tests/studio/drive.py` (Selenium), keeping a screenshot per page.

use crate::support::{https, Project, Workspace, LIST_SCRIPT};
use serde_json::json;
use std::path::Path;

/// A scoring script whose every string is markup: its prints, its results and its failure.
const HOSTILE_SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        print(f"<script>window.__pwned=3</script> scoring {name}")
        if name.startswith("boom"):
            raise ValueError('<b id="injected">boom</b>')
        out.append(f'{name} <b id="injected">ok</b>')
    return out
"#;

/// Sends one request with the session cookie (and a CSRF header when given); returns status, headers, body.
fn with_cookie(
    ws: &Workspace,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req =
            https(&ws.path()).request(method.parse().unwrap(), format!("{}{path}", ws.url)).header("cookie", cookie);
        if let Some(token) = csrf {
            req = req.header("x-cove-csrf", token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    })
}

#[test]
fn studio_sessions_need_the_csrf_token_for_changes_and_end_at_sign_out() {
    let ws = Workspace::start();
    // The page and its assets come from the control plane alone.
    let (status, headers, page) = with_cookie(&ws, "GET", "/", "", None, None);
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    for asset in ["/studio/studio.js", "/studio/studio.css"] {
        assert!(page.contains(&format!("\"{asset}\"")), "the page loads {asset}");
        let (status, _, text) = with_cookie(&ws, "GET", asset, "", None, None);
        assert_eq!(status, 200, "{asset}");
        assert!(!text.contains("http://") && !text.contains("https://"), "{asset} loads nothing from elsewhere");
    }
    assert!(!page.contains("http://") && !page.contains("https://"));

    // Sign-in sets an HttpOnly, SameSite=Strict cookie; a worker token cannot sign in.
    let (status, headers, body) =
        with_cookie(&ws, "POST", "/studio/session", "", None, Some(json!({"token": ws.token()})));
    assert_eq!(status, 201, "{body}");
    let set = headers["set-cookie"].to_str().unwrap().to_string();
    // `__Host-`: a browser takes it only from this host, over HTTPS, for every path, with no Domain, so
    // no sibling host can set one for it.
    assert!(set.starts_with("__Host-cove_session="), "{set}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    // A second session cookie beside it (a live session of someone else's, planted by another page)
    // never wins, whichever comes first: the request is refused rather than either one believed.
    let (status, other, _) = with_cookie(&ws, "POST", "/studio/session", "", None, Some(json!({"token": ws.token()})));
    assert_eq!(status, 201);
    let planted = other["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert_eq!(with_cookie(&ws, "GET", "/studio/session", &planted, None, None).0, 200, "the planted session is live");
    for both in [format!("{planted}; {cookie}"), format!("{cookie}; {planted}")] {
        let (status, _, text) = with_cookie(&ws, "GET", "/studio/session", &both, None, None);
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("more than one studio session cookie"), "{text}");
    }
    assert_eq!(with_cookie(&ws, "GET", "/studio/session", &cookie, None, None).0, 200, "the cookie alone is good");
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrf"].as_str().unwrap().to_string();
    assert!(!body.contains(&ws.token()), "the token never comes back to the page");
    // A form posted from another page (text/plain, shaped like JSON) cannot sign anyone in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let forged = rt.block_on(async {
        let body = format!("{{\"token\": \"{}\", \"x\": \"=\"}}", ws.token());
        let req = https(&ws.path()).post(format!("{}/studio/session", ws.url)).header("content-type", "text/plain");
        let resp = req.body(body).send().await.unwrap();
        (resp.status().as_u16(), resp.headers().contains_key("set-cookie"))
    });
    assert_eq!(forged, (400, false), "a text/plain sign-in is refused and sets no cookie");
    let worker = std::fs::read_to_string(ws.path().join("state/worker-local.token")).unwrap();
    let (status, _, _) = with_cookie(&ws, "POST", "/studio/session", "", None, Some(json!({"token": worker.trim()})));
    assert_eq!(status, 401);

    // Reads need only the cookie; every change needs the session's CSRF token too.
    assert_eq!(with_cookie(&ws, "GET", "/api/v1/endpoints", &cookie, None, None).0, 200);
    let create = json!({"role": "reader"});
    let (status, _, text) = with_cookie(&ws, "POST", "/api/v1/tokens", &cookie, None, Some(create.clone()));
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("needs its CSRF token"), "{text}");
    assert_eq!(with_cookie(&ws, "POST", "/api/v1/tokens", &cookie, Some("forged"), Some(create.clone())).0, 403);
    assert_eq!(with_cookie(&ws, "POST", "/api/v1/tokens", &cookie, Some(&csrf), Some(create)).0, 201);
    // The studio's changes are audited under the token that signed in.
    let audit = ws.cove(&["--json", "audit", "list"]).ok().json();
    let owner_id = ws.cove(&["--json", "token", "list"]).ok().json()[0]["id"].as_str().unwrap().to_string();
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"] == "POST /api/v1/tokens"
            && e["outcome"] == "ok (201)"
            && e["principal"].as_str().unwrap().starts_with(&owner_id)),
        "{audit:#}"
    );

    // Signing out ends the session: the cookie is worthless afterwards.
    assert_eq!(
        with_cookie(&ws, "DELETE", "/studio/session", &cookie, None, None).0,
        403,
        "sign-out needs the CSRF token"
    );
    assert_eq!(with_cookie(&ws, "DELETE", "/studio/session", &cookie, Some(&csrf), None).0, 204);
    let (status, _, text) = with_cookie(&ws, "GET", "/api/v1/endpoints", &cookie, None, None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("the studio session has ended"), "{text}");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_studio_in_a_real_browser() {
    let ws = Workspace::start();
    let root = ws.dir.path();
    // The endpoint the browser invokes, with markup in its description.
    let p = Project::new(root, "studio", LIST_SCRIPT, "mini_batch_size: 1");
    let endpoint_yml = p.dir.join("endpoint.yml");
    let yml = std::fs::read_to_string(&endpoint_yml).unwrap();
    let kept: Vec<&str> = yml.lines().filter(|l| !l.starts_with("description:")).collect();
    write(&endpoint_yml, &format!("{}\ndescription: '<img src=x onerror=window.__pwned=4>'\n", kept.join("\n")));
    p.deploy(&ws);
    let other = Project::new(root, "other", LIST_SCRIPT, "");
    other.deploy(&ws);
    // A job whose file names, log lines, results and failure reason are markup.
    let hostile =
        Project::new(root, "hostile", HOSTILE_SCRIPT, "mini_batch_size: 2\nretry_settings:\n    max_retries: 1");
    hostile.deploy(&ws);
    let inputs = root.join("hostile-inputs");
    let marked = "<img src=x onerror=window.__pwned=1>.txt";
    for name in [marked, "boom.txt", "plain.txt"] {
        write(&inputs.join(name), "1\n");
    }
    let run = ws.cove(&["--json", "endpoint", "invoke", "hostile", "--input", &inputs.display().to_string()]);
    let hostile_job = run.ok().json()["name"].as_str().unwrap().to_string();
    let ended = ws.wait_job(&hostile_job);
    let reason = ended["failed_batches"][0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("<b id=\"injected\">boom</b>"), "{ended:#}");

    let scoped =
        ws.cove(&["token", "create", "--role", "invoker", "--endpoint-name", "studio"]).ok().stdout.trim().to_string();
    let browser_inputs: Vec<String> = (0..5)
        .map(|i| {
            let f = root.join("browser-inputs").join(format!("file-{i:03}.txt"));
            write(&f, &format!("{i}\n"));
            f.display().to_string()
        })
        .collect();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("studio");
    let _ = std::fs::remove_dir_all(&out);
    // Servers with certificates the workspace CA's key signed: one for this host's address alone, one
    // for it and a bank's name, which the CA's name constraints forbid.
    let own = crate::support::ForgedServer::start(&ws.path(), root, "own", "IP:127.0.0.1");
    let bank = crate::support::ForgedServer::start(&ws.path(), root, "bank", "IP:127.0.0.1,DNS:bank.example");
    let config = json!({
        "url": ws.url,
        "trust": ws.path().join("tls/trust.pem"),
        "within_constraints": own.url(),
        "outside_constraints": bank.url(),
        "owner": ws.token(),
        "scoped": scoped,
        "endpoint": "studio",
        "other_endpoint": "other",
        "inputs": browser_inputs,
        "expected_rows": 5,
        "hostile_job": hostile_job,
        "hostile_texts": ["<script>window.__pwned=3</script>", "<b id=\"injected\">boom</b>"],
        "description": "<img src=x onerror=window.__pwned=4>",
        "shots": out.join("screenshots"),
        "downloads": root.join("downloads"),
    });
    let config_file = root.join("studio.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/studio/drive.py");
    let run = std::process::Command::new("python3").arg(&driver).arg(&config_file).output().expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the browser run failed:\n{stdout}\n{stderr}");
    let shots: Vec<String> = serde_json::from_str::<serde_json::Value>(stdout.lines().last().unwrap()).unwrap()
        ["screenshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    for page in [
        "sign-in",
        "endpoints",
        "endpoint",
        "models",
        "data",
        "datastores",
        "tokens",
        "audit",
        "diagnose",
        "jobs",
        "invoke",
        "job",
        "hostile-names",
        "forbidden",
        "name-constraints",
    ] {
        let found = shots.iter().find(|s| s.ends_with(&format!("-{page}.png")));
        let found = found.unwrap_or_else(|| panic!("no screenshot of the {page} page: {shots:?}"));
        assert!(std::fs::metadata(found).unwrap().len() > 5_000, "{found} is a real screenshot");
    }
    // The browser's job reached the workspace like any other.
    let jobs = ws.cove(&["--json", "job", "list", "--endpoint-name", "studio"]).ok().json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");
    assert_eq!(jobs[0]["status"], "Completed");
    assert_eq!(jobs[0]["settings"]["mini_batch_size"], 2, "the override set in the browser applied");
}
