//! Writes the quickstart's model, `examples/quickstart/model/heart-risk.onnx`: a logistic-regression
//! classifier over four standardised measurements, with fixed weights (the data it scores comes from
//! `examples/quickstart/generate.py`, with the same means and scales).
//!
//! Run from the repository root: `cargo run -p cove-onnx --example quickstart_model`

use cove_onnx::synth::{Classifier, Dense};

const MEANS: [f32; 4] = [54.0, 131.0, 246.0, 149.0];
const SCALES: [f32; 4] = [9.0, 17.0, 51.0, 23.0];
const WEIGHTS: [f32; 4] = [0.9, 0.6, 0.5, -1.1];
const BIAS: f32 = -0.2;

fn main() -> std::io::Result<()> {
    // Two classes with class 0's logit fixed at 0: softmax then gives class 1 the logistic probability.
    let weights = WEIGHTS.iter().flat_map(|w| [0.0, *w]).collect();
    let model = Classifier {
        input_name: "measurements".into(),
        standardize: Some((MEANS.to_vec(), SCALES.to_vec())),
        layers: vec![Dense { inputs: 4, outputs: 2, weights, bias: vec![0.0, BIAS] }],
    };
    let path = std::path::Path::new("examples/quickstart/model/heart-risk.onnx");
    std::fs::create_dir_all(path.parent().expect("a folder"))?;
    std::fs::write(path, model.to_onnx())?;
    println!("wrote {}", path.display());
    Ok(())
}
