//! No-code ONNX deployments: a `.onnx` model with no scoring script, scored by the worker itself over
//! CSV and Parquet files, with no Python anywhere (the workspace's interpreter does not even exist).

use crate::support::Workspace;
use cove_onnx::synth::random_mlp;
use std::path::Path;
use std::sync::Arc;

/// Writes an endpoint and a no-code deployment of `model_dir` (a model folder or `.onnx` file).
fn project(root: &Path, model: &str, settings: &str) -> (String, String) {
    let endpoint = root.join("endpoint.yml");
    std::fs::write(&endpoint, "name: tabular\n").unwrap();
    let deployment = root.join("deployment.yml");
    std::fs::write(
        &deployment,
        format!(
            "name: onnx\nendpoint_name: tabular\ntype: model\nmodel:\n  name: mlp\n  path: {model}\n  type: onnx_model\n\
             compute: azureml:local\nsettings:\n  max_concurrency_per_instance: 2\n{settings}"
        ),
    )
    .unwrap();
    (endpoint.display().to_string(), deployment.display().to_string())
}

fn csv(rows: usize, seed: usize) -> String {
    let mut s = String::from("id,a,b,c,d\n");
    for r in 0..rows {
        let v = |k: usize| ((r * 7 + k * 3 + seed) % 11) as f32 / 5.0 - 1.0;
        s.push_str(&format!("{r},{},{},{},{}\n", v(0), v(1), v(2), v(3)));
    }
    s
}

fn parquet(rows: usize) -> Vec<u8> {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
    let col = |k: f64| Arc::new(Float64Array::from((0..rows).map(|r| (r as f64 + k) / 10.0).collect::<Vec<_>>()));
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>()))),
        ("a", col(1.0)),
        ("b", col(2.0)),
        ("c", col(3.0)),
        ("d", col(4.0)),
    ];
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

#[test]
fn an_onnx_model_scores_csv_and_parquet_with_no_script_and_no_python() {
    let ws = Workspace::start_with(&["--python", "/nonexistent/python3"], &[]);
    let root = ws.dir.path().join("project");
    std::fs::create_dir_all(root.join("model")).unwrap();
    let model_bytes = random_mlp(11, 4, 8, 3).to_onnx();
    std::fs::write(root.join("model/classifier.onnx"), &model_bytes).unwrap();
    std::fs::write(root.join("model/README.txt"), "a small MLP\n").unwrap();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut inputs: Vec<(String, bytes::Bytes)> = vec![
        ("a.csv".into(), csv(5, 1).into()),
        ("b.csv".into(), csv(3, 2).into()),
        ("c.parquet".into(), parquet(4).into()),
        ("d.csv".into(), csv(2, 3).into()),
        ("e.txt".into(), "not a table\n".into()),
    ];
    for (name, bytes) in &inputs {
        std::fs::write(data.join(name), bytes).unwrap();
    }
    let (endpoint, deployment) = project(&root, "model", "  mini_batch_size: 2\n");
    ws.cove(&["endpoint", "create", "-f", &endpoint]).ok();
    ws.cove(&["deployment", "create", "-f", &deployment, "--set-default"]).ok();
    let dep = ws.cove(&["--json", "deployment", "show", "onnx", "-e", "tabular"]).ok().json();
    assert_eq!(dep["onnx_model"], "model/classifier.onnx", "{dep:#}");
    assert!(dep["scoring_script"].is_null());
    assert!(dep["sandbox"].as_str().unwrap().starts_with("not needed"), "{dep:#}");

    let run = ws.cove(&["--json", "endpoint", "invoke", "tabular", "--input", &data.display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["progress"]["items_ok"], 4, "{job:#}");
    assert_eq!(job["progress"]["items_failed"], 1, "{job:#}");

    // The lines the library gives for the same files, in mini-batch (file) order. Probabilities may
    // differ in the last bit: a different number of rows per call takes different kernels.
    let model = cove_onnx::OnnxModel::load(&model_bytes).unwrap();
    inputs.pop();
    let expected = String::from_utf8(model.score(&inputs).output).unwrap();
    let got = ws.output_lines(&job);
    assert_eq!(got.len(), expected.lines().count());
    for (got, want) in got.iter().zip(expected.lines()) {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.split(',').collect(), want.split(',').collect());
        assert_eq!((g[0], g[1], g[5]), (w[0], w[1], w[5]), "{got} vs {want}");
        for k in 2..5 {
            let (a, b): (f32, f32) = (g[k].parse().unwrap(), w[k].parse().unwrap());
            assert!((a - b).abs() < 1e-6, "{got} vs {want}");
        }
    }
    assert_eq!(got.len(), 5 + 3 + 4 + 2);
    assert!(got[0].starts_with("0,") && got[0].ends_with(",a.csv"), "{got:?}");
    assert!(got.iter().any(|l| l.ends_with(",c.parquet")));
    // The unreadable file is a failed item, with its reason in the user error log.
    let name = job["name"].as_str().unwrap();
    // Workers upload their logs before reporting, so they are in place once the job has completed.
    let logs = ws.path().join("state/objects/jobs").join(name).join("logs/user/error/local-0");
    let errors: String = ["process000.txt", "process001.txt"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(logs.join(p)).ok())
        .collect();
    assert!(errors.contains("`e.txt`") && errors.contains("File type 'txt' is not supported"), "{errors}");
}

