//! No-code scoring end to end at the library level: real models built by `synth`, real CSV and
//! Parquet bytes, through tract.

use bytes::Bytes;
use cove_onnx::synth::{random_mlp, Classifier, Dense};
use cove_onnx::OnnxModel;
use proptest::prelude::*;
use std::sync::Arc;

fn mlp() -> OnnxModel {
    OnnxModel::load(&random_mlp(7, 4, 8, 3).to_onnx()).expect("the synthetic MLP loads")
}

fn csv(rows: &[[f32; 4]]) -> Bytes {
    let mut s = String::from("id,a,b,c,d\n");
    for (i, r) in rows.iter().enumerate() {
        s.push_str(&format!("{i},{},{},{},{}\n", r[0], r[1], r[2], r[3]));
    }
    Bytes::from(s)
}

fn lines(out: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8(out.to_vec()).unwrap().lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn a_csv_file_gives_one_line_per_row_with_label_probabilities_and_file() {
    let model = mlp();
    assert_eq!(model.describe(), "features[4] -> prediction=label, probabilities=probabilities[3]");
    let scored = model.score(&[("in/part-0.csv".into(), csv(&[[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 2.0, 0.5]]))]);
    assert_eq!(scored.files, vec![Ok(2)]);
    let rows = lines(&scored.output);
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 6, "row,label,p0,p1,p2,file: {row:?}");
        assert_eq!(row[0], i.to_string());
        assert_eq!(row[5], "part-0.csv");
        let probs: Vec<f32> = row[2..5].iter().map(|p| p.parse().unwrap()).collect();
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{probs:?}");
        let best = (0..3).max_by(|a, b| probs[*a].total_cmp(&probs[*b])).unwrap();
        assert_eq!(row[1], best.to_string());
    }
}

#[test]
fn a_logistic_model_computes_what_its_weights_say() {
    // Two classes, class 1 weighted by w: softmax gives sigmoid(w·(x-mean)/scale + b).
    let w = [0.9f32, -1.1];
    let model = Classifier {
        input_name: "x".into(),
        standardize: Some((vec![1.0, 2.0], vec![2.0, 4.0])),
        layers: vec![Dense { inputs: 2, outputs: 2, weights: vec![0.0, w[0], 0.0, w[1]], bias: vec![0.0, -0.2] }],
    };
    let model = OnnxModel::load(&model.to_onnx()).unwrap();
    let scored = model.score(&[("p.csv".into(), Bytes::from("id,u,v\nk,3,-2\n"))]);
    let row = &lines(&scored.output)[0];
    let z = w[0] * (3.0 - 1.0) / 2.0 + w[1] * (-2.0 - 2.0) / 4.0 - 0.2;
    let p1: f32 = row[3].parse().unwrap();
    assert!((p1 - 1.0 / (1.0 + (-z).exp())).abs() < 1e-5, "{row:?} vs z={z}");
    assert_eq!(row[1], "1");
}

#[test]
fn inputs_named_after_columns_are_fed_by_name() {
    // One input `x` of width 1: by name it reads column `x`, not the last column.
    let model = Classifier {
        input_name: "x".into(),
        standardize: None,
        layers: vec![Dense { inputs: 1, outputs: 2, weights: vec![0.0, 1.0], bias: vec![0.0, 0.0] }],
    };
    let model = OnnxModel::load(&model.to_onnx()).unwrap();
    let scored = model.score(&[("f.csv".into(), Bytes::from("x,id\n10,-10\n-10,10\n"))]);
    let rows = lines(&scored.output);
    assert_eq!((rows[0][1].as_str(), rows[1][1].as_str()), ("1", "0"), "{rows:?}");
}

#[test]
fn unreadable_files_fail_alone_with_their_reason() {
    let model = mlp();
    let files = vec![
        ("good.csv".to_string(), csv(&[[0.0; 4]])),
        ("notes.txt".to_string(), Bytes::from("hello")),
        ("empty.csv".to_string(), Bytes::new()),
        ("narrow.csv".to_string(), Bytes::from("a,b\n1,2\n")),
        ("text.csv".to_string(), Bytes::from("id,a,b,c,d\n0,1,2,x,4\n")),
        ("hole.csv".to_string(), Bytes::from("id,a,b,c,d\n0,1,2,3,4\n1,1,,3,4\n")),
        ("ragged.csv".to_string(), Bytes::from("id,a,b,c,d\n0,1,2\n")),
        ("good2.csv".to_string(), csv(&[[1.0; 4], [2.0; 4]])),
    ];
    let scored = model.score(&files);
    assert_eq!(scored.files[0], Ok(1));
    assert_eq!(scored.files[7], Ok(2));
    let reasons: Vec<&str> = scored.failed().collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(reasons[0].starts_with("File type 'txt' is not supported"), "{}", reasons[0]);
    assert!(reasons[1].contains("empty"), "{}", reasons[1]);
    assert_eq!(reasons[2], "the model needs 4 feature columns and the file has 2 (a, b)");
    assert!(reasons[3].contains('x') && reasons[3].contains("column"), "{}", reasons[3]);
    assert_eq!(reasons[4], "row 1: column `b` is empty or not a number");
    assert!(!reasons[5].is_empty());
    let rows = lines(&scored.output);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().map(|r| r[5].as_str()).collect::<Vec<_>>(), ["good.csv", "good2.csv", "good2.csv"]);
}

