//! Owns the typed walk over a parsed YAML document: `Doc` (file name and text, for error positions) and `Fields`
//! (one mapping plus its dotted path). It turns syntax errors, type mismatches and unknown keys into `SpecError`s.
//! Which keys exist and what they mean is left to the endpoint, deployment and settings modules.

use std::collections::BTreeMap;

use serde_norway::{Mapping, Value};

use crate::errors::SpecError;
use crate::guard;
use crate::locate::{locate_duplicate, locate_nearest};

/// The document being parsed, kept so every error can name its file and find its line.
pub(crate) struct Doc<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> Doc<'a> {
    /// Returns an error about `field` (a dotted path), on the line of the field or its nearest written ancestor.
    /// An empty `field` means the document root.
    pub fn error(&self, field: &str, message: impl Into<String>) -> SpecError {
        if field.is_empty() {
            return self.document_error(None, message);
        }
        SpecError {
            file: self.file.to_string(),
            line: locate_nearest(self.text, field),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    fn document_error(&self, line: Option<usize>, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line, field: None, message: message.into() }
    }

    /// Refuses hostile input, parses the text and returns its top-level mapping.
    pub fn load(&self) -> Result<Mapping, SpecError> {
        guard::check(self.text).map_err(|(line, message)| self.document_error(line, message))?;
        let value: Value = serde_norway::from_str(self.text).map_err(|err| {
            let text = err.to_string();
            // The location is reported in its own slot, so drop serde_norway's " at line N column M" suffix.
            let message = text.split(" at line ").next().unwrap_or(&text);
            let line = err.location().map(|at| at.line());
            match (duplicate_key(message), err.location()) {
                (Some((path, key)), Some(at)) => SpecError {
                    file: self.file.to_string(),
                    line: locate_duplicate(self.text, at.line(), at.column(), key).or(line),
                    field: Some(if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }),
                    message: "appears more than once".to_string(),
                },
                _ => self.document_error(line, format!("invalid yaml: {message}")),
            }
        })?;
        match value {
            Value::Mapping(map) => Ok(map),
            Value::Null => Err(self.document_error(None, "the document is empty; expected a mapping of fields")),
            other => Err(self
                .document_error(None, format!("the top level must be a mapping of fields, got {}", describe(&other)))),
        }
    }
}

/// Splits serde_norway's `settings: duplicate entry with key "x"` into the mapping path and the key.
fn duplicate_key(message: &str) -> Option<(&str, &str)> {
    const MARK: &str = "duplicate entry with key \"";
    let at = message.find(MARK)?;
    let key = message[at + MARK.len()..].strip_suffix('"')?;
    Some((message[..at].trim_end_matches(": "), key))
}

/// One YAML mapping and its dotted path (empty for the document root).
pub(crate) struct Fields<'a> {
    pub doc: &'a Doc<'a>,
    prefix: String,
    map: &'a Mapping,
}

impl<'a> Fields<'a> {
    pub fn root(doc: &'a Doc<'a>, map: &'a Mapping) -> Self {
        Fields { doc, prefix: String::new(), map }
    }

