//! Owns environments: the reference's environment YAML (inline in a deployment or registered on its
//! own) and the translation of its conda and pip files into what Cove builds, a Python version pin
//! and requirements for the Python package index. No IO: the build itself is the worker's.

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::errors::SpecError;
use crate::yaml::{Doc, Fields};

/// An environment as written: inline in a deployment, or the document of `cove environment create`.
/// File fields hold paths relative to the YAML, exactly as written; the CLI sends their contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentDefinition {
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    /// The container image the reference would run. Cove builds from the conda and pip files instead and
    /// says so wherever the environment is shown.
    pub image: Option<String>,
    pub conda_file: Option<String>,
    pub pip_file: Option<String>,
    /// Requirements that replace whatever the environment's files pin for the same package (uv's
    /// overrides): how an aging pin is lifted without editing the model. A Cove extension.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Builds may compile source distributions; by default only wheels are installed. A Cove extension.
    #[serde(default)]
    pub allow_source_builds: bool,
}

/// Keys of an environment, inline or registered. Build contexts and OS hints only matter to Azure's image
/// builder; they are accepted so existing files load.
const ENVIRONMENT_KEYS: [&str; 13] = [
    "$schema",
    "name",
    "version",
    "description",
    "tags",
    "image",
    "conda_file",
    "pip_file",
    "build",
    "inference_config",
    "os_type",
    "overrides",
    "allow_source_builds",
];

pub(crate) fn definition_from_fields(env: &Fields<'_>) -> Result<EnvironmentDefinition, SpecError> {
    env.check_keys(&ENVIRONMENT_KEYS)?;
    if let Some(build) = env.mapping("build")? {
        build.check_keys(&["path", "dockerfile_path"])?;
    }
    let overrides = env.string_list("overrides", "a list of requirements like `scikit-learn>=1.3`")?;
    let overrides = overrides
        .iter()
        .enumerate()
        .map(|(i, line)| check_requirement(line).map_err(|why| env.error(&format!("overrides.{i}"), why)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EnvironmentDefinition {
        name: env.string("name")?,
        version: env.scalar("version")?,
        description: env.string("description")?,
        image: env.string("image")?,
        conda_file: env.string("conda_file")?,
        pip_file: env.string("pip_file")?,
        overrides,
        allow_source_builds: env.flag("allow_source_builds")?,
    })
}

/// Parses the reference's environment YAML, as `cove environment create -f env.yml` reads it.
///
/// # Errors
/// A `SpecError` naming the file, line and field.
pub fn parse_environment(file: &str, text: &str) -> Result<EnvironmentDefinition, SpecError> {
    let doc = Doc { file, text };
    let map = doc.load()?;
    let root = Fields::root(&doc, &map);
    let def = definition_from_fields(&root)?;
    let name = root.required("name", def.name.clone())?;
    crate::validate_resource_name("name", &name).map_err(|m| root.error("name", m))?;
    if def.conda_file.is_none() && def.pip_file.is_none() && def.image.is_none() {
        return Err(root.error("", "an environment needs a conda_file or a pip_file (or an image, reported as unused)"));
    }
    if let Some(Value::String(v)) = map.get("version") {
        if v.parse::<u32>().is_err() {
            return Err(root.error("version", format!("expected a whole number, got `{v}`")));
        }
    }
    Ok(def)
}

/// Conda package names that are spelled differently on the Python package index.
pub const CONDA_TO_PYPI: &[(&str, &str)] = &[
    ("pytorch", "torch"),
    ("pytorch-cpu", "torch"),
    ("py-xgboost", "xgboost"),
    ("py-xgboost-cpu", "xgboost"),
    ("py-lightgbm", "lightgbm"),
    ("matplotlib-base", "matplotlib"),
    ("py-opencv", "opencv-python-headless"),
    ("pyarrow-core", "pyarrow"),
    ("tensorflow-cpu", "tensorflow"),
];

/// Conda packages with no index counterpart: native libraries that wheels carry themselves.
pub const CONDA_ONLY: &[&str] = &[
    "_libgcc_mutex",
    "_openmp_mutex",
    "blas",
    "ca-certificates",
    "cpuonly",
    "cudatoolkit",
    "cudnn",
    "libgcc-ng",
    "libgomp",
    "libstdcxx-ng",
    "mkl",
    "mkl-service",
    "nomkl",
    "openblas",
    "openssl",
];

/// What an environment's files ask for, in the package index's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// The conda file's `python` entry, as written (`3.8`, `>=3.9`, `3.10.4`).
    pub python: Option<String>,
    /// One requirement per entry (PEP 508), in file order, conda names mapped.
    pub packages: Vec<String>,
    /// Entries left out, and why (conda-only libraries, the reference's runtime packages, tools).
    pub notes: Vec<String>,
}

