//! Loads Azure Machine Learning batch endpoint and batch deployment YAML, unchanged, into Cove's typed and
//! validated specs. It owns parsing, defaults, validation and error positions; it does no IO and resolves no paths.

mod assets;
mod deployment;
mod endpoint;
mod environment;
mod errors;
mod guard;
mod locate;
mod names;
mod pep508;
mod settings;
mod yaml;

pub use assets::{EnvironmentRef, ModelRef, ModelType, ModelVersion};
pub use deployment::{parse_deployment, CodeConfiguration, DeploymentSpec};
pub use endpoint::{parse_endpoint, EndpointSpec};
pub use environment::{
    check_requirement, parse_environment, python_matches, requirement_name, requirements, EnvironmentDefinition,
    Requirements, CONDA_ONLY, CONDA_TO_PYPI,
};
pub use errors::SpecError;
pub use names::validate_resource_name;
pub use settings::{is_loader_variable, DeploymentSettings, Limits, LoggingLevel, OutputAction, RetrySettings};

/// Refuses hostile YAML that is not a Cove spec (a conda file, say) before it is parsed: oversized
/// text, deep nesting, and anchors or aliases, the same guard every spec goes through.
///
/// # Errors
/// A message naming the line, when known, and the reason.
pub fn check_untrusted_yaml(text: &str) -> Result<(), String> {
    guard::check(text).map_err(|(line, why)| match line {
        Some(line) => format!("line {line}: {why}"),
        None => why,
    })
}