    /// Returns the dotted path of `key` inside this mapping.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> SpecError {
        self.doc.error(&self.path(key), message)
    }

    /// Fails on the first key not in `allowed`, suggesting the nearest allowed one.
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), SpecError> {
        for key in self.map.keys() {
            let name = self.key_name(key)?;
            if !allowed.contains(&name.as_str()) {
                let message = match nearest(&name, allowed) {
                    Some(near) => format!("unknown field, did you mean `{near}`?"),
                    None => format!("unknown field, expected one of {}", quoted_list(allowed)),
                };
                return Err(self.error(&name, message));
            }
        }
        Ok(())
    }

    fn key_name(&self, key: &Value) -> Result<String, SpecError> {
        scalar_string(key).ok_or_else(|| {
            let message = format!("field names must be strings, got {}", describe(key));
            self.doc.error(&self.prefix, message)
        })
    }

    /// Returns the value of `key`; an explicit YAML null counts as absent, as `description:` alone means "not set".
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, SpecError> {
        value.ok_or_else(|| self.error(key, "required field is missing"))
    }

    pub fn type_error(&self, key: &str, expected: &str, got: &Value) -> SpecError {
        self.error(key, format!("expected {expected}, got {}", describe(got)))
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.type_error(key, "a string", other)),
        }
    }

    /// Returns a scalar of any kind as text, for fields such as a model version that YAML may type as a number.
    pub fn scalar(&self, key: &str) -> Result<Option<String>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => scalar_string(v).map(Some).ok_or_else(|| self.type_error(key, "a scalar value", v)),
        }
    }

    /// Returns a whole number; numeric strings are accepted too, as the Azure ML loader does.
    pub fn int(&self, key: &str) -> Result<Option<i64>, SpecError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| self.type_error(key, "a whole number", value))
    }

    pub fn mapping(&self, key: &str) -> Result<Option<Fields<'a>>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Mapping(map)) => Ok(Some(Fields { doc: self.doc, prefix: self.path(key), map })),
            Some(other) => Err(self.type_error(key, "a mapping", other)),
        }
    }

    /// Returns a list of non-empty strings (absent is an empty list).
    pub fn string_list(&self, key: &str, expected: &str) -> Result<Vec<String>, SpecError> {
        let Some(value) = self.get(key) else { return Ok(Vec::new()) };
        let Some(items) = value.as_sequence() else {
            return Err(self.type_error(key, expected, value));
        };
        items
            .iter()
            .map(|item| match item.as_str() {
                Some(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
                _ => Err(self.type_error(key, expected, item)),
            })
            .collect()
    }

    /// Returns a boolean; absent is `false`.
    pub fn flag(&self, key: &str) -> Result<bool, SpecError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.type_error(key, "true or false", other)),
        }
    }

    /// Returns a mapping of scalars with every key and value as text (`tags`, `properties`, environment variables).
    pub fn scalar_map(&self, key: &str) -> Result<BTreeMap<String, String>, SpecError> {
        let Some(fields) = self.mapping(key)? else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for (k, v) in fields.map {
            let name = fields.key_name(k)?;
            // A key with no value (`FOO:`) is an empty string rather than an error, matching how YAML users write it.
            let text = if v.is_null() { Some(String::new()) } else { scalar_string(v) };
            let text = text.ok_or_else(|| fields.type_error(&name, "a string, number or boolean", v))?;
            out.insert(name, text);
        }
        Ok(out)
    }
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Describes a value for "expected X, got Y" messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) if s.chars().count() > 60 => "a long string".into(),
        Value::String(s) => format!("the string `{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

pub(crate) fn quoted_list(items: &[&str]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// Returns the candidate closest to `name` by edit distance, when it is close enough to be a likely typo.
/// A truncated name (`deployment` for `deployment_name`) also counts as close.
pub(crate) fn nearest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let name = name.to_lowercase();
    let truncated = |c: &str| name.len().min(c.len()) >= 4 && (c.contains(name.as_str()) || name.contains(c));
    candidates
        .iter()
        .map(|&c| (edit_distance(&name, c), c))
        .filter(|&(d, c)| d <= 1 + c.len() / 4 || truncated(c))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance, so a swapped pair of letters (`descriptoin`) costs one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        rows[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("descriptoin", "description"), 1);
        assert_eq!(edit_distance("mini_bach_size", "mini_batch_size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn nearest_suggests_only_close_names() {
        let keys = ["name", "description", "tags", "mini_batch_size"];
        assert_eq!(nearest("descriptoin", &keys), Some("description"));
        assert_eq!(nearest("Name", &keys), Some("name"));
        assert_eq!(nearest("minibatchsize", &keys), Some("mini_batch_size"));
        assert_eq!(nearest("colour", &keys), None);
        assert_eq!(nearest("batch_size", &keys), Some("mini_batch_size"));
        assert_eq!(nearest("tag", &keys), Some("tags"));
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let doc = Doc { file: "e.yml", text: "name: a\nbad: [1, 2\nx: 1\n" };
        let err = doc.load().unwrap_err();
        assert_eq!(err.file, "e.yml");
        assert!(err.line.is_some());
        assert!(err.message.starts_with("invalid yaml: "), "{err}");
        let dup = Doc { file: "e.yml", text: "name: a\nname: b\n" }.load().unwrap_err();
        assert_eq!(dup.to_string(), "e.yml:2: field `name`: appears more than once");
        let nested = Doc { file: "e.yml", text: "name: a\nsettings:\n  x: 1\n  y: 2\n  x: 3\n" }.load().unwrap_err();
        assert_eq!(nested.to_string(), "e.yml:5: field `settings.x`: appears more than once");
    }

    #[test]
    fn empty_and_non_mapping_documents_are_refused() {
        let load = |text| Doc { file: "e.yml", text }.load().unwrap_err().to_string();
        assert_eq!(load(""), "e.yml: the document is empty; expected a mapping of fields");
        assert_eq!(load("# only a comment\n"), "e.yml: the document is empty; expected a mapping of fields");
        assert_eq!(load("- a\n- b\n"), "e.yml: the top level must be a mapping of fields, got a list");
        assert_eq!(load("hello\n"), "e.yml: the top level must be a mapping of fields, got the string `hello`");
    }
}
