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
