//! Tidiness the code map relies on: every crate is named in ARCHITECTURE.md, and every Rust file
//! starts with a `//!` comment saying what it owns.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_is_on_the_map_and_every_file_says_what_it_owns() {
    let root = repo();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        let name = format!("crates/{}", krate.file_name().to_string_lossy());
        assert!(map.contains(&name), "{name} is missing from ARCHITECTURE.md");
        rust_files(&krate.path(), &mut files);
    }
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "files without a //! comment: {undocumented:?}");
}

/// The README says only what exists: every `cove` command of its tour is one the binary knows, and it
/// names the web studio only if the control plane serves it.
#[test]
fn the_readme_tour_names_only_commands_that_exist() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut checked = 0;
    for line in readme.lines().map(str::trim).filter(|l| l.starts_with("cove ")) {
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .take_while(|w| {
                w.starts_with(|c: char| c.is_ascii_lowercase()) && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        let out = std::process::Command::new(crate::support::COVE).args(&words).arg("--help").output().unwrap();
        assert!(out.status.success(), "README line `{line}`: `cove {}` is not a command", words.join(" "));
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} tour lines were found");
    assert!(readme.contains("## Studio"), "the README describes the studio");
    let ws = crate::support::Workspace::start();
    let (status, page) = ws.http("GET", "/", None, &[]);
    assert_eq!(status, 200, "the control plane serves the studio the README describes");
    assert!(page.to_string().contains("Cove studio"), "{page}");
}

/// Lines of the Rust files under `dir` (but `except`) that contain any of `needles`.
fn lines_with(dir: &Path, except: Option<&Path>, needles: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut found = Vec::new();
    for f in files.iter().filter(|f| except.is_none_or(|e| !f.starts_with(e))) {
        for (n, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle)) {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// ARCHITECTURE.md's invariants that the layout keeps: only `cove-store` holds SQL, and
/// `cove-model` and `cove-spec` do no IO (no files, sockets, processes or runtime).
#[test]
fn sql_stays_in_the_store_and_the_vocabulary_crates_do_no_io() {
    let root = repo();
    let store = root.join("crates/store/src");
    let sql = ["SELECT ", "INSERT ", "UPDATE ", "DELETE FROM", "CREATE TABLE", "CREATE TRIGGER", "PRAGMA "];
    let sources: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|src| src.is_dir() && *src != store)
        .collect();
    assert!(sources.len() >= 10, "every other crate's sources are searched: {sources:?}");
    let outside: Vec<String> = sources.iter().flat_map(|src| lines_with(src, None, &sql)).collect();
    assert!(outside.is_empty(), "SQL outside cove-store: {outside:#?}");
    assert!(!lines_with(&store, None, &sql).is_empty(), "the store's SQL is found where it is");
    let io = ["std::fs", "std::net", "std::process", "tokio", "File::", "std::env::var", "reqwest"];
    for krate in ["crates/model/src", "crates/spec/src"] {
        let found = lines_with(&root.join(krate), None, &io);
        assert!(found.is_empty(), "{krate} does IO: {found:#?}");
    }
}

/// What blocks a runtime thread when called straight from async code: file-system calls, processes
/// waited for, sleeps, and the interpreter probe (which runs one).
const BLOCKING: &[&str] =
    &["std::fs::", "std::process::Command", "std::thread::sleep", "interpreter_info(", ".canonicalize()"];

/// Lines (1-based, with their text) where `source` calls something of [`BLOCKING`] directly in an
/// async body, rather than in a closure handed to the blocking pool (`spawn_blocking`, or the state
/// store's `call`, which runs on it). Tests (from `#[cfg(test)]` on) are not looked at.
fn blocking_in_async(source: &str) -> Vec<(usize, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Body {
        Async,
        Sync,
        Pool,
    }
    let source = source.split("#[cfg(test)]").next().unwrap_or("");
    let text: Vec<char> = source.chars().collect();
    let at = |i: usize, word: &str| text[i..].iter().take(word.len()).copied().eq(word.chars());
    // What the next opening brace starts, and the bodies (and parentheses) open at this point.
    let mut pending: Option<Body> = None;
    let mut open: Vec<Body> = Vec::new();
    let (mut line, mut found) = (1, Vec::new());
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let skip_to = if at(i, "//") {
            text[i..].iter().position(|&ch| ch == '\n').map_or(text.len(), |n| i + n)
        } else if c == '"' {
            let mut j = i + 1;
            while j < text.len() && text[j] != '"' {
                j += if text[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && i + 2 < text.len() && (text[i + 2] == '\'' || text[i + 1] == '\\') {
            i + if text[i + 1] == '\\' { 4 } else { 3 }
        } else {
            i
        };
        if skip_to > i {
            line += text[i..skip_to.min(text.len())].iter().filter(|&&ch| ch == '\n').count();
            i = skip_to;
            continue;
        }
        if open.last() == Some(&Body::Async) && BLOCKING.iter().any(|b| at(i, b)) {
            found.push(line);
        }
        let word_start = i == 0 || !(text[i - 1].is_alphanumeric() || text[i - 1] == '_');
        if word_start && (at(i, "async fn ") || at(i, "async move") || at(i, "async {")) {
            pending = Some(Body::Async);
        } else if word_start && at(i, "fn ") && pending.is_none() {
            pending = Some(Body::Sync);
        } else if at(i, "spawn_blocking(") || at(i, ".call(") || at(i, "call_now(") {
            i += text[i..].iter().position(|&ch| ch == '(').unwrap();
            open.push(Body::Pool);
            i += 1;
            continue;
        }
        match c {
            '\n' => line += 1,
            '{' => open.push(pending.take().or(open.last().copied()).unwrap_or(Body::Sync)),
            '(' => open.push(open.last().copied().unwrap_or(Body::Sync)),
            '}' | ')' => {
                open.pop();
            }
            ';' => pending = None,
            _ => {}
        }
        i += 1;
    }
    let lines: Vec<&str> = source.lines().collect();
    found.dedup();
    found.into_iter().map(|n| (n, lines[n - 1].trim().to_string())).collect()
}

#[test]
fn the_scanner_finds_blocking_calls_in_async_bodies_and_only_there() {
    let sample = r#"
async fn handler(app: &App) -> Result<(), E> {
    let dir = app.dir.clone();
    let n = tokio::task::spawn_blocking(move || std::fs::read_dir(&dir).map(|d| d.count())).await?;
    let s = format!("{n} {{");
    std::fs::remove_dir_all(&app.dir)?;
    app.store.call(move |c| { std::fs::write("x", "}")?; Ok(()) }).await?;
    Ok(())
}

fn helper() {
    std::fs::remove_file("y").ok();
}

async fn spawner() {
    tokio::spawn(async move {
        let t = '{';
        std::thread::sleep(D);
    });
}
"#;
    let found: Vec<usize> = blocking_in_async(sample).into_iter().map(|(n, _)| n).collect();
    assert_eq!(found, vec![6, 18], "{:?}", blocking_in_async(sample));
}

/// The control plane's async code hands file-system walks, deletions and process probes to the
/// blocking pool: none of [`BLOCKING`] is called straight from an async body in its crates.
#[test]
fn the_control_plane_blocks_no_runtime_thread() {
    let root = repo();
    let mut files = Vec::new();
    for krate in ["server", "http", "jobs", "compute", "datastore", "workspace", "store"] {
        rust_files(&root.join("crates").join(krate).join("src"), &mut files);
    }
    let mut async_files = 0;
    let mut found = Vec::new();
    for f in &files {
        let source = std::fs::read_to_string(f).unwrap();
        if source.contains("async fn") {
            async_files += 1;
        }
        for (n, line) in blocking_in_async(&source) {
            found.push(format!("{}:{n}: {line}", f.display()));
        }
    }
    assert!(async_files >= 15, "only {async_files} files with async code were read");
    assert!(found.is_empty(), "blocking calls in async bodies: {found:#?}");
}

/// The modules of each crate use one another in one direction: no module reaches, through any chain of
/// `crate::`/`super::` paths, back to itself (a crate root, which declares every module, is left out).
#[test]
fn no_crate_has_a_module_import_loop() {
    let root = repo();
    let mut crates_read = 0;
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        let src = krate.path().join("src");
        let Ok(entries) = std::fs::read_dir(&src) else { continue };
        let mut uses: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "rs")).collect();
        let names: Vec<String> = files.iter().map(|f| f.file_stem().unwrap().to_string_lossy().to_string()).collect();
        for (file, name) in files.iter().zip(&names) {
            if name == "lib" || name == "main" {
                continue;
            }
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            // Every path that starts at the crate (or, from a top-level module, at its parent): its
            // first segment, and each first segment of a `{…}` group.
            let mut heads: Vec<String> = Vec::new();
            for prefix in ["crate::", "super::"] {
                for rest in code.split(prefix).skip(1) {
                    match rest.strip_prefix('{') {
                        Some(group) => heads.extend(
                            group
                                .split('}')
                                .next()
                                .unwrap()
                                .split(',')
                                .map(|p| p.trim().split("::").next().unwrap().to_string()),
                        ),
                        None => heads
                            .push(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap().to_string()),
                    }
                }
            }
            let mut used: Vec<String> = names
                .iter()
                .filter(|other| *other != name && *other != "lib" && *other != "main" && heads.contains(other))
                .cloned()
                .collect();
            used.dedup();
            used.sort();
            uses.insert(name.clone(), used);
        }
        crates_read += 1;
        for module in uses.keys() {
            assert!(
                !reaches(module, module, &uses, &mut Vec::new()),
                "{}: module `{module}` imports itself through {:?}",
                krate.path().display(),
                uses
            );
        }
    }
    assert!(crates_read >= 14, "only {crates_read} crates were read");
}

/// Whether `to` is reached from `from` through `uses` (a depth-first walk, so a loop of any length).
fn reaches(
    from: &str,
    to: &str,
    uses: &std::collections::BTreeMap<String, Vec<String>>,
    seen: &mut Vec<String>,
) -> bool {
    for next in uses.get(from).into_iter().flatten() {
        if next == to {
            return true;
        }
        if !seen.contains(next) {
            seen.push(next.clone());
            if reaches(next, to, uses, seen) {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_loop_finder_sees_a_loop() {
    // A made-up crate where a uses b, b uses c and c uses a; d uses a and is in no loop.
    let uses: std::collections::BTreeMap<String, Vec<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(m, u)| (m.to_string(), vec![u.to_string()]))
        .collect();
    let loops = |m: &str| reaches(m, m, &uses, &mut Vec::new());
    assert!(loops("a") && loops("b") && loops("c") && !loops("d"));
}
