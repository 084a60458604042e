//! Environment checks at deployment time: the interpreter runs, the scoring script parses and defines
//! `init()` and `run()`, and every package the environment's conda or pip file lists is importable.
//! Failing here names the problem before any job is submitted.

use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The largest pip requirements file accepted.
const PIP_FILE_LIMIT: usize = 1 << 20;

/// Names a conda or pip file lists, without versions. Python itself, pip's own tooling and the
/// reference system's `azureml-*` packages (Cove does not need them) are left out.
pub fn listed_packages(conda: Option<&str>, pip: Option<&str>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    if let Some(conda) = conda {
        cove_spec::check_untrusted_yaml(conda).map_err(|e| format!("the conda file is refused: {e}"))?;
        let doc: serde_json::Value = serde_yaml::from_str::<serde_yaml::Value>(conda)
            .map_err(|e| format!("the conda file is not valid YAML: {e}"))
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))?;
        if let Some(deps) = doc.get("dependencies").and_then(|d| d.as_array()) {
            for dep in deps {
                match dep {
                    serde_json::Value::String(s) => names.push(s.clone()),
                    serde_json::Value::Object(m) => {
                        for v in m.get("pip").and_then(|p| p.as_array()).into_iter().flatten() {
                            names.extend(v.as_str().map(str::to_string));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(pip) = pip {
        if pip.len() > PIP_FILE_LIMIT {
            return Err(format!("the pip file is {} bytes, over the 1 MiB limit", pip.len()));
        }
        names.extend(pip.lines().map(|l| l.split('#').next().unwrap_or("").trim().to_string()));
    }
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty() && !n.starts_with('-'))
        .map(|n| {
            let n = n.rsplit("::").next().unwrap_or(n); // conda channel prefix
            let end =
                n.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(n.len());
            n[..end].to_string()
        })
        .filter(|n| {
            let l = n.to_ascii_lowercase();
            !n.is_empty()
                && !matches!(l.as_str(), "python" | "pip" | "setuptools" | "wheel")
                && !l.starts_with("azureml")
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

const CHECK_PACKAGES: &str = r#"
import importlib.metadata as md, importlib.util, json, sys
missing = []
for name in json.loads(sys.stdin.read()):
    try:
        md.distribution(name)
        continue
    except Exception:
        pass
    if importlib.util.find_spec(name.replace("-", "_")) is None:
        missing.append(name)
print(json.dumps(missing))
"#;

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

/// Returns the listed packages the interpreter cannot import.
pub async fn missing_packages(python: &str, packages: &[String]) -> Result<Vec<String>, String> {
    if packages.is_empty() {
        run_python(python, "pass", &[], b"").await?;
        return Ok(Vec::new());
    }
    let input = serde_json::to_vec(packages).expect("strings serialise");
    let out = run_python(python, CHECK_PACKAGES, &[], &input).await?;
    serde_json::from_str(&out).map_err(|e| format!("unexpected answer from `{python}`: {e}"))
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

#[cfg(test)]
mod tests {
    #[test]
    fn conda_and_pip_files_name_their_packages() {
        let conda = "name: env\nchannels: [conda-forge]\ndependencies:\n  - python=3.8.5\n  - pip\n  - conda-forge::numpy>=1.2\n  - pip:\n    - azureml-core==1.0\n    - pandas[parquet]~=2.0\n";
        let pip = "# comment\nscikit-learn==1.3\n-r other.txt\n";
        let got = super::listed_packages(Some(conda), Some(pip)).unwrap();
        assert_eq!(got, vec!["numpy", "pandas", "scikit-learn"]);
    }
}
