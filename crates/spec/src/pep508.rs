//! One PEP 508 requirement, parsed whole and written back in a canonical form. User text reaches a
//! requirements file only this way: a line that is not exactly one requirement by name (with extras,
//! version specifiers and an environment marker) is refused, so no entry can carry a second line, a
//! requirement-file option (`--index-url`, `--no-binary`, `-e`) or a URL into a build.

/// The environment marker variables of PEP 508.
const MARKER_VARIABLES: [&str; 12] = [
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
];

/// Version comparison operators, longest first so that `===` is not read as `==`.
const VERSION_OPERATORS: [&str; 8] = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];

/// Parses `text` as one requirement; returns it in canonical form: `name[extra,...]spec,...; marker`.
///
/// # Errors
/// Why `text` is not one requirement, naming what was found where.
pub fn canonical(text: &str) -> Result<String, String> {
    let mut p = Parser { text, at: 0 };
    let out =
        p.requirement().map_err(|why| format!("`{}` is not a requirement like `name==1.2`: {why}", text.trim()))?;
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn spaces(&mut self) {
        let trimmed = self.rest().trim_start_matches([' ', '\t']);
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.spaces();
        if self.rest().starts_with(token) {
            self.at += token.len();
            return true;
        }
        false
    }

    /// What is found at the current place, for an error.
    fn found(&self) -> String {
        match self.rest().chars().next() {
            None => "the end of the entry".into(),
            Some(c) if c.is_control() => format!("a control character ({c:?}) at column {}", self.at + 1),
            Some(c) => format!("`{c}` at column {}", self.at + 1),
        }
    }

    fn requirement(&mut self) -> Result<String, String> {
        self.spaces();
        let name = self.identifier().ok_or_else(|| format!("a package name was expected, found {}", self.found()))?;
        let mut out = name.to_string();
        if self.eat("[") {
            let mut extras = Vec::new();
            if !self.eat("]") {
                loop {
                    self.spaces();
                    let extra = self
                        .identifier()
                        .ok_or_else(|| format!("an extra's name was expected, found {}", self.found()))?;
                    extras.push(extra.to_string());
                    if self.eat("]") {
                        break;
                    }
                    if !self.eat(",") {
                        return Err(format!("`,` or `]` was expected, found {}", self.found()));
                    }
                }
            }
            out.push_str(&format!("[{}]", extras.join(",")));
        }
        let parenthesised = self.eat("(");
        let mut specs = Vec::new();
        loop {
            self.spaces();
            let Some(op) = VERSION_OPERATORS.iter().find(|op| self.rest().starts_with(**op)) else {
                break;
            };
            self.at += op.len();
            self.spaces();
            let version =
                self.version().ok_or_else(|| format!("a version after `{op}` was expected, found {}", self.found()))?;
            specs.push(format!("{op}{version}"));
            if !self.eat(",") {
                break;
            }
        }
        if parenthesised && !self.eat(")") {
            return Err(format!("`)` was expected, found {}", self.found()));
        }
        out.push_str(&specs.join(","));
        if self.eat(";") {
            let marker = self.marker_or()?;
            out.push_str(&format!("; {marker}"));
        }
        self.spaces();
        if !self.rest().is_empty() {
            return Err(format!("nothing more was expected, found {}", self.found()));
        }
        Ok(out)
    }

    /// A name: letters and digits, with `.`, `-` and `_` between them.
    fn identifier(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))).unwrap_or(rest.len());
        let name = &rest[..len];
        let ends_well = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !ends_well(name.chars().next()) || !ends_well(name.chars().last()) {
            return None;
        }
        self.at += len;
        Some(&self.text[self.at - len..self.at])
    }

    /// A version as PEP 440 spells it, with `*` for wildcards and `+` for local versions.
    fn version(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.*+!".contains(c))).unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        self.at += len;
        Some(&self.text[self.at - len..self.at])
    }

    fn marker_or(&mut self) -> Result<String, String> {
        let mut out = self.marker_and()?;
        while self.keyword("or") {
            out = format!("{out} or {}", self.marker_and()?);
        }
        Ok(out)
    }

    fn marker_and(&mut self) -> Result<String, String> {
        let mut out = self.marker_atom()?;
        while self.keyword("and") {
            out = format!("{out} and {}", self.marker_atom()?);
        }
        Ok(out)
    }

    /// `word` as a whole word (followed by a space, a quote or a parenthesis).
    fn keyword(&mut self, word: &str) -> bool {
        self.spaces();
        let rest = self.rest();
        let whole = rest.starts_with(word)
            && rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c == ' ' || c == '\t' || c == '(' || c == '"' || c == '\'');
        if whole {
            self.at += word.len();
        }
        whole
    }

    fn marker_atom(&mut self) -> Result<String, String> {
        if self.eat("(") {
            let inner = self.marker_or()?;
            if !self.eat(")") {
                return Err(format!("`)` was expected, found {}", self.found()));
            }
            return Ok(format!("({inner})"));
        }
        let left = self.marker_value()?;
        let op = self.marker_op()?;
        let right = self.marker_value()?;
        Ok(format!("{left} {op} {right}"))
    }

    fn marker_op(&mut self) -> Result<&'static str, String> {
        self.spaces();
        for op in VERSION_OPERATORS {
            if self.rest().starts_with(op) {
                self.at += op.len();
                return Ok(op);
            }
        }
        if self.keyword("in") {
            return Ok("in");
        }
        if self.keyword("not") {
            if self.keyword("in") {
                return Ok("not in");
            }
            return Err(format!("`in` was expected after `not`, found {}", self.found()));
        }
        Err(format!("a marker operator was expected, found {}", self.found()))
    }

    /// A marker variable, or a quoted string of printable characters without quotes or backslashes.
    fn marker_value(&mut self) -> Result<String, String> {
        self.spaces();
        let rest = self.rest();
        if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let len = body
                .find(|c: char| c == quote || c.is_control() || c == '\\' || c == '"' || c == '\'')
                .unwrap_or(body.len());
            if !body[len..].starts_with(quote) {
                self.at += 1 + len;
                return Err(format!("a closing {quote} was expected, found {}", self.found()));
            }
            self.at += len + 2;
            return Ok(format!("\"{}\"", &body[..len]));
        }
        let variable = MARKER_VARIABLES.iter().find(|v| {
            rest.starts_with(**v)
                && !rest[v.len()..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match variable {
            Some(v) => {
                self.at += v.len();
                Ok(v.to_string())
            }
            None => Err(format!("a marker variable or a quoted string was expected, found {}", self.found())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn requirements_come_back_in_canonical_form() {
        for (given, expected) in [
            ("numpy", "numpy"),
            ("scikit-learn>=1.3", "scikit-learn>=1.3"),
            ("  pandas == 2.1.* ", "pandas==2.1.*"),
            ("mlflow[extras, gateway]~=2.0,<3", "mlflow[extras,gateway]~=2.0,<3"),
            ("requests (>=2.8.1, ==2.8.*)", "requests>=2.8.1,==2.8.*"),
            ("torch==2.1.0+cpu", "torch==2.1.0+cpu"),
            (
                "pywin32 >=1.0 ; sys_platform == 'win32' and (python_version<'3.12' or extra == \"x\")",
                "pywin32>=1.0; sys_platform == \"win32\" and (python_version < \"3.12\" or extra == \"x\")",
            ),
            ("a; 'linux' in sys_platform", "a; \"linux\" in sys_platform"),
            ("a ; os_name not in 'nt'", "a; os_name not in \"nt\""),
        ] {
            assert_eq!(canonical(given).as_deref(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn anything_but_one_requirement_is_refused_saying_where() {
        for (given, why) in [
            ("numpy\n--no-binary :all:", "found a control character ('\\n') at column 6"),
            ("numpy\r-e .", "a control character ('\\r')"),
            ("numpy --index-url http://x/simple", "nothing more was expected, found `-` at column 7"),
            ("--no-binary=:all:", "a package name was expected, found `-` at column 1"),
            ("-e git+https://x/y", "a package name was expected"),
            ("pkg @ https://example.org/pkg.whl", "found `@` at column 5"),
            ("pkg==1.0 \\", "found `\\` at column 10"),
            ("pkg==", "a version after `==` was expected, found the end of the entry"),
            ("pkg[a", "`,` or `]` was expected"),
            ("pkg; sys_platform == 'linux\n--pre'", "a closing ' was expected"),
            ("pkg; evil == 'x'", "a marker variable or a quoted string was expected"),
            ("pkg; python_version", "a marker operator was expected"),
            ("", "a package name was expected, found the end of the entry"),
            ("-pkg", "a package name was expected"),
        ] {
            let err = canonical(given).unwrap_err();
            assert!(err.contains(why), "{given:?}: {err}");
        }
    }
}
