//! Finds the 1-based line of a dotted field path (`settings.retry_settings.timeout`) in YAML text.
//! serde_norway's `Value` forgets positions, so rules checked after parsing point at their key through this walk.
//! It follows block-mapping indentation only; flow mappings and sequences are not entered, and callers fall back to the nearest ancestor.

struct Line<'a> {
    no: usize,
    indent: usize,
    body: &'a str,
}

/// Returns the line of the key at `path`, or `None` when it is not written as a block-mapping key.
pub(crate) fn locate(text: &str, path: &str) -> Option<usize> {
    let lines = significant_lines(text);
    let (mut lo, mut hi) = (0, lines.len());
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for segment in path.split('.') {
        let indent = lines[lo..hi].first()?.indent;
        if parent_indent.is_some_and(|p| indent <= p) {
            return None;
        }
        let at = (lo..hi).find(|&i| lines[i].indent == indent && key_of(lines[i].body) == Some(segment))?;
        found = Some(lines[at].no);
        parent_indent = Some(indent);
        lo = at + 1;
        hi = (lo..hi).find(|&i| lines[i].indent <= indent).unwrap_or(hi);
    }
    found
}

/// Returns the line of `path`, or else of its nearest ancestor that can be found.
pub(crate) fn locate_nearest(text: &str, path: &str) -> Option<usize> {
    let mut path = path;
    loop {
        if let Some(line) = locate(text, path) {
            return Some(line);
        }
        path = &path[..path.rfind('.')?];
    }
}

/// Returns the line of the second `key` in the block mapping whose first key starts at `line`:`column` (1-based),
/// since serde_norway reports a duplicate key at the start of its mapping rather than at the repeat.
pub(crate) fn locate_duplicate(text: &str, line: usize, column: usize, key: &str) -> Option<usize> {
    let col = column.checked_sub(1)?;
    let mut seen = 0;
    for l in significant_lines(text).into_iter().skip_while(|l| l.no < line) {
        // The first line may be a sequence item (`- a: 1`), so read it from the mapping's column.
        let body = if l.no == line {
            l.body.get(col.checked_sub(l.indent)?..)?
        } else if l.indent == col {
            l.body
        } else if l.indent < col {
            break;
        } else {
            continue;
        };
        if key_of(body) == Some(key) {
            seen += 1;
            if seen == 2 {
                return Some(l.no);
            }
        }
    }
    None
}

fn significant_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let body = raw.trim_start_matches(' ');
            let trimmed = body.trim_end();
            let skip = trimmed.is_empty()
                || trimmed.starts_with('#')
                || trimmed.starts_with('%')
                || trimmed == "---"
                || trimmed == "...";
            (!skip).then_some(Line { no: i + 1, indent: raw.len() - body.len(), body })
        })
        .collect()
}

/// Returns the key of a `key: value` or `key:` line, unquoted; `None` for sequence items and other lines.
fn key_of(body: &str) -> Option<&str> {
    if let Some(quote @ ('"' | '\'')) = body.chars().next() {
        let end = body[1..].find(quote)? + 1;
        return body[end + 1..].trim_start().starts_with(':').then(|| &body[1..end]);
    }
    if body.starts_with("- ") || body == "-" || body.starts_with("? ") {
        return None;
    }
    let colon = body
        .match_indices(':')
        .map(|(i, _)| i)
        .find(|&i| body[i + 1..].chars().next().is_none_or(char::is_whitespace))?;
    Some(body[..colon].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment
name: x
settings:
  mini_batch_size: 3

  retry_settings:
    # timeout below
    max_retries: 2
    timeout: 5
  'logging_level': info
other:
  timeout: 9
flow: {a: 1}
";

    #[test]
    fn finds_nested_keys_by_indentation() {
        assert_eq!(locate(DOC, "name"), Some(2));
        assert_eq!(locate(DOC, "settings.mini_batch_size"), Some(4));
        assert_eq!(locate(DOC, "settings.retry_settings.timeout"), Some(9));
        assert_eq!(locate(DOC, "settings.logging_level"), Some(10));
        assert_eq!(locate(DOC, "other.timeout"), Some(12));
    }

    #[test]
    fn missing_paths_fall_back_to_ancestors() {
        assert_eq!(locate(DOC, "settings.timeout"), None);
        assert_eq!(locate(DOC, "name.x"), None);
        assert_eq!(locate(DOC, "flow.a"), None);
        assert_eq!(locate_nearest(DOC, "flow.a"), Some(13));
        assert_eq!(locate_nearest(DOC, "settings.retry_settings.nope"), Some(6));
        assert_eq!(locate_nearest(DOC, "nope.x"), None);
    }

    #[test]
    fn finds_the_repeated_key() {
        assert_eq!(locate_duplicate("a: 1\nb: 2\na: 3\n", 1, 1, "a"), Some(3));
        assert_eq!(locate_duplicate("l:\n- a: 1\n  b:\n    a: 0\n  a: 3\n", 2, 3, "a"), Some(5));
        assert_eq!(locate_duplicate("m: {a: 1, a: 2}\n", 1, 4, "a"), None);
    }
}
