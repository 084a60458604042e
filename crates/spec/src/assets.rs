//! Owns the model and environment references of a deployment: registered assets (`azureml:name:1`,
//! `azureml:name@latest`, registry URIs, ARM ids) and inline definitions.
//! It does not resolve paths or look anything up; inline paths are kept exactly as written for the caller to resolve.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::environment::{definition_from_fields, EnvironmentDefinition};
use crate::errors::SpecError;
use crate::yaml::Fields;

/// The model a deployment scores with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelRef {
    /// A model already registered under `name`.
    Registered { name: String, version: ModelVersion },
    /// A model defined in the YAML, whose files sit at `path` relative to the YAML file.
    Inline {
        name: Option<String>,
        version: Option<String>,
        path: String,
        model_type: ModelType,
        description: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVersion {
    Latest,
    Number(u32),
}

/// The `type:` of a model asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    CustomModel,
    MlflowModel,
    TritonModel,
    /// A `.onnx` file, or a folder holding one: deploys with no scoring script (a Cove extension).
    OnnxModel,
}

/// The software environment the scoring script runs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvironmentRef {
    /// A registered environment, kept exactly as written (`azureml:name:1`, `azureml:name@latest`).
    Registered {
        reference: String,
    },
    Inline(EnvironmentDefinition),
}

impl fmt::Display for ModelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelType::CustomModel => "custom_model",
            ModelType::MlflowModel => "mlflow_model",
            ModelType::TritonModel => "triton_model",
            ModelType::OnnxModel => "onnx_model",
        })
    }
}

impl FromStr for ModelType {
    type Err = String;

    /// Parses `custom_model`, `mlflow_model`, `triton_model` or `onnx_model`, ignoring case.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "custom_model" => Ok(ModelType::CustomModel),
            "mlflow_model" => Ok(ModelType::MlflowModel),
            "triton_model" => Ok(ModelType::TritonModel),
            "onnx_model" => Ok(ModelType::OnnxModel),
            _ => Err(format!(
                "expected one of `custom_model`, `mlflow_model`, `triton_model`, `onnx_model`, got `{text}`"
            )),
        }
    }
}

/// Reads the required `model` field of a deployment.
pub(crate) fn model_from_yaml(root: &Fields<'_>) -> Result<ModelRef, SpecError> {
    match root.required("model", root.get("model"))? {
        Value::String(text) => {
            let (name, version) = parse_model_reference(text).map_err(|m| root.error("model", m))?;
            Ok(ModelRef::Registered { name, version })
        }
        Value::Mapping(_) => {
            let model = root.required("model", root.mapping("model")?)?;
            // tags, properties, stage and flavors describe the registered asset and do not change how Cove scores.
            model.check_keys(&[
                "name",
                "version",
                "path",
                "type",
                "description",
                "tags",
                "properties",
                "stage",
                "flavors",
            ])?;
            let name = model.string("name")?;
            if let Some(name) = &name {
                check_asset_name(name).map_err(|m| model.error("name", m))?;
            }
            let path = model.required("path", model.string("path")?)?;
            if path.trim().is_empty() {
                return Err(model.error("path", "must not be empty"));
            }
            let model_type = match model.string("type")? {
                Some(text) => text.parse().map_err(|m: String| model.error("type", m))?,
                None => ModelType::CustomModel,
            };
            Ok(ModelRef::Inline {
                name,
                version: model.scalar("version")?,
                path,
                model_type,
                description: model.string("description")?,
            })
        }
        other => Err(root.type_error("model", "a model reference like `azureml:name:1` or an inline model", other)),
    }
}

/// Reads the optional `environment` field of a deployment.
pub(crate) fn environment_from_yaml(root: &Fields<'_>) -> Result<Option<EnvironmentRef>, SpecError> {
    let Some(value) = root.get("environment") else {
        return Ok(None);
    };
    match value {
        Value::String(reference) => {
            let name = reference.strip_prefix("azureml:").unwrap_or_default();
            if (name.is_empty() && !reference.starts_with("/subscriptions/")) || reference.contains(char::is_whitespace)
            {
                let message = format!(
                    "expected an environment reference like `azureml:name:1` or `azureml:name@latest`, or an inline environment, got `{reference}`"
                );
                return Err(root.error("environment", message));
            }
            Ok(Some(EnvironmentRef::Registered { reference: reference.clone() }))
        }
        Value::Mapping(_) => {
            let env = root.required("environment", root.mapping("environment")?)?;
            Ok(Some(EnvironmentRef::Inline(definition_from_fields(&env)?)))
        }
        other => Err(root.type_error(
            "environment",
            "an environment reference like `azureml:name:1` or an inline environment",
            other,
        )),
    }
}

