//! Owns `DeploymentSpec` and `parse_deployment`: batch model deployments in both YAML forms, `type: model` with a
//! `settings:` block and the legacy flat form with settings at the root. Pipeline component deployments are refused.
//! Settings live in `settings.rs` and model/environment references in `assets.rs`; this module ties them together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::assets::{environment_from_yaml, model_from_yaml, EnvironmentRef, ModelRef};
use crate::endpoint::resource_name;
use crate::errors::SpecError;
use crate::settings::{self, DeploymentSettings, SETTINGS_KEYS};
use crate::yaml::{Doc, Fields};

/// A validated batch model deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// Lowercased, since names are case-insensitive.
    pub name: String,
    /// Lowercased; optional here because the CLI may supply it.
    pub endpoint_name: Option<String>,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub properties: BTreeMap<String, String>,
    pub model: ModelRef,
    pub code: Option<CodeConfiguration>,
    pub environment: Option<EnvironmentRef>,
    /// The bare compute name, with any `azureml:` prefix or ARM id path removed.
    pub compute: String,
    pub settings: DeploymentSettings,
    /// Cove's extension: private endpoints (by name) that scoring code may reach from its sandbox.
    #[serde(default)]
    pub egress: Vec<String>,
}

/// Where the scoring script lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeConfiguration {
    /// The code directory, as written (relative to the YAML file).
    pub code: String,
    /// Invariant: a relative path inside `code`, without `..`, ending in `.py`.
    pub scoring_script: String,
}

const ROOT_KEYS: [&str; 14] = [
    "$schema",
    "name",
    "endpoint_name",
    "type",
    "description",
    "tags",
    "properties",
    "model",
    "code_configuration",
    "environment",
    "compute",
    "resources",
    "settings",
    "egress",
];

/// `resources:` keys; only `instance_count` matters to Cove, the rest describe Azure VM shapes and are ignored.
const RESOURCES_KEYS: [&str; 7] =
    ["instance_count", "instance_type", "properties", "shm_size", "docker_args", "max_instance_count", "locations"];

/// Parses and validates a batch deployment YAML document; `file` is used only in error messages.
///
/// # Errors
///
/// Returns a `SpecError` naming the file, line and field of the first problem found.
pub fn parse_deployment(file: &str, text: &str) -> Result<DeploymentSpec, SpecError> {
    let doc = Doc { file, text };
    let map = doc.load()?;
    let root = Fields::root(&doc, &map);
    // The type decides which keys are valid, so a pipeline deployment gets one clear message, not "unknown field".
    check_type(&root)?;
    let allowed: Vec<&str> = ROOT_KEYS.iter().chain(SETTINGS_KEYS.iter()).copied().collect();
    root.check_keys(&allowed)?;

    let name = root.required("name", resource_name(&root, "name")?)?;
    let endpoint_name = resource_name(&root, "endpoint_name")?;
    let model = model_from_yaml(&root)?;
    let code = code_from_yaml(&root)?;
    let environment = environment_from_yaml(&root)?;
    let compute_text = root.required("compute", root.string("compute")?)?;
    let compute = parse_compute(&compute_text).map_err(|m| root.error("compute", m))?;
    let resources = root.mapping("resources")?;
    if let Some(resources) = &resources {
        resources.check_keys(&RESOURCES_KEYS)?;
    }
    let block = root.mapping("settings")?;
    if let Some(block) = &block {
        block.check_keys(&SETTINGS_KEYS)?;
    }
    Ok(DeploymentSpec {
        name,
        endpoint_name,
        description: root.string("description")?,
        tags: root.scalar_map("tags")?,
        properties: root.scalar_map("properties")?,
        model,
        code,
        environment,
        compute,
        settings: settings::from_yaml(&root, block.as_ref(), resources.as_ref())?,
        egress: egress_from_yaml(&root)?,
    })
}

/// `egress:` is a list of private endpoint names.
fn egress_from_yaml(root: &Fields<'_>) -> Result<Vec<String>, SpecError> {
    root.string_list("egress", "a list of private endpoint names")
}

