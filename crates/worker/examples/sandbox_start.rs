//! Benchmark: what the scoring sandbox adds to starting a scorer process.
//!
//! Starts the interpreter (`python3 -c pass`) directly and inside the sandbox exactly as the worker
//! builds it (`cove_worker::sandbox::bwrap_args`), interleaved so that machine noise hits both alike,
//! and reports medians and the difference. Run: `cargo run --release -p cove-worker --example sandbox_start`.
//! Writes `bench/results/sandbox-start.md` and `.json`.

use cove_worker::sandbox::{bwrap_args, interpreter, FileView, BWRAP};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 40;

fn time(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd.status().expect("the command starts");
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed().as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    cove_worker::sandbox::available().expect("the sandbox works on this host");
    let interp = interpreter("python3").expect("python3 runs");
    let scratch = std::env::temp_dir().join(format!("cove-bench-{}", std::process::id()));
    let dirs: Vec<_> =
        ["model", "code", "inputs", "outputs", "parts", "logs"].iter().map(|d| scratch.join(d)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("scratch folders");
    }
    let view = FileView { read_only: dirs[..3].to_vec(), writable: dirs[3..].to_vec() };
    let args = bwrap_args(&interp, &view, false);
    let (mut direct, mut sandboxed) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        time(Command::new(&interp.executable).args(["-c", "pass"]));
    }
    for _ in 0..RUNS {
        direct.push(time(Command::new(&interp.executable).args(["-c", "pass"])));
        sandboxed.push(time(Command::new(BWRAP).args(&args).arg(&interp.executable).args(["-c", "pass"])));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (d, s) = (median(&mut direct), median(&mut sandboxed));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let bwrap_version =
        String::from_utf8_lossy(&Command::new(BWRAP).arg("--version").output().map(|o| o.stdout).unwrap_or_default())
            .trim()
            .to_string();
    let py_version = String::from_utf8_lossy(
        &Command::new(&interp.executable).arg("--version").output().map(|o| o.stdout).unwrap_or_default(),
    )
    .trim()
    .to_string();
    let report = format!(
        "# Sandbox start cost\n\n\
         Machine: {cpu}, {cores} cores; {bwrap_version}; {py_version}.\n\
         {RUNS} interleaved runs each; medians.\n\n\
         | start | median ms |\n| --- | --- |\n\
         | `python3 -c pass` directly (baseline) | {d:.1} |\n\
         | the same inside the scoring sandbox | {s:.1} |\n\
         | sandbox overhead | {:.1} ms ({:.2}x the baseline) |\n\n\
         Target: under 50 ms of overhead per scorer process start: {}.\n",
        s - d,
        s / d,
        if s - d < 50.0 { "met" } else { "MISSED" }
    );
    let json = format!(
        "{{\"runs\": {RUNS}, \"direct_median_ms\": {d:.2}, \"sandboxed_median_ms\": {s:.2}, \"overhead_ms\": {:.2}, \"ratio\": {:.3}, \"cpu\": {cpu:?}, \"cores\": {cores}}}\n",
        s - d,
        s / d
    );
    std::fs::create_dir_all("bench/results").expect("results folder");
    std::fs::write("bench/results/sandbox-start.md", &report).expect("write the report");
    std::fs::write("bench/results/sandbox-start.json", json).expect("write the JSON");
    print!("{report}");
}
