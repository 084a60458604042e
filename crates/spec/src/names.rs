//! Owns the naming rule for endpoints and deployments: 3 to 32 characters matching
//! `^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`, compared case-insensitively. Checked by hand to avoid a regex dependency.

/// Checks an endpoint or deployment name and returns it lowercased, since the service treats names case-insensitively.
///
/// # Errors
///
/// Returns a message starting with `field` (such as `name` or `--endpoint-name`) that says which rule is broken.
pub fn validate_resource_name(field: &str, name: &str) -> Result<String, String> {
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err(format!("{field} must be 3 to 32 characters long, got `{name}` ({len})"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("{field} must start with a letter, got `{name}`"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("{field} may contain only letters, digits and `-`, got `{name}`"));
    }
    if name.ends_with('-') {
        return Err(format!("{field} must end with a letter or digit, got `{name}`"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases_valid_names() {
        assert_eq!(validate_resource_name("name", "Mnist-Batch-1"), Ok("mnist-batch-1".into()));
        assert_eq!(validate_resource_name("name", "abc"), Ok("abc".into()));
        assert!(validate_resource_name("name", &"a".repeat(32)).is_ok());
    }

    #[test]
    fn refuses_each_broken_rule() {
        let check = |n: &str| validate_resource_name("name", n).unwrap_err();
        assert_eq!(check("ab"), "name must be 3 to 32 characters long, got `ab` (2)");
        assert_eq!(
            check(&"a".repeat(33)),
            format!("name must be 3 to 32 characters long, got `{}` (33)", "a".repeat(33))
        );
        assert_eq!(check("1abc"), "name must start with a letter, got `1abc`");
        assert_eq!(check("-abc"), "name must start with a letter, got `-abc`");
        assert_eq!(check("ab_c"), "name may contain only letters, digits and `-`, got `ab_c`");
        assert_eq!(check("abé"), "name may contain only letters, digits and `-`, got `abé`");
        assert_eq!(check("abc-"), "name must end with a letter or digit, got `abc-`");
    }
}