fn check_type(root: &Fields<'_>) -> Result<(), SpecError> {
    let Some(kind) = root.string("type")? else {
        return Ok(());
    };
    match kind.trim().to_ascii_lowercase().as_str() {
        "model" => Ok(()),
        "pipeline" => Err(root.error("type", "pipeline component deployments are not supported; use type: model")),
        _ => Err(root.error("type", format!("expected one of `model`, `pipeline`, got `{kind}`"))),
    }
}

fn code_from_yaml(root: &Fields<'_>) -> Result<Option<CodeConfiguration>, SpecError> {
    let Some(config) = root.mapping("code_configuration")? else {
        return Ok(None);
    };
    config.check_keys(&["code", "scoring_script"])?;
    let code = config.required("code", config.string("code")?)?;
    if code.trim().is_empty() {
        return Err(config.error("code", "must not be empty"));
    }
    let scoring_script = config.required("scoring_script", config.string("scoring_script")?)?;
    check_scoring_script(&scoring_script).map_err(|m| config.error("scoring_script", m))?;
    Ok(Some(CodeConfiguration { code, scoring_script }))
}

/// The script is looked up inside the code directory, so it must not be able to point anywhere else.
fn check_scoring_script(path: &str) -> Result<(), String> {
    let absolute = path.starts_with(['/', '\\']) || path.get(1..2) == Some(":");
    if absolute {
        return Err(format!("must be a relative path inside `code`, got `{path}`"));
    }
    if path.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!("must not contain `..`, got `{path}`"));
    }
    let file = path.rsplit(['/', '\\']).next().unwrap_or(path);
    if !file.ends_with(".py") || file.len() <= ".py".len() {
        return Err(format!("must be a Python file ending in .py, got `{path}`"));
    }
    Ok(())
}

