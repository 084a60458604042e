//! Pause points for the crash tests: named moments where a process stops for a while so that a test
//! can kill it exactly there (during planning, before a worker's report, between a large part's
//! storing and its report's applying, while finalizing, between two files of a published set, before
//! an ended job's parts are deleted). With `COVE_PAUSE_AT=<point>` and
//! `COVE_PAUSE_DIR=<folder>` in its environment, a process that reaches `<point>` for the first time writes `<folder>/<point>.<pid>` (so the test
//! knows whom to kill, and when) and pauses for `COVE_PAUSE_MS` (5000 by default). Without them,
//! which is always outside the tests, a pause point costs one look at a value read once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

struct Pause {
    point: String,
    dir: PathBuf,
    length: Duration,
    taken: AtomicBool,
}

fn configured() -> Option<&'static Pause> {
    static PAUSE: OnceLock<Option<Pause>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let point = std::env::var("COVE_PAUSE_AT").ok()?;
            let dir = PathBuf::from(std::env::var_os("COVE_PAUSE_DIR")?);
            let ms = std::env::var("COVE_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
            Some(Pause { point, dir, length: Duration::from_millis(ms), taken: AtomicBool::new(false) })
        })
        .as_ref()
}

/// How long to pause at `point`: only the first time this process reaches the configured point.
pub fn pause_at(point: &str) -> Option<Duration> {
    let pause = configured().filter(|p| p.point == point)?;
    if pause.taken.swap(true, Ordering::SeqCst) {
        return None;
    }
    let _ = std::fs::write(pause.dir.join(format!("{point}.{}", std::process::id())), b"");
    Some(pause.length)
}
