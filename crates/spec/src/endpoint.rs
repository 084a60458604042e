//! Owns `EndpointSpec` and `parse_endpoint`: the batch endpoint YAML (`batchEndpoint.schema.json`).
//! Azure-only keys (`$schema`, `location`, `identity`, `id`) are accepted and dropped; nothing here talks to a server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::errors::SpecError;
use crate::names::validate_resource_name;
use crate::yaml::{Doc, Fields};

/// A validated batch endpoint.
/// As JSON (the API's body), only `name` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Lowercased, since names are case-insensitive.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// One of `aad_token` (the default), `key`, `aml_token`, lowercased.
    #[serde(default = "default_auth_mode")]
    pub auth_mode: String,
    /// From `defaults.deployment_name`, lowercased.
    #[serde(default)]
    pub default_deployment: Option<String>,
}

fn default_auth_mode() -> String {
    "aad_token".to_string()
}

const AUTH_MODES: [&str; 3] = ["aad_token", "key", "aml_token"];

/// Parses and validates a batch endpoint YAML document; `file` is used only in error messages.
///
/// # Errors
///
/// Returns a `SpecError` naming the file, line and field of the first problem found.
pub fn parse_endpoint(file: &str, text: &str) -> Result<EndpointSpec, SpecError> {
    let doc = Doc { file, text };
    let map = doc.load()?;
    let root = Fields::root(&doc, &map);
    root.check_keys(&[
        "$schema",
        "name",
        "description",
        "tags",
        "properties",
        "auth_mode",
        "defaults",
        "location",
        "identity",
        "id",
    ])?;
    let name = root.required("name", resource_name(&root, "name")?)?;
    let auth_mode = match root.string("auth_mode")? {
        None => AUTH_MODES[0].to_string(),
        Some(mode) => {
            let lower = mode.trim().to_ascii_lowercase();
            if !AUTH_MODES.contains(&lower.as_str()) {
                let message = format!("expected one of `aad_token`, `key`, `aml_token`, got `{mode}`");
                return Err(root.error("auth_mode", message));
            }
            lower
        }
    };
    let default_deployment = match root.mapping("defaults")? {
        Some(defaults) => {
            defaults.check_keys(&["deployment_name"])?;
            resource_name(&defaults, "deployment_name")?
        }
        None => None,
    };
    Ok(EndpointSpec {
        name,
        description: root.string("description")?,
        tags: root.scalar_map("tags")?,
        properties: root.scalar_map("properties")?,
        auth_mode,
        default_deployment,
    })
}

/// Reads an optional endpoint or deployment name field, validated and lowercased.
pub(crate) fn resource_name(fields: &Fields<'_>, key: &str) -> Result<Option<String>, SpecError> {
    let Some(name) = fields.string(key)? else {
        return Ok(None);
    };
    validate_resource_name(key, &name).map(Some).map_err(|m| fields.error(key, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MNIST: &str = "\
$schema: https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json
name: mnist-batch
description: A batch endpoint for scoring images from the MNIST dataset.
tags:
  type: deep-learning
auth_mode: aad_token
";

    fn err(text: &str) -> String {
        parse_endpoint("endpoint.yml", text).unwrap_err().to_string()
    }

    #[test]
    fn loads_the_azure_ml_example_unchanged() {
        let spec = parse_endpoint("endpoint.yml", MNIST).unwrap();
        assert_eq!(
            spec,
            EndpointSpec {
                name: "mnist-batch".into(),
                description: Some("A batch endpoint for scoring images from the MNIST dataset.".into()),
                tags: BTreeMap::from([("type".into(), "deep-learning".into())]),
                properties: BTreeMap::new(),
                auth_mode: "aad_token".into(),
                default_deployment: None,
            }
        );
    }

    #[test]
    fn defaults_and_normalisation() {
        let text = "\
name: My-Endpoint
auth_mode: KEY
defaults:
  deployment_name: Blue-1
tags: {n: 3, on: true}
properties:
  ratio: 0.5
location: westeurope
identity: {type: system_assigned}
id: /subscriptions/x
";
        let spec = parse_endpoint("endpoint.yml", text).unwrap();
        assert_eq!(spec.name, "my-endpoint");
        assert_eq!(spec.auth_mode, "key");
        assert_eq!(spec.default_deployment.as_deref(), Some("blue-1"));
        assert_eq!(spec.tags, BTreeMap::from([("n".into(), "3".into()), ("on".into(), "true".into())]));
        assert_eq!(spec.properties, BTreeMap::from([("ratio".into(), "0.5".into())]));
        let minimal = parse_endpoint("endpoint.yml", "name: abc\n").unwrap();
        assert_eq!(minimal.auth_mode, "aad_token");
        assert_eq!((minimal.description, minimal.default_deployment), (None, None));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(
            err("name: abc\ndescription: x\ndescriptoin: y\n"),
            "endpoint.yml:3: field `descriptoin`: unknown field, did you mean `description`?"
        );
        assert_eq!(
            err("name: abc\ndefaults:\n  deployment: blue\n"),
            "endpoint.yml:3: field `defaults.deployment`: unknown field, did you mean `deployment_name`?"
        );
        assert_eq!(
            err("name: abc\ncolour: red\n"),
            "endpoint.yml:2: field `colour`: unknown field, expected one of `$schema`, `name`, `description`, `tags`, \
             `properties`, `auth_mode`, `defaults`, `location`, `identity`, `id`"
        );
        assert_eq!(err("description: x\n"), "endpoint.yml: field `name`: required field is missing");
        assert_eq!(
            err("name: ab\n"),
            "endpoint.yml:1: field `name`: name must be 3 to 32 characters long, got `ab` (2)"
        );
        assert_eq!(
            err("name: abc\nauth_mode: password\n"),
            "endpoint.yml:2: field `auth_mode`: expected one of `aad_token`, `key`, `aml_token`, got `password`"
        );
        assert_eq!(err("name: [a]\n"), "endpoint.yml:1: field `name`: expected a string, got a list");
        assert_eq!(
            err("name: abc\ntags:\n  team: [a, b]\n"),
            "endpoint.yml:3: field `tags.team`: expected a string, number or boolean, got a list"
        );
        assert_eq!(
            err("name: abc\ndefaults:\n  deployment_name: 9lives\n"),
            "endpoint.yml:3: field `defaults.deployment_name`: deployment_name must start with a letter, got `9lives`"
        );
    }
}
