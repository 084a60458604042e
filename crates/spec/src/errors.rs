//! Owns `SpecError`, the one error type of this crate, and its `file:line: field: message` rendering.
//! It does not decide where an error points; `yaml.rs` and `locate.rs` fill in the line and field.

/// An invalid endpoint or deployment YAML document.
///
/// Displays as `{file}:{line}: field `{field}`: {message}`, leaving out the line and field parts when they are unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {}{message}", line_part(.line), field_part(.field))]
pub struct SpecError {
    /// The file name as the caller gave it, used only for messages.
    pub file: String,
    /// The 1-based line of the offending key or value, when it could be found.
    pub line: Option<usize>,
    /// The dotted path of the offending field, such as `settings.retry_settings.timeout`.
    pub field: Option<String>,
    /// What is wrong, lowercase and without a trailing period.
    pub message: String,
}

fn line_part(line: &Option<usize>) -> String {
    line.map(|n| format!(":{n}")).unwrap_or_default()
}

fn field_part(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: Option<usize>, field: Option<&str>) -> SpecError {
        SpecError { file: "d.yml".into(), line, field: field.map(String::from), message: "bad".into() }
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        assert_eq!(err(Some(7), Some("a.b")).to_string(), "d.yml:7: field `a.b`: bad");
        assert_eq!(err(None, Some("a")).to_string(), "d.yml: field `a`: bad");
        assert_eq!(err(Some(2), None).to_string(), "d.yml:2: bad");
        assert_eq!(err(None, None).to_string(), "d.yml: bad");
    }
}
