//! No-code ONNX scoring: a deployment of an ONNX model with no scoring script runs here, in the worker
//! process, with no Python.
//!
//! A mini-batch's files are read with the Arrow readers (CSV, or Parquet by extension), their rows are
//! fed to the model in one call per mini-batch (tract, pure Rust), and the predictions are written as
//! one line per input row: `row,prediction[,probability…],file`. A file that cannot be read is a failed
//! item with its reason; the others in the mini-batch are still scored.

mod columns;
mod model;
mod output;
mod read;
mod shape;
pub mod synth;

pub use columns::FeatureColumns;
pub use model::{InputSpec, OnnxModel, OutputRoles};

/// The outcome of scoring one mini-batch.
#[derive(Debug, Default)]
pub struct Scored {
    /// The prediction lines of every readable file, in file order.
    pub output: Vec<u8>,
    /// Per input file, in order: the rows scored, or why the file failed.
    pub files: Vec<Result<u64, String>>,
}

impl Scored {
    pub fn succeeded(&self) -> u64 {
        self.files.iter().filter(|f| f.is_ok()).count() as u64
    }

    pub fn failed(&self) -> impl Iterator<Item = &str> {
        self.files.iter().filter_map(|f| f.as_ref().err().map(String::as_str))
    }
}

pub use cove_common::{find_model_file, is_onnx_file};