#[test]
fn one_call_per_mini_batch_matches_one_call_per_file() {
    let model = mlp();
    let a = csv(&[[0.5, 0.1, -0.3, 2.0], [0.0, 0.0, 0.0, 0.0]]);
    let b = csv(&[[3.0, -2.0, 1.0, 0.25]]);
    let together = model.score(&[("a.csv".into(), a.clone()), ("b.csv".into(), b.clone())]);
    let mut apart = model.score(&[("a.csv".into(), a)]).output;
    apart.extend(model.score(&[("b.csv".into(), b)]).output);
    assert_eq!(String::from_utf8(together.output).unwrap(), String::from_utf8(apart).unwrap());
}

#[test]
fn parquet_files_are_read_with_any_numeric_column_type() {
    use arrow_array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(StringArray::from(vec!["r0", "r1"]))),
        ("a", Arc::new(Float64Array::from(vec![0.5, 1.5]))),
        ("b", Arc::new(Int32Array::from(vec![1, 2]))),
        ("c", Arc::new(Float64Array::from(vec![-0.5, 0.0]))),
        ("d", Arc::new(Float64Array::from(vec![2.0, 3.0]))),
    ];
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let model = mlp();
    let from_parquet = model.score(&[("t.parquet".into(), Bytes::from(buf))]);
    assert_eq!(from_parquet.files, vec![Ok(2)]);
    let from_csv = model.score(&[("t.parquet".into(), Bytes::from("id,a,b,c,d\nr0,0.5,1,-0.5,2\nr1,1.5,2,0,3\n"))]);
    // Same values, same predictions (the CSV is named .parquet here only to compare outputs).
    assert!(from_csv.files[0].is_err());
    let from_csv = model.score(&[("t.parquet.csv".into(), Bytes::from("id,a,b,c,d\nr0,0.5,1,-0.5,2\nr1,1.5,2,0,3\n"))]);
    let strip = |out: &[u8]| lines(out).into_iter().map(|r| r[..5].join(",")).collect::<Vec<_>>();
    assert_eq!(strip(&from_parquet.output), strip(&from_csv.output));
    let broken = model.score(&[("t.parquet".into(), Bytes::from_static(b"PAR1 not really"))]);
    assert!(broken.failed().next().unwrap().starts_with("not a readable Parquet file"));
}

#[test]
fn models_that_cannot_score_tables_are_refused_with_the_reason() {
    assert!(OnnxModel::load(b"not a model").unwrap_err().starts_with("not a loadable ONNX model"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever a file holds, reading it either scores rows or fails the file with a reason.
    #[test]
    fn any_bytes_score_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..400), parquet in any::<bool>()) {
        let model = mlp();
        let name = if parquet { "f.parquet" } else { "f.csv" };
        let scored = model.score(&[(name.to_string(), Bytes::from(data))]);
        prop_assert_eq!(scored.files.len(), 1);
        if let Err(reason) = &scored.files[0] {
            prop_assert!(!reason.is_empty());
            prop_assert!(scored.output.is_empty());
        }
    }

    /// CSV-shaped text with random cells: never a panic, and a scored file has one line per row.
    #[test]
    fn csv_like_text_scores_or_fails_cleanly(cells in proptest::collection::vec("[0-9a-z.,\"\n -]{0,6}", 0..60)) {
        let text = format!("id,a,b,c,d\n{}", cells.join(","));
        let scored = mlp().score(&[("f.csv".to_string(), Bytes::from(text))]);
        if let Ok(rows) = scored.files[0] {
            prop_assert_eq!(scored.output.iter().filter(|b| **b == b'\n').count() as u64, rows);
        }
    }
}

/// Models exported by skl2onnx, scored by Cove, give ONNX Runtime's predictions on the same file
/// (`tests/reference`, written by `generate.py`): labels exactly, probabilities to the last bits.
#[test]
fn models_from_a_mainstream_exporter_score_as_onnx_runtime_does() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let input = Bytes::from(std::fs::read(dir.join("input.csv")).unwrap());
    for (model, tolerance) in [("logreg-f32", 1e-6), ("linear-f64", 1e-12)] {
        let loaded = OnnxModel::load(&std::fs::read(dir.join(format!("{model}.onnx"))).unwrap())
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let scored = loaded.score(&[("input.csv".into(), input.clone())]);
        assert_eq!(scored.files, vec![Ok(25)], "{model}");
        let got = lines(&scored.output);
        let expected = std::fs::read_to_string(dir.join(format!("{model}.expected.csv"))).unwrap();
        let expected: Vec<Vec<&str>> = expected.lines().skip(1).map(|l| l.split(',').collect()).collect();
        assert_eq!(got.len(), expected.len(), "{model}");
        for (row, want) in got.iter().zip(&expected) {
            assert_eq!(row.len(), 6, "{model}: row,label,p0,p1,p2,file: {row:?}");
            assert_eq!(
                (&row[0], &row[1]),
                (&want[0].to_string(), &want[1].to_string()),
                "{model}: {row:?} vs {want:?}"
            );
            for k in 0..3 {
                let (a, b): (f64, f64) = (row[2 + k].parse().unwrap(), want[2 + k].parse().unwrap());
                assert!((a - b).abs() <= tolerance, "{model} row {}: p{k} {a} vs ONNX Runtime's {b}", row[0]);
            }
            assert_eq!(row[5], "input.csv");
        }
    }
}