/// Translates a conda file and a pip requirements file.
///
/// # Errors
/// A message naming the file and the entry that cannot be built: pip options that would choose another
/// index, direct URLs, entries that are not requirements.
pub fn requirements(conda: Option<&str>, pip: Option<&str>) -> Result<Requirements, String> {
    let mut out = Requirements::default();
    if let Some(conda) = conda {
        crate::check_untrusted_yaml(conda).map_err(|e| format!("the conda file is refused: {e}"))?;
        let doc: Value = serde_norway::from_str(conda).map_err(|e| format!("the conda file is not valid YAML: {e}"))?;
        let deps = match doc.get("dependencies") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items.clone(),
            Some(_) => return Err("the conda file: `dependencies` must be a list".into()),
        };
        for dep in &deps {
            match dep {
                Value::String(entry) => conda_entry(entry, &mut out)?,
                Value::Number(n) => return Err(format!("the conda file: dependency `{n}` is not a package")),
                Value::Mapping(m) => {
                    for (key, value) in m {
                        if key.as_str() != Some("pip") {
                            return Err(format!("the conda file: unknown dependency section `{}`", describe_key(key)));
                        }
                        let Some(lines) = value.as_sequence() else {
                            return Err("the conda file: the `pip` section must be a list".into());
                        };
                        for line in lines {
                            let Some(line) = line.as_str() else {
                                return Err("the conda file: every `pip` entry must be a string".into());
                            };
                            pip_entry("the conda file's pip section", line, &mut out)?;
                        }
                    }
                }
                _ => return Err("the conda file: every dependency must be a string or a `pip:` list".into()),
            }
        }
    }
    if let Some(pip) = pip {
        if pip.len() > 1 << 20 {
            return Err(format!("the pip file is {} bytes, over the 1 MiB limit", pip.len()));
        }
        for (n, line) in pip.lines().enumerate() {
            let line = line.split(" #").next().unwrap_or("").trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            pip_entry(&format!("the pip file, line {}", n + 1), line, &mut out)?;
        }
    }
    Ok(out)
}

fn describe_key(key: &Value) -> String {
    key.as_str().map(str::to_string).unwrap_or_else(|| format!("{key:?}"))
}

/// A conda match spec: `name`, `name=1.2` (any 1.2.x), `name=1.2.3=build`, `name==1.2`, `name>=1.2,<2`,
/// `name 1.2`, `channel::name`.
fn conda_entry(entry: &str, out: &mut Requirements) -> Result<(), String> {
    let entry = entry.trim();
    let entry = entry.rsplit("::").next().unwrap_or(entry);
    let name = requirement_name(entry);
    let rest = &entry[name.len()..];
    if name.is_empty() {
        return Err(format!("the conda file: `{entry}` is not a package"));
    }
    let lower = name.to_ascii_lowercase();
    let rest = rest.trim();
    let version = conda_version(rest).map_err(|why| format!("the conda file: `{entry}`: {why}"))?;
    match lower.as_str() {
        "python" => {
            out.python = Some(rest.trim_start_matches('=').trim().to_string()).filter(|v| !v.is_empty());
            return Ok(());
        }
        "pip" | "setuptools" | "wheel" => {
            out.notes.push(format!("`{entry}`: a build tool, not installed as a package"));
            return Ok(());
        }
        _ => {}
    }
    if CONDA_ONLY.contains(&lower.as_str()) {
        out.notes.push(format!("`{entry}`: a conda-only library (wheels carry their own), skipped"));
        return Ok(());
    }
    if lower.starts_with("azureml") {
        out.notes.push(format!("`{entry}`: the reference's runtime, which Cove does not need, skipped"));
        return Ok(());
    }
    let mapped = CONDA_TO_PYPI.iter().find(|(c, _)| *c == lower).map(|(_, p)| *p);
    if let Some(p) = mapped {
        out.notes.push(format!("`{name}` is `{p}` on the package index"));
    }
    let requirement = crate::pep508::canonical(&format!("{}{version}", mapped.unwrap_or(name)))
        .map_err(|why| format!("the conda file: `{entry}`: {why}"))?;
    out.packages.push(requirement);
    Ok(())
}

