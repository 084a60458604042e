//! Refuses hostile YAML before serde sees it: oversized text, deep nesting and anchors/aliases.
//! Aliases can multiply a small document into a huge one, and deep nesting costs recursion, so both are cheaper to
//! reject with a linear scan than to defend against inside the parser. The scan is approximate tokenizing, not a YAML parser.

/// The largest document accepted, in bytes.
pub(crate) const MAX_BYTES: usize = 1 << 20;
/// The deepest nesting of block and flow collections accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// Returns the 1-based line (when known) and reason the text is refused.
pub(crate) fn check(text: &str) -> Result<(), (Option<usize>, String)> {
    if text.len() > MAX_BYTES {
        return Err((None, format!("document is {} bytes, over the 1 MiB limit", text.len())));
    }
    let mut scan = Scanner::default();
    for (i, line) in text.lines().enumerate() {
        scan.line(line).map_err(|msg| (Some(i + 1), msg))?;
    }
    Ok(())
}

#[derive(Default)]
struct Scanner {
    /// Columns of the open block collections, innermost last.
    levels: Vec<usize>,
    /// Depth of open `[`/`{` collections.
    flow: usize,
    /// The quote of a quoted scalar still open from an earlier line.
    quote: Option<char>,
    /// The column a block scalar (`|`/`>`) must be indented beyond; its lines are text, not YAML.
    block_scalar: Option<usize>,
}

impl Scanner {
    fn line(&mut self, line: &str) -> Result<(), String> {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if let Some(col) = self.block_scalar {
            if body.trim().is_empty() || indent > col {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let in_structure = self.quote.is_none() && self.flow == 0;
        if in_structure && (body.trim().is_empty() || body.starts_with('#')) {
            return Ok(());
        }
        if in_structure {
            while self.levels.last().is_some_and(|&top| top >= indent) {
                self.levels.pop();
            }
            self.push_level(indent)?;
        }
        self.tokens(body, indent)
    }

    fn push_level(&mut self, col: usize) -> Result<(), String> {
        self.levels.push(col);
        self.check_depth()
    }

    fn check_depth(&self) -> Result<(), String> {
        if self.levels.len() + self.flow > MAX_DEPTH {
            return Err(format!("nesting is deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn tokens(&mut self, body: &str, indent: usize) -> Result<(), String> {
        let chars: Vec<(usize, char)> = body.char_indices().collect();
        let blank_at = |k: usize| chars.get(k).is_none_or(|&(_, c)| c == ' ' || c == '\t');
        // A token starts at the line start and after `: `, `- `, `[`, `{` and `,` in flow; only there do
        // `&`, `*`, quotes and block-scalar indicators mean something, so `a*b` or `don't` stay plain text.
        let mut token_start = self.quote.is_none();
        let mut k = 0;
        while k < chars.len() {
            let (pos, c) = chars[k];
            if let Some(q) = self.quote {
                if q == '"' && c == '\\' {
                    k += 1;
                } else if c == q && q == '\'' && chars.get(k + 1).is_some_and(|&(_, n)| n == '\'') {
                    k += 1;
                } else if c == q {
                    self.quote = None;
                }
                k += 1;
                continue;
            }
            if c == '#' && (k == 0 || blank_at(k - 1)) {
                return Ok(());
            }
            if token_start {
                match c {
                    ' ' | '\t' => {}
                    '\'' | '"' => {
                        self.quote = Some(c);
                        token_start = false;
                    }
                    '&' | '*' if !blank_at(k + 1) => {
                        let name: String = body[pos..].chars().take_while(|c| !c.is_whitespace()).take(40).collect();
                        let what = if c == '&' { "anchors" } else { "aliases" };
                        return Err(format!(
                            "yaml {what} are not supported (found `{name}`); write the values out in full"
                        ));
                    }
                    '-' | '?' if self.flow == 0 && blank_at(k + 1) => self.push_level(indent + pos + 2)?,
                    '|' | '>' if self.flow == 0 => {
                        self.block_scalar = Some(self.levels.last().copied().unwrap_or(indent));
                        return Ok(());
                    }
                    '!' => {
                        // A tag may precede an anchor, so the token after it still counts as a start.
                        while k + 1 < chars.len() && !blank_at(k + 1) {
                            k += 1;
                        }
                    }
                    '[' | '{' => {}
                    _ => token_start = false,
                }
            }
            match c {
                '[' | '{' if token_start => {
                    self.flow += 1;
                    self.check_depth()?;
                }
                ']' | '}' if self.flow > 0 => {
                    self.flow -= 1;
                    token_start = false;
                }
                ',' if self.flow > 0 => token_start = true,
                ':' if blank_at(k + 1) || (self.flow > 0 && matches!(chars.get(k + 1), Some((_, ',' | ']' | '}')))) => {
                    token_start = true;
                }
                _ => {}
            }
            k += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> (Option<usize>, String) {
        check(text).unwrap_err()
    }

    #[test]
    fn plain_text_with_ampersands_and_stars_passes() {
        let ok = "\
description: rock & roll *not an alias*
image: a*b&c
quoted: '*x' 
dq: \"&y\"
list: [a, 'b', {c: d}]
text: |
  *bold* &stuff
  - *x
url: https://x.y/a:b # &comment
tagged: !!str value
";
        assert_eq!(check(ok), Ok(()));
    }

    #[test]
    fn anchors_and_aliases_are_refused() {
        assert_eq!(refused("a: &base\n  x: 1\nb: *base\n").0, Some(1));
        assert_eq!(refused("a: 1\nb:\n  - *base\n").0, Some(3));
        assert_eq!(refused("a: [1, *x]\n").0, Some(1));
        assert_eq!(refused("a: !!map &x {}\n").0, Some(1));
        assert_eq!(
            refused("x: 1\n<<: *base\n"),
            (Some(2), "yaml aliases are not supported (found `*base`); write the values out in full".into())
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let flow = format!("a: {}{}\n", "[".repeat(70), "]".repeat(70));
        assert_eq!(refused(&flow), (Some(1), "nesting is deeper than 64 levels".into()));
        let mut block = String::new();
        for depth in 0..70 {
            block.push_str(&format!("{}k{depth}:\n", " ".repeat(depth * 2)));
        }
        assert_eq!(refused(&block).0, Some(65));
        let shallow = format!("a: {}{}\n", "[".repeat(60), "]".repeat(60));
        assert_eq!(check(&shallow), Ok(()));
    }

    #[test]
    fn oversized_text_is_refused() {
        let big = format!("description: {}\n", "x".repeat(MAX_BYTES));
        assert_eq!(refused(&big), (None, format!("document is {} bytes, over the 1 MiB limit", big.len())));
    }
}
