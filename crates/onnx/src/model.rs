//! Loading an ONNX model with tract, checking that it can score tables, and running it.

use crate::output::{write_file_rows, Prediction};
use crate::read::{read_all, Table, Values};
use crate::Scored;
use bytes::Bytes;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

pub use crate::shape::{InputSpec, OutputRoles};

/// A loaded model, ready to score; cheap to share between slots (`Arc` inside).
#[derive(Clone)]
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<InputSpec>,
    /// Whether each input is `[rows]` rather than `[rows, width]`.
    flat: Vec<bool>,
    outputs: Vec<String>,
    roles: OutputRoles,
    /// Feature tables kept between mini-batches: reusing their buffers spares the page faults and
    /// zeroing of fresh multi-megabyte allocations on every mini-batch.
    scratch: Arc<std::sync::Mutex<Vec<Table>>>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl OnnxModel {
    /// Loads and checks a model from the bytes of its `.onnx` file.
    ///
    /// # Errors
    /// Why the model cannot be used to score tables, naming the input or output at fault.
    pub fn load(bytes: &[u8]) -> Result<Self, String> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| format!("not a loadable ONNX model: {}", chain(&e)))?;
        // The row count is always symbolic, whatever the file declares, so one call scores any number
        // of rows.
        let rows = model.symbols.sym("cove_rows");
        let mut inputs = Vec::new();
        let mut flat = Vec::new();
        for i in 0..model.input_outlets().map_err(|e| e.to_string())?.len() {
            let outlet = model.input_outlets().map_err(|e| e.to_string())?[i];
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(i).map_err(|e| e.to_string())?.clone();
            let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            if dt != DatumType::F32 && dt != DatumType::F64 {
                return Err(format!("input `{name}` takes {dt:?}; a no-code deployment feeds float32 or float64"));
            }
            let rank = fact.shape.rank().concretize();
            let width = match rank {
                Some(1) => 1,
                Some(2) => fact
                    .shape
                    .dim(1)
                    .and_then(|d| d.concretize())
                    .and_then(|d| d.to_i64().ok())
                    .map(|d| d as usize)
                    .ok_or_else(|| format!("input `{name}` has no fixed number of columns"))?,
                Some(r) => {
                    return Err(format!(
                        "input `{name}` has rank {r}; a no-code deployment feeds [rows] or [rows, columns]"
                    ))
                }
                None => return Err(format!("input `{name}` has no declared shape")),
            };
            let shape: TVec<TDim> =
                if rank == Some(1) { tvec![rows.to_dim()] } else { tvec![rows.to_dim(), width.into()] };
            model.set_input_fact(i, InferenceFact::dt_shape(dt, shape)).map_err(|e| e.to_string())?;
            inputs.push(InputSpec { name, width, float64: dt == DatumType::F64 });
            flat.push(rank == Some(1));
        }
        if inputs.is_empty() {
            return Err("the model has no inputs".into());
        }
        let n_outputs = model.output_outlets().map_err(|e| e.to_string())?.len();
        for o in 0..n_outputs {
            // Declared output shapes may pin the row count; let tract infer them from the inputs.
            model.set_output_fact(o, InferenceFact::default()).map_err(|e| e.to_string())?;
        }
        let typed = model.into_optimized().map_err(|e| format!("tract cannot optimize the model: {}", chain(&e)))?;
        let mut outputs = Vec::new();
        let mut roles = OutputRoles { prediction: None, probabilities: None };
        for (o, outlet) in typed.output_outlets().map_err(|e| e.to_string())?.iter().enumerate() {
            let name = typed.outlet_label(*outlet).unwrap_or(&typed.node(outlet.node).name).to_string();
            let fact = typed.outlet_fact(*outlet).map_err(|e| e.to_string())?;
            let width = match fact.shape.rank() {
                1 => Some(1),
                2 => fact.shape[1].to_i64().ok().map(|d| d as usize),
                _ => None,
            };
            match width {
                Some(1) if roles.prediction.is_none() => roles.prediction = Some(o),
                Some(w) if w > 1 && fact.datum_type.is_float() && roles.probabilities.is_none() => {
                    roles.probabilities = Some((o, w))
                }
                _ => {}
            }
            outputs.push(name);
        }
        if roles.prediction.is_none() && roles.probabilities.is_none() {
            return Err(format!(
                "none of the outputs ({}) gives one value per row or one float per class",
                outputs.join(", ")
            ));
        }
        let plan = typed.into_runnable().map_err(|e| format!("tract cannot plan the model: {}", chain(&e)))?;
        Ok(Self { plan, inputs, flat, outputs, roles, scratch: Default::default() })
    }

    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    pub fn roles(&self) -> &OutputRoles {
        &self.roles
    }

    /// One line for logs and deployment views: `features[32] -> label, probabilities[3]`.
    pub fn describe(&self) -> String {
        let ins: Vec<String> = self.inputs.iter().map(|i| format!("{}[{}]", i.name, i.width)).collect();
        let mut outs = Vec::new();
        if let Some(p) = self.roles.prediction {
            outs.push(format!("prediction={}", self.outputs[p]));
        }
        if let Some((p, w)) = self.roles.probabilities {
            outs.push(format!("probabilities={}[{w}]", self.outputs[p]));
        }
        format!("{} -> {}", ins.join(", "), outs.join(", "))
    }

    /// Scores the files of one mini-batch (name, contents): the rows of every readable file go to the
    /// model in one call; if that call fails, each file is run alone so the failure lands on its file.
    pub fn score(&self, files: &[(String, Bytes)]) -> Scored {
        let mut all = self.scratch.lock().ok().and_then(|mut s| s.pop()).unwrap_or_else(|| Table::empty(&self.inputs));
        all.clear();
        // Per file: its first row in `all` and its row count, or why it cannot be read.
        let spans = read_all(files, &self.inputs, &mut all);
        let mut scored = Scored::default();
        match self.run(&all) {
            Ok(prediction) => {
                for ((name, _), span) in files.iter().zip(spans) {
                    scored.files.push(span.map(|(start, rows)| {
                        write_file_rows(&mut scored.output, base_name(name), &prediction, start, rows);
                        rows as u64
                    }));
                }
            }
            Err(_) => {
                for ((name, _), span) in files.iter().zip(spans) {
                    let result = span.and_then(|(start, rows)| {
                        let one = Table {
                            rows,
                            inputs: all
                                .inputs
                                .iter()
                                .zip(&self.inputs)
                                .map(|(v, spec)| v.slice(start, rows, spec.width))
                                .collect(),
                        };
                        let prediction = self.run(&one).map_err(|e| format!("the model failed on this file: {e}"))?;
                        write_file_rows(&mut scored.output, base_name(name), &prediction, 0, rows);
                        Ok(rows as u64)
                    });
                    scored.files.push(result);
                }
            }
        }
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push(all);
        }
        scored
    }

    fn run(&self, table: &Table) -> Result<Prediction, String> {
        if table.rows == 0 {
            return Ok(Prediction::empty());
        }
        let mut tensors: TVec<TValue> = tvec![];
        for ((values, spec), flat) in table.inputs.iter().zip(&self.inputs).zip(&self.flat) {
            let shape: Vec<usize> = if *flat { vec![table.rows] } else { vec![table.rows, spec.width] };
            let tensor = match values {
                Values::F32(v) => Tensor::from_shape(&shape, v),
                Values::F64(v) => Tensor::from_shape(&shape, v),
            };
            tensors.push(tensor.map_err(|e| e.to_string())?.into());
        }
        let outputs = self.plan.run(tensors).map_err(|e| chain(&e))?;
        Prediction::from_outputs(&outputs, &self.roles, table.rows)
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn chain(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