/// Turns a conda version constraint into a PEP 440 one.
fn conda_version(rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Ok(String::new());
    }
    if let Some(v) = rest.strip_prefix("==") {
        return Ok(format!("=={}", v.split('=').next().unwrap_or(v).trim()));
    }
    if let Some(v) = rest.strip_prefix('=') {
        // `=1.2` matches 1.2 and every 1.2.x; `=1.2.3=build` pins 1.2.3 (builds are conda's own).
        let mut parts = v.splitn(2, '=');
        let version = parts.next().unwrap_or("").trim().trim_end_matches(".*");
        if version.is_empty() {
            return Err("no version after `=`".into());
        }
        return Ok(if parts.next().is_some() { format!("=={version}") } else { format!("=={version}.*") });
    }
    if rest.starts_with(['<', '>', '!', '~']) {
        return Ok(rest.replace(' ', ""));
    }
    if rest.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        let version = rest.split_whitespace().next().unwrap_or(rest).trim_end_matches(".*");
        return Ok(format!("=={version}.*"));
    }
    Err(format!("`{rest}` is not a version constraint"))
}

fn pip_entry(place: &str, line: &str, out: &mut Requirements) -> Result<(), String> {
    let line = line.trim();
    if line.starts_with('-') {
        return Err(format!(
            "{place}: `{line}` is a pip option; builds use only the workspace's package index and options, so remove it"
        ));
    }
    let requirement = check_requirement(line).map_err(|why| format!("{place}: {why}"))?;
    if requirement_name(&requirement).to_ascii_lowercase().starts_with("azureml") {
        out.notes.push(format!("`{line}`: the reference's runtime, which Cove does not need, skipped"));
        return Ok(());
    }
    out.packages.push(requirement);
    Ok(())
}

/// The package a requirement names (`scikit-learn` of `scikit-learn[extra]>=1.3`).
pub fn requirement_name(req: &str) -> &str {
    let end = req.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))).unwrap_or(req.len());
    &req[..end]
}

/// Checks that `line` is one requirement of a package from the index (not a URL, a path, a VCS
/// checkout or a pip option, which would reach somewhere other than the workspace's package index);
/// returns it in canonical form, the only form that reaches a requirements file.
pub fn check_requirement(line: &str) -> Result<String, String> {
    let head = line.split(';').next().unwrap_or(line);
    if head.contains("://") || head.contains('@') {
        return Err(format!("`{}` names a URL; builds install only from the workspace's package index", line.trim()));
    }
    crate::pep508::canonical(line)
}