#[test]
fn a_single_onnx_file_deploys_as_the_model() {
    let ws = Workspace::start_with(&["--python", "/nonexistent/python3"], &[]);
    let root = ws.dir.path().join("project");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("mlp.onnx"), random_mlp(3, 4, 4, 2).to_onnx()).unwrap();
    std::fs::write(root.join("data/x.csv"), csv(10, 0)).unwrap();
    let (endpoint, deployment) = project(&root, "mlp.onnx", "");
    ws.cove(&["endpoint", "create", "-f", &endpoint]).ok();
    ws.cove(&["deployment", "create", "-f", &deployment, "--set-default"]).ok();
    let input = root.join("data").display().to_string();
    let run = ws.cove(&["--json", "endpoint", "invoke", "tabular", "--input", &input]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(ws.output_lines(&job).len(), 10);
}

#[test]
fn models_a_worker_could_not_run_are_refused_at_deployment() {
    let ws = Workspace::start();
    let root = ws.dir.path().join("project");
    std::fs::create_dir_all(&root).unwrap();
    ws.cove(&["endpoint", "create", "-f", &project(&root, "none", "").0]).ok();
    let cases: &[(&str, &[(&str, &[u8])], &str)] = &[
        ("none", &[("weights.bin", b"0")], "model: the model holds no .onnx file"),
        ("two", &[("a.onnx", b"0"), ("b.onnx", b"0")], "model: the model holds 2 .onnx files (a.onnx, b.onnx)"),
        ("bad", &[("m.onnx", b"definitely not protobuf")], "model: `bad/m.onnx`: not a loadable ONNX model"),
    ];
    for (folder, files, message) in cases {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        for (name, bytes) in *files {
            std::fs::write(root.join(folder).join(name), bytes).unwrap();
        }
        let (_, deployment) = project(&root, folder, "");
        ws.cove(&["deployment", "create", "-f", &deployment]).fails_with(2, message);
    }
    // A custom model with no scoring script says how to deploy an ONNX model without one.
    let (_, deployment) = project(&root, "none", "");
    let yaml = std::fs::read_to_string(&deployment).unwrap().replace("type: onnx_model", "type: custom_model");
    std::fs::write(&deployment, yaml).unwrap();
    ws.cove(&["deployment", "create", "-f", &deployment]).fails_with(2, "type: onnx_model needs none");
    let (status, body) = ws.http("GET", "/api/v1/endpoints/tabular/deployments", None, &[]);
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(0)), "nothing half-created: {body}");
}

/// The limited child that checks a model must pass a small model every time: an address-space limit
/// counts what an allocator reserves, not what it uses, and one reservation too many made one check in
/// a hundred or so fail on the bundled model.
#[test]
fn the_model_check_passes_a_small_model_every_time() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cove"));
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/model/heart-risk.onnx");
    let bytes = bytes::Bytes::from(std::fs::read(&model).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    const CHECKS: usize = 600;
    let failed: Vec<String> = rt.block_on(async {
        let mut failed = Vec::new();
        // Two at a time, one per core: the checks are all the work this test does.
        for _ in 0..CHECKS / 2 {
            let (a, b) = tokio::join!(
                cove_server::modelcheck::check_onnx(exe, bytes.clone()),
                cove_server::modelcheck::check_onnx(exe, bytes.clone())
            );
            failed.extend([a, b].into_iter().filter_map(Result::err));
        }
        failed
    });
    assert!(failed.is_empty(), "{} of {CHECKS} checks failed, the first: {}", failed.len(), failed[0]);
}
