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
    assert!(predictions.starts_with("patients-000.csv,p0001,"));
}
