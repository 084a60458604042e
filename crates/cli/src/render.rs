//! Human output: aligned tables, and the one place that decides between a progress bar and plain lines.

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// How long-running work shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    Bar,
    Lines,
    Json,
}

/// A bar only on a terminal outside CI; JSON Lines when asked.
pub fn display_mode(stderr_is_tty: bool, is_ci: bool, json: bool) -> DisplayMode {
    if json {
        DisplayMode::Json
    } else if stderr_is_tty && !is_ci {
        DisplayMode::Bar
    } else {
        DisplayMode::Lines
    }
}

pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["NAME", "STATE"], &[vec!["a".into(), "Running".into()], vec!["longer".into(), "x".into()]]);
        assert_eq!(t, "NAME    STATE\na       Running\nlonger  x\n");
    }

    #[test]
    fn bars_only_on_terminals_outside_ci() {
        assert_eq!(display_mode(true, false, false), DisplayMode::Bar);
        assert_eq!(display_mode(true, true, false), DisplayMode::Lines);
        assert_eq!(display_mode(false, false, false), DisplayMode::Lines);
        assert_eq!(display_mode(true, false, true), DisplayMode::Json);
        assert_eq!(plural(1, "batch", "batches"), "1 batch");
        assert_eq!(plural(2, "batch", "batches"), "2 batches");
    }
}
