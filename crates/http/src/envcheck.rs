//! Scoring-script checks at deployment time: the script parses and defines `init()` and `run()`.
//! Failing here names the problem before any job is submitted.

use std::process::Stdio;
use tokio::io::AsyncWriteExt;

const CHECK_SCRIPT: &str = r#"
import ast, json, sys
src = sys.stdin.read()
try:
    tree = ast.parse(src, filename=sys.argv[1])
except SyntaxError as e:
    print(json.dumps({"error": f"{sys.argv[1]}:{e.lineno}: syntax error: {e.msg}"}))
    sys.exit(0)
names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
missing = [f for f in ("init", "run") if f not in names]
print(json.dumps({"error": f"{sys.argv[1]}: the scoring script defines no {' and no '.join(m + '()' for m in missing)}" if missing else None}))
"#;

async fn run_python(python: &str, code: &str, args: &[&str], stdin: &[u8]) -> Result<String, String> {
    let mut child = tokio::process::Command::new(python)
        .arg("-I")
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("the environment's Python interpreter `{python}` cannot be started: {e}"))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin).await.map_err(|e| e.to_string())?;
    drop(input);
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("`{python}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Checks that a scoring script parses and defines `init()` and `run()`.
pub async fn check_script(python: &str, file_name: &str, source: &[u8]) -> Result<(), String> {
    let out = run_python(python, CHECK_SCRIPT, &[file_name], source).await?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("unexpected answer from `{python}`: {e}"))?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}