/// Reduces `azureml:cpu-cluster`, `cpu-cluster` or an ARM id ending in `/computes/cpu-cluster` to `cpu-cluster`.
fn parse_compute(text: &str) -> Result<String, String> {
    let rest = text.trim().strip_prefix("azureml:").unwrap_or(text.trim());
    let name = if rest.starts_with('/') {
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match segments[..] {
            [.., kind, name] if kind.eq_ignore_ascii_case("computes") => name,
            _ => "",
        }
    } else {
        rest
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!("expected a compute name like `azureml:cpu-cluster`, got `{text}`"));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::{ModelType, ModelVersion};
    use crate::environment::EnvironmentDefinition;
    use crate::settings::{LoggingLevel, OutputAction, RetrySettings};

    const MNIST: &str = "\
$schema: https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json
name: mnist-torch-dpl
description: A deployment using Torch to solve the MNIST classification dataset.
endpoint_name: mnist-batch
type: model
model:
  name: mnist-classifier-torch
  path: model
code_configuration:
  code: code
  scoring_script: batch_driver.py
environment:
  name: batch-torch-py38
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest
  conda_file: environment/conda.yaml
compute: azureml:batch-cluster
resources:
  instance_count: 1
settings:
  max_concurrency_per_instance: 2
  mini_batch_size: 10
  output_action: append_row
  output_file_name: predictions.csv
  retry_settings:
    max_retries: 3
    timeout: 30
  error_threshold: -1
  logging_level: info
";

    const MINIMAL: &str = "name: blue\nmodel: azureml:mnist:1\ncompute: azureml:cpu-cluster\n";

    fn parse(text: &str) -> DeploymentSpec {
        parse_deployment("deployment.yml", text).unwrap()
    }

    fn err(text: &str) -> String {
        parse_deployment("deployment.yml", text).unwrap_err().to_string()
    }

    /// Returns the error for MINIMAL plus `extra` lines, so line numbers start at 4.
    fn err_with(extra: &str) -> String {
        err(&format!("{MINIMAL}{extra}"))
    }

    fn settings_with(extra: &str) -> DeploymentSettings {
        parse(&format!("{MINIMAL}{extra}")).settings
    }

    #[test]
    fn loads_the_azure_ml_example_unchanged() {
        let spec = parse(MNIST);
        let expected = DeploymentSpec {
            name: "mnist-torch-dpl".into(),
            endpoint_name: Some("mnist-batch".into()),
            description: Some("A deployment using Torch to solve the MNIST classification dataset.".into()),
            tags: BTreeMap::new(),
            properties: BTreeMap::new(),
            model: ModelRef::Inline {
                name: Some("mnist-classifier-torch".into()),
                version: None,
                path: "model".into(),
                model_type: ModelType::CustomModel,
                description: None,
            },
            code: Some(CodeConfiguration { code: "code".into(), scoring_script: "batch_driver.py".into() }),
            environment: Some(EnvironmentRef::Inline(EnvironmentDefinition {
                name: Some("batch-torch-py38".into()),
                image: Some("mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest".into()),
                conda_file: Some("environment/conda.yaml".into()),
                ..Default::default()
            })),
            compute: "batch-cluster".into(),
            settings: DeploymentSettings { max_concurrency_per_instance: 2, ..DeploymentSettings::default() },
            egress: Vec::new(),
        };
        assert_eq!(spec, expected);
    }

    #[test]
    fn minimal_deployment_gets_every_default() {
        let spec = parse(MINIMAL);
        assert_eq!(spec.name, "blue");
        assert_eq!(spec.endpoint_name, None);
        assert_eq!(spec.model, ModelRef::Registered { name: "mnist".into(), version: ModelVersion::Number(1) });
        assert_eq!((spec.code, spec.environment), (None, None));
        assert_eq!(spec.compute, "cpu-cluster");
        let s = spec.settings;
        assert_eq!(s.instance_count, 1);
        assert_eq!(s.max_concurrency_per_instance, 1);
        assert_eq!(s.mini_batch_size, 10);
        assert_eq!(s.output_action, OutputAction::AppendRow);
        assert_eq!(s.output_file_name.as_deref(), Some("predictions.csv"));
        assert_eq!(s.retry_settings, RetrySettings { max_retries: 3, timeout_secs: 30 });
        assert_eq!(s.error_threshold, -1);
        assert_eq!(s.logging_level, LoggingLevel::Info);
        assert!(s.environment_variables.is_empty());
        assert_eq!(s, DeploymentSettings::default());
    }

    #[test]
    fn legacy_flat_form_equals_the_settings_form() {
        let nested = "\
name: Blue
endpoint_name: Mnist-Batch
type: model
model: azureml:mnist@latest
compute: azureml:cpu-cluster
resources:
  instance_count: 2
settings:
  max_concurrency_per_instance: 3
  mini_batch_size: 5
  output_action: append_row
  output_file_name: out.csv
  retry_settings:
    max_retries: 4
    timeout: PT1M
  error_threshold: 7
  logging_level: debug
  environment_variables:
    SEED: 42
";
        let flat = "\
name: Blue
endpoint_name: Mnist-Batch
model: azureml:mnist@latest
compute: azureml:cpu-cluster
resources:
  instance_count: 2
max_concurrency_per_instance: 3
mini_batch_size: 5
output_action: AppendRow
output_file_name: out.csv
retry_settings:
  max_retries: 4
  timeout: 60
error_threshold: 7
logging_level: DEBUG
environment_variables:
  SEED: '42'
";
        let spec = parse(nested);
        assert_eq!(spec, parse(flat));
        assert_eq!(spec.endpoint_name.as_deref(), Some("mnist-batch"));
        let s = spec.settings;
        assert_eq!(
            (s.instance_count, s.max_concurrency_per_instance, s.mini_batch_size, s.error_threshold),
            (2, 3, 5, 7)
        );
        assert_eq!(s.retry_settings, RetrySettings { max_retries: 4, timeout_secs: 60 });
        assert_eq!(s.logging_level, LoggingLevel::Debug);
        assert_eq!(s.environment_variables, BTreeMap::from([("SEED".into(), "42".into())]));
        // settings.instance_count is an alias of resources.instance_count, and the flat root works too.
        assert_eq!(settings_with("settings:\n  instance_count: 4\n").instance_count, 4);
        assert_eq!(settings_with("instance_count: 5\n").instance_count, 5);
    }

    #[test]
    fn settings_values_are_normalised() {
        let s = settings_with(
            "settings:\n  output_action: summary_only\n  error_threshold: -20\n  logging_level: Warning\n",
        );
        assert_eq!(s.output_action, OutputAction::SummaryOnly);
        assert_eq!(s.output_file_name, None);
        assert_eq!(s.error_threshold, -1);
        assert_eq!(s.logging_level, LoggingLevel::Warning);
        assert_eq!(settings_with("output_action: SummaryOnly\n").output_action, OutputAction::SummaryOnly);
        let env = settings_with("settings:\n  environment_variables:\n    A: 1\n    _B: true\n    C: x\n    D:\n");
        let expected = [("A", "1"), ("_B", "true"), ("C", "x"), ("D", "")];
        assert_eq!(env.environment_variables, expected.map(|(k, v)| (k.to_string(), v.to_string())).into());
        assert_eq!(settings_with("settings:\n  mini_batch_size: '7'\n").mini_batch_size, 7);
    }

    #[test]
    fn iso_8601_and_integer_timeouts() {
        let timeout =
            |t: &str| settings_with(&format!("settings:\n  retry_settings:\n    timeout: {t}\n")).retry_settings;
        assert_eq!(timeout("45").timeout_secs, 45);
        assert_eq!(timeout("PT30S").timeout_secs, 30);
        assert_eq!(timeout("PT2M").timeout_secs, 120);
        assert_eq!(timeout("PT1H30M").timeout_secs, 5400);
        assert_eq!(timeout("pt1h0m5s").timeout_secs, 3605);
        assert_eq!(timeout("P1DT1S").timeout_secs, 86_401);
        assert_eq!(timeout("'90'").max_retries, 3);
        for bad in ["PT", "P", "PT1.5S", "PT5S1M", "30s", "1H", "PTxS"] {
            assert_eq!(
                err_with(&format!("settings:\n  retry_settings:\n    timeout: {bad}\n")),
                format!(
                    "deployment.yml:6: field `settings.retry_settings.timeout`: expected whole seconds or an \
                     ISO-8601 duration like `PT30S`, got `{bad}`"
                )
            );
        }
        assert_eq!(
            err_with("retry_settings:\n  timeout: PT0S\n"),
            "deployment.yml:5: field `retry_settings.timeout`: must be at least 1 second, got `PT0S`"
        );
        assert_eq!(
            err_with("retry_settings:\n  timeout: 0\n"),
            "deployment.yml:5: field `retry_settings.timeout`: must be at least 1 second, got 0"
        );
    }

    #[test]
    fn model_and_compute_reference_forms() {
        let model = |m: &str| parse(&format!("name: blue\nmodel: {m}\ncompute: c1\n")).model;
        let registered = |v| ModelRef::Registered { name: "mnist".into(), version: v };
        assert_eq!(model("azureml:mnist:3"), registered(ModelVersion::Number(3)));
        assert_eq!(model("azureml:mnist@latest"), registered(ModelVersion::Latest));
        assert_eq!(model("azureml:mnist"), registered(ModelVersion::Latest));
        assert_eq!(model("azureml://registries/azureml/models/mnist/versions/3"), registered(ModelVersion::Number(3)));
        assert_eq!(
            model("{path: ./m, type: mlflow_model, version: 2}"),
            ModelRef::Inline {
                name: None,
                version: Some("2".into()),
                path: "./m".into(),
                model_type: ModelType::MlflowModel,
                description: None
            }
        );
        let compute = |c: &str| parse(&format!("name: blue\nmodel: azureml:m:1\ncompute: {c}\n")).compute;
        assert_eq!(compute("azureml:cpu-cluster"), "cpu-cluster");
        assert_eq!(compute("cpu-cluster"), "cpu-cluster");
        assert_eq!(
            compute("/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w/computes/gpu1"),
            "gpu1"
        );
        assert_eq!(compute("azureml:/subscriptions/s/workspaces/w/computes/gpu2"), "gpu2");
        assert_eq!(
            err("name: blue\nmodel: azureml:m:1\ncompute: azureml:/subscriptions/s/workspaces/w\n"),
            "deployment.yml:3: field `compute`: expected a compute name like `azureml:cpu-cluster`, got \
             `azureml:/subscriptions/s/workspaces/w`"
        );
        let env = |e: &str| parse(&format!("{MINIMAL}environment: {e}\n")).environment;
        let registered_env = |r: &str| Some(EnvironmentRef::Registered { reference: r.into() });
        assert_eq!(env("azureml:sklearn:1"), registered_env("azureml:sklearn:1"));
        assert_eq!(env("azureml:sklearn@latest"), registered_env("azureml:sklearn@latest"));
        assert_eq!(
            err_with("environment: sklearn:1\n"),
            "deployment.yml:4: field `environment`: expected an environment reference like `azureml:name:1` or \
             `azureml:name@latest`, or an inline environment, got `sklearn:1`"
        );
    }

    #[test]
    fn inline_environment_accepts_and_ignores_build_fields() {
        let text = "\
environment:
  name: env
  version: 3
  build:
    path: docker
    dockerfile_path: Dockerfile
  inference_config: {liveness_route: {path: /}}
  os_type: linux
  tags: {a: b}
  pip_file: requirements.txt
";
        let spec = parse(&format!("{MINIMAL}{text}"));
        assert_eq!(
            spec.environment,
            Some(EnvironmentRef::Inline(EnvironmentDefinition {
                name: Some("env".into()),
                version: Some("3".into()),
                pip_file: Some("requirements.txt".into()),
                ..Default::default()
            }))
        );
        assert_eq!(
            err_with("environment:\n  image: x\n  build:\n    pth: .\n"),
            "deployment.yml:7: field `environment.build.pth`: unknown field, did you mean `path`?"
        );
    }

    #[test]
    fn azure_only_fields_are_accepted_and_ignored() {
        let extra = "\
$schema: https://azuremlschemas.azureedge.net/latest/batchDeployment.schema.json
tags: {team: 1}
properties: {x: y}
resources:
  instance_count: 2
  instance_type: Standard_DS3_v2
  properties: {a: b}
  shm_size: 2g
  docker_args: --ipc=host
  max_instance_count: 4
  locations: [westeurope]
";
        let spec = parse(&format!("{MINIMAL}{extra}"));
        assert_eq!(spec.settings.instance_count, 2);
        assert_eq!(spec.tags, BTreeMap::from([("team".into(), "1".into())]));
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_at_every_level() {
        assert_eq!(
            err_with("descriptoin: x\n"),
            "deployment.yml:4: field `descriptoin`: unknown field, did you mean `description`?"
        );
        assert_eq!(
            err_with("settings:\n  mini_bach_size: 3\n"),
            "deployment.yml:5: field `settings.mini_bach_size`: unknown field, did you mean `mini_batch_size`?"
        );
        assert_eq!(
            err_with("settings:\n  retry_settings:\n    timout: 3\n"),
            "deployment.yml:6: field `settings.retry_settings.timout`: unknown field, did you mean `timeout`?"
        );
        assert_eq!(
            err_with("resources:\n  instance_cont: 2\n"),
            "deployment.yml:5: field `resources.instance_cont`: unknown field, did you mean `instance_count`?"
        );
        assert_eq!(
            err("name: blue\nmodel:\n  path: m\n  flavour: x\ncompute: c\n"),
            "deployment.yml:4: field `model.flavour`: unknown field, did you mean `flavors`?"
        );
        assert_eq!(
            err_with("code_configuration:\n  code: src\n  script: score.py\n"),
            "deployment.yml:6: field `code_configuration.script`: unknown field, did you mean `scoring_script`?"
        );
        assert_eq!(
            err_with("code_configuration:\n  code: src\n  entry: score.py\n"),
            "deployment.yml:6: field `code_configuration.entry`: unknown field, expected one of `code`, `scoring_script`"
        );
    }

    #[test]
    fn deployment_type_rules() {
        let pipeline = "name: blue\ntype: pipeline\ncomponent: azureml:c@latest\n";
        assert_eq!(
            err(pipeline),
            "deployment.yml:2: field `type`: pipeline component deployments are not supported; use type: model"
        );
        assert_eq!(
            err_with("type: batch\n"),
            "deployment.yml:4: field `type`: expected one of `model`, `pipeline`, got `batch`"
        );
        assert_eq!(parse(&format!("{MINIMAL}type: Model\n")).name, "blue");
    }

    #[test]
    fn required_fields_and_types() {
        assert_eq!(err("model: azureml:m:1\ncompute: c\n"), "deployment.yml: field `name`: required field is missing");
        assert_eq!(err("name: blue\ncompute: c\n"), "deployment.yml: field `model`: required field is missing");
        assert_eq!(
            err("name: blue\nmodel: azureml:m:1\n"),
            "deployment.yml: field `compute`: required field is missing"
        );
        assert_eq!(
            err("name: blue\nmodel:\n  name: m\ncompute: c\n"),
            "deployment.yml:2: field `model.path`: required field is missing"
        );
        assert_eq!(
            err_with("code_configuration:\n  code: src\n"),
            "deployment.yml:4: field `code_configuration.scoring_script`: required field is missing"
        );
        assert_eq!(
            err_with("settings:\n  mini_batch_size: ten\n"),
            "deployment.yml:5: field `settings.mini_batch_size`: expected a whole number, got the string `ten`"
        );
        assert_eq!(
            err_with("settings:\n  mini_batch_size: 2.5\n"),
            "deployment.yml:5: field `settings.mini_batch_size`: expected a whole number, got `2.5`"
        );
        assert_eq!(err_with("settings: 3\n"), "deployment.yml:4: field `settings`: expected a mapping, got `3`");
        assert_eq!(err_with("tags: [a]\n"), "deployment.yml:4: field `tags`: expected a mapping, got a list");
        assert_eq!(
            err("name: blue\nmodel: 3\ncompute: c\n"),
            "deployment.yml:2: field `model`: expected a model reference like `azureml:name:1` or an inline model, got `3`"
        );
        assert_eq!(
            err_with("settings:\n  retry_settings: [1]\n"),
            "deployment.yml:5: field `settings.retry_settings`: expected a mapping, got a list"
        );
    }

    #[test]
    fn settings_validation_rules() {
        let cases = [
            ("settings:\n  mini_batch_size: 0\n", "5: field `settings.mini_batch_size`: must be at least 1, got 0"),
            ("max_concurrency_per_instance: -2\n", "4: field `max_concurrency_per_instance`: must be at least 1, got -2"),
            ("resources:\n  instance_count: 0\n", "5: field `resources.instance_count`: must be at least 1, got 0"),
            (
                "settings:\n  instance_count: 5000000000\n",
                "5: field `settings.instance_count`: must be at most 4294967295, got 5000000000",
            ),
            (
                "settings:\n  retry_settings:\n    max_retries: 0\n",
                "6: field `settings.retry_settings.max_retries`: must be at least 1, got 0",
            ),
            (
                "settings:\n  output_action: append\n",
                "5: field `settings.output_action`: expected `append_row` or `summary_only`, got `append`",
            ),
            (
                "settings:\n  output_action: summary_only\n  output_file_name: out.csv\n",
                "6: field `settings.output_file_name`: cannot be set when output_action is summary_only",
            ),
            (
                "output_file_name: ../x.csv\n",
                "4: field `output_file_name`: must be a plain file name without `/` or `..`, got `../x.csv`",
            ),
            ("output_file_name: a/b.csv\n", "4: field `output_file_name`: must be a plain file name without `/` or `..`, got `a/b.csv`"),
            ("output_file_name: ''\n", "4: field `output_file_name`: must not be empty"),
            (
                "settings:\n  logging_level: verbose\n",
                "5: field `settings.logging_level`: expected one of `warning`, `info`, `debug`, got `verbose`",
            ),
            (
                "settings:\n  environment_variables:\n    MY-VAR: 1\n",
                "6: field `settings.environment_variables.MY-VAR`: `MY-VAR` is not a valid environment variable name \
                 (letters, digits and `_`, not starting with a digit)",
            ),
            (
                "environment_variables:\n  A: [1]\n",
                "5: field `environment_variables.A`: expected a string, number or boolean, got a list",
            ),
            ("code_configuration:\n  code: src\n  scoring_script: /abs/score.py\n", "6: field `code_configuration.scoring_script`: must be a relative path inside `code`, got `/abs/score.py`"),
            ("code_configuration:\n  code: src\n  scoring_script: ../score.py\n", "6: field `code_configuration.scoring_script`: must not contain `..`, got `../score.py`"),
            ("code_configuration:\n  code: src\n  scoring_script: score.sh\n", "6: field `code_configuration.scoring_script`: must be a Python file ending in .py, got `score.sh`"),
            ("code_configuration:\n  code: ''\n  scoring_script: s.py\n", "5: field `code_configuration.code`: must not be empty"),
        ];
        for (extra, expected) in cases {
            assert_eq!(err_with(extra), format!("deployment.yml:{expected}"), "for {extra:?}");
        }
        assert_eq!(
            parse(&format!("{MINIMAL}code_configuration:\n  code: src\n  scoring_script: pkg/score.py\n")).code,
            Some(CodeConfiguration { code: "src".into(), scoring_script: "pkg/score.py".into() })
        );
    }

    #[test]
    fn settings_given_in_two_places_are_refused() {
        assert_eq!(
            err_with("mini_batch_size: 3\nsettings:\n  mini_batch_size: 4\n"),
            "deployment.yml:4: field `mini_batch_size`: conflicts with `settings.mini_batch_size`; set it in one place only"
        );
        assert_eq!(
            err_with("resources:\n  instance_count: 2\nsettings:\n  instance_count: 3\n"),
            "deployment.yml:7: field `settings.instance_count`: conflicts with `resources.instance_count`; set it in one place only"
        );
        assert_eq!(
            err_with("instance_count: 2\nresources:\n  instance_count: 3\n"),
            "deployment.yml:4: field `instance_count`: conflicts with `resources.instance_count`; set it in one place only"
        );
    }

    #[test]
    fn names_are_validated_and_lowercased() {
        assert_eq!(
            err("name: my_dep\nmodel: azureml:m:1\ncompute: c\n"),
            "deployment.yml:1: field `name`: name may contain only letters, digits and `-`, got `my_dep`"
        );
        assert_eq!(
            err_with("endpoint_name: x-\n"),
            "deployment.yml:4: field `endpoint_name`: endpoint_name must be 3 to 32 characters long, got `x-` (2)"
        );
        assert_eq!(parse("name: BLUE\nmodel: azureml:m:1\ncompute: c\n").name, "blue");
    }

    #[test]
    fn hostile_input_is_refused_before_parsing() {
        let alias = "name: blue\nbase: &b\n  x: 1\nmodel: azureml:m:1\ncompute: c\n";
        assert_eq!(
            err(alias),
            "deployment.yml:2: yaml anchors are not supported (found `&b`); write the values out in full"
        );
        let deep = format!("{MINIMAL}tags: {}{}\n", "{a: ".repeat(80), "}".repeat(80));
        assert_eq!(err(&deep), "deployment.yml:4: nesting is deeper than 64 levels");
        let huge = format!("{MINIMAL}description: {}\n", "x".repeat(1 << 20));
        assert_eq!(err(&huge), format!("deployment.yml: document is {} bytes, over the 1 MiB limit", huge.len()));
        assert_eq!(err(""), "deployment.yml: the document is empty; expected a mapping of fields");
        assert_eq!(err("[1, 2]\n"), "deployment.yml: the top level must be a mapping of fields, got a list");
        assert!(err("name: blue\n  bad indent: [\n").starts_with("deployment.yml:2: invalid yaml: "));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = parse(MNIST);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<DeploymentSpec>(&json).unwrap(), spec);
        assert!(json.contains(r#""model":{"kind":"inline""#), "{json}");
    }
}
