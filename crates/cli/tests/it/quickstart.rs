//! The main job: `cove quickstart` scores the bundled data with the bundled model.

use crate::support::COVE;

#[test]
fn quickstart_scores_the_bundled_data() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        std::process::Command::new(COVE).args(["quickstart", "--dir"]).arg(dir.path()).env("CI", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Completed"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("Predictions on disk: ")).expect("says where the predictions are");
    let predictions = std::fs::read_to_string(line.trim_start_matches("Predictions on disk: ")).unwrap();
    assert_eq!(predictions.lines().count(), 200, "10 files of 20 patients");
    let first: Vec<&str> = predictions.lines().next().unwrap().split(',').collect();
    assert_eq!((first[0], first[4]), ("0", "patients-000.csv"), "{predictions}");
    // The first patient (51.7, 131.7, 236.0, 140.7) through the model's logistic regression.
    let z: f32 = 0.9 * (51.7 - 54.0) / 9.0 + 0.6 * (131.7 - 131.0) / 17.0 + 0.5 * (236.0 - 246.0) / 51.0
        - 1.1 * (140.7 - 149.0) / 23.0
        - 0.2;
    let p1: f32 = first[3].parse().unwrap();
    assert!((p1 - 1.0 / (1.0 + (-z).exp())).abs() < 1e-5, "{first:?}, expected p1 for z={z}");
    assert_eq!(first[1], if p1 >= 0.5 { "1" } else { "0" });
}

/// The quickstart needs only what a fresh machine has: its no-code deployment runs no user code, so
/// a host where bubblewrap (and Python) cannot be found runs it all the same.
#[test]
fn quickstart_runs_on_a_host_without_bubblewrap_or_python() {
    assert!(std::process::Command::new("bwrap").arg("--version").output().is_ok(), "bubblewrap is on this host");
    let bare = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(COVE)
        .args(["quickstart", "--dir"])
        .arg(dir.path())
        .env("CI", "1")
        .env("PATH", bare.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Completed"), "{stdout}");
}