/// The version part of a model reference before it is checked.
enum RawVersion<'t> {
    Number(&'t str),
    Label(&'t str),
    Unset,
}

/// Parses `azureml:name:3`, `azureml:name@latest`, `azureml:name`, registry URIs and ARM ids into a name and version.
fn parse_model_reference(text: &str) -> Result<(String, ModelVersion), String> {
    let bad = || {
        format!("expected a model reference like `azureml:name:1` or `azureml:name@latest`, or an inline model, got `{text}`")
    };
    let (name, raw) = if let Some(rest) = text.strip_prefix("azureml://") {
        by_segments(rest).ok_or_else(bad)?
    } else if let Some(rest) = text.strip_prefix("azureml:") {
        if rest.starts_with('/') {
            by_segments(rest).ok_or_else(bad)?
        } else if let Some((name, label)) = rest.split_once('@') {
            (name, RawVersion::Label(label))
        } else if let Some((name, version)) = rest.split_once(':') {
            (name, RawVersion::Number(version))
        } else {
            (rest, RawVersion::Unset)
        }
    } else if text.starts_with('/') {
        by_segments(text).ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    check_asset_name(name)?;
    let version = match raw {
        RawVersion::Unset => ModelVersion::Latest,
        RawVersion::Label(label) if label.eq_ignore_ascii_case("latest") => ModelVersion::Latest,
        RawVersion::Label(label) => return Err(format!("only the `latest` label is supported, got `@{label}`")),
        RawVersion::Number(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            ModelVersion::Number(v.parse().map_err(|_| format!("model version `{v}` is too large"))?)
        }
        RawVersion::Number(v) => return Err(format!("model version must be a whole number or `@latest`, got `{v}`")),
    };
    Ok((name.to_string(), version))
}

/// Finds `.../models/<name>[/versions/<v> | /labels/<label>]` in a registry URI or ARM id.
fn by_segments(path: &str) -> Option<(&str, RawVersion<'_>)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Search from the end so a registry or workspace that happens to be called "models" does not confuse it.
    (0..segments.len()).rev().filter(|&i| segments[i].eq_ignore_ascii_case("models")).find_map(|i| {
        match segments[i + 1..] {
            [name] => Some((name, RawVersion::Unset)),
            [name, kind, v] if kind.eq_ignore_ascii_case("versions") => Some((name, RawVersion::Number(v))),
            [name, kind, label] if kind.eq_ignore_ascii_case("labels") => Some((name, RawVersion::Label(label))),
            _ => None,
        }
    })
}

fn check_asset_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "model name must start with a letter or digit and contain only letters, digits, `-`, `_` and `.`, got `{name}`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Result<(String, ModelVersion), String> {
        parse_model_reference(text)
    }

    #[test]
    fn model_reference_forms() {
        let named = |v| Ok(("mnist".to_string(), v));
        assert_eq!(reference("azureml:mnist:3"), named(ModelVersion::Number(3)));
        assert_eq!(reference("azureml:mnist@latest"), named(ModelVersion::Latest));
        assert_eq!(reference("azureml:mnist"), named(ModelVersion::Latest));
        assert_eq!(reference("azureml://registries/azureml/models/mnist/versions/7"), named(ModelVersion::Number(7)));
        assert_eq!(reference("azureml://registries/models/models/mnist/labels/latest"), named(ModelVersion::Latest));
        let arm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w/models/mnist/versions/2";
        assert_eq!(reference(arm), named(ModelVersion::Number(2)));
        assert_eq!(reference(&format!("azureml:{arm}")), named(ModelVersion::Number(2)));
    }

    #[test]
    fn bad_model_references() {
        assert_eq!(
            reference("mnist:3").unwrap_err(),
            "expected a model reference like `azureml:name:1` or `azureml:name@latest`, or an inline model, got `mnist:3`"
        );
        assert_eq!(
            reference("azureml:mnist:1.0").unwrap_err(),
            "model version must be a whole number or `@latest`, got `1.0`"
        );
        assert_eq!(reference("azureml:mnist@prod").unwrap_err(), "only the `latest` label is supported, got `@prod`");
        assert!(reference("azureml:").unwrap_err().starts_with("model name must start"));
        assert!(reference("azureml://registries/r/components/x").is_err());
    }

    #[test]
    fn model_type_round_trips() {
        for t in [ModelType::CustomModel, ModelType::MlflowModel, ModelType::TritonModel, ModelType::OnnxModel] {
            assert_eq!(t.to_string().parse::<ModelType>(), Ok(t));
        }
        assert_eq!("MLflow_Model".parse::<ModelType>(), Ok(ModelType::MlflowModel));
        assert_eq!(
            "onnx".parse::<ModelType>().unwrap_err(),
            "expected one of `custom_model`, `mlflow_model`, `triton_model`, `onnx_model`, got `onnx`"
        );
    }
}