/// Whether an interpreter version (`3.11.7`) satisfies a conda `python` entry.
pub fn python_matches(pin: &str, version: &str) -> bool {
    let parse =
        |v: &str| -> Vec<u32> { v.trim().trim_end_matches(".*").split('.').map_while(|p| p.parse().ok()).collect() };
    let have = parse(version);
    pin.split(',').all(|clause| {
        let clause = clause.trim();
        let (op, v) = ["==", ">=", "<=", "!=", "~=", ">", "<", "="]
            .iter()
            .find_map(|op| clause.strip_prefix(op).map(|v| (*op, v)))
            .unwrap_or(("=", clause));
        let want = parse(v);
        if want.is_empty() {
            return true;
        }
        let prefix = have.len() >= want.len() && have[..want.len()] == want[..];
        let cmp = have.as_slice().cmp(want.as_slice());
        match op {
            "=" | "==" | "~=" => prefix,
            "!=" => !prefix,
            ">=" => cmp.is_ge() || prefix,
            "<=" => cmp.is_le() || prefix,
            ">" => cmp.is_gt() && !prefix,
            _ => cmp.is_lt() && !prefix,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conda_entries_become_index_requirements() {
        let conda = "name: env\nchannels: [conda-forge]\ndependencies:\n  - python=3.8.5\n  - pip=21\n  - \
                     conda-forge::numpy=1.21\n  - pytorch>=1.10\n  - scikit-learn==1.1.2=py38h\n  - cudatoolkit=11\n  \
                     - pandas 1.3\n  - pip:\n    - azureml-core==1.0\n    - mlflow[extras]~=2.0\n";
        let got = requirements(Some(conda), Some("# pins\nscipy<2 # why\n")).unwrap();
        assert_eq!(got.python.as_deref(), Some("3.8.5"));
        assert_eq!(
            got.packages,
            ["numpy==1.21.*", "torch>=1.10", "scikit-learn==1.1.2", "pandas==1.3.*", "mlflow[extras]~=2.0", "scipy<2"]
        );
        assert!(got.notes.iter().any(|n| n.contains("`pytorch` is `torch`")), "{:?}", got.notes);
        assert!(got.notes.iter().any(|n| n.contains("cudatoolkit=11") && n.contains("conda-only")));
        assert!(got.notes.iter().any(|n| n.contains("azureml-core") && n.contains("skipped")));
    }

    #[test]
    fn entries_that_would_leave_the_index_are_refused() {
        let pip = |text: &str| requirements(None, Some(text)).unwrap_err();
        assert!(pip("numpy\n--extra-index-url http://x/simple\n").contains("line 2: `--extra-index-url"));
        assert!(pip("pkg @ https://example.org/pkg.whl").contains("names a URL"));
        assert!(pip("git+https://example.org/x.git").contains("URL"));
        let conda = "dependencies:\n  - pip:\n    - -r other.txt\n";
        assert!(requirements(Some(conda), None).unwrap_err().contains("conda file's pip section: `-r other.txt`"));
        assert!(requirements(Some("dependencies: x\n"), None).unwrap_err().contains("must be a list"));
    }

    #[test]
    fn python_pins_match_interpreter_versions() {
        assert!(python_matches("3.11", "3.11.7"));
        assert!(python_matches("3.11.7", "3.11.7"));
        assert!(!python_matches("3.8", "3.11.7"));
        assert!(!python_matches("3.1", "3.11.7"));
        assert!(python_matches(">=3.9,<3.12", "3.11.2"));
        assert!(!python_matches(">=3.12", "3.11.2"));
        assert!(python_matches("3.11.*", "3.11.2"));
    }

    #[test]
    fn environment_documents_name_their_fields() {
        let def = parse_environment(
            "env.yml",
            "name: skl\nversion: 2\nimage: mcr.microsoft.com/x\nconda_file: conda.yml\noverrides: [numpy>=2]\n",
        )
        .unwrap();
        assert_eq!((def.version.as_deref(), def.overrides.as_slice()), (Some("2"), &["numpy>=2".to_string()][..]));
        let err = parse_environment("env.yml", "name: skl\nconda_fle: c.yml\n").unwrap_err().to_string();
        assert_eq!(err, "env.yml:2: field `conda_fle`: unknown field, did you mean `conda_file`?");
        let err = parse_environment("env.yml", "name: skl\nconda_file: c\noverrides: [\"x @ http://h/x\"]\n");
        assert!(err.unwrap_err().to_string().contains("field `overrides.0`"));
    }
}
