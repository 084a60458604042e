//! Builds small ONNX classifiers from given weights: the quickstart's model, and the models of tests
//! and benchmarks, are written by this code (no model file comes from elsewhere).

use prost::Message;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// One fully connected layer: `weights` is row-major `inputs × outputs`.
#[derive(Debug, Clone)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A classifier: optional standardisation, dense layers with ReLU between them, then softmax.
/// Outputs `label` (int64, `[rows]`) and `probabilities` (float, `[rows, classes]`).
#[derive(Debug, Clone)]
pub struct Classifier {
    pub input_name: String,
    /// Per-feature mean and scale, applied as `(x - mean) / scale` before the first layer.
    pub standardize: Option<(Vec<f32>, Vec<f32>)>,
    pub layers: Vec<Dense>,
}

impl Classifier {
    /// The model's `.onnx` bytes (opset 13, rows a symbolic dimension).
    pub fn to_onnx(&self) -> Vec<u8> {
        let features = self.layers.first().map_or(0, |l| l.inputs);
        let classes = self.layers.last().map_or(0, |l| l.outputs);
        let mut g = pb::GraphProto { name: "classifier".into(), ..Default::default() };
        g.input.push(value_info(&self.input_name, FLOAT, &[None, Some(features)]));
        let mut x = self.input_name.clone();
        if let Some((mean, scale)) = &self.standardize {
            g.initializer.push(tensor("mean", &[features], mean));
            g.initializer.push(tensor("scale", &[features], scale));
            g.node.push(node("Sub", &[&x, "mean"], "centred", vec![]));
            g.node.push(node("Div", &["centred", "scale"], "standardized", vec![]));
            x = "standardized".into();
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, b) = (format!("w{i}"), format!("b{i}"));
            g.initializer.push(tensor(&w, &[layer.inputs, layer.outputs], &layer.weights));
            g.initializer.push(tensor(&b, &[layer.outputs], &layer.bias));
            g.node.push(node("MatMul", &[&x, &w], &format!("mm{i}"), vec![]));
            g.node.push(node("Add", &[&format!("mm{i}"), &b], &format!("z{i}"), vec![]));
            x = format!("z{i}");
            if i + 1 < self.layers.len() {
                g.node.push(node("Relu", &[&x], &format!("a{i}"), vec![]));
                x = format!("a{i}");
            }
        }
        g.node.push(node("Softmax", &[&x], "probabilities", vec![int_attr("axis", 1)]));
        g.node.push(node("ArgMax", &["probabilities"], "label", vec![int_attr("axis", 1), int_attr("keepdims", 0)]));
        g.output.push(value_info("label", INT64, &[None]));
        g.output.push(value_info("probabilities", FLOAT, &[None, Some(classes)]));
        encode(g)
    }
}

/// A tiny model (a few hundred bytes) whose loading allocates `elements` floats: a `ConstantOfShape`
/// of a constant shape, which any loader folds into a constant, summed into a per-row score. The
/// attack suite's hostile model; a loader must meet it inside limits.
pub fn memory_bomb(elements: i64) -> Vec<u8> {
    let mut g = pb::GraphProto { name: "bomb".into(), ..Default::default() };
    g.input.push(value_info("features", FLOAT, &[None, Some(1)]));
    g.initializer.push(pb::TensorProto {
        name: "shape".into(),
        dims: vec![1],
        data_type: INT64,
        int64_data: vec![elements],
        ..Default::default()
    });
    g.node.push(node("ConstantOfShape", &["shape"], "big", vec![]));
    g.node.push(node("ReduceSum", &["big"], "sum", vec![int_attr("keepdims", 1)]));
    g.node.push(node("Add", &["features", "sum"], "score", vec![]));
    g.output.push(value_info("score", FLOAT, &[None, Some(1)]));
    encode(g)
}

/// A graph as an opset-13 model's `.onnx` bytes.
fn encode(graph: pb::GraphProto) -> Vec<u8> {
    let model = pb::ModelProto {
        ir_version: 8,
        producer_name: "cove".into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A deterministic pseudo-random classifier (xorshift from `seed`), for tests and benchmarks.
pub fn random_mlp(seed: u64, features: usize, hidden: usize, classes: usize) -> Classifier {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut dense = |inputs: usize, outputs: usize| {
        let scale = 1.0 / (inputs as f32).sqrt();
        Dense {
            inputs,
            outputs,
            weights: (0..inputs * outputs).map(|_| next() * scale).collect(),
            bias: (0..outputs).map(|_| next() * 0.1).collect(),
        }
    };
    let layers = vec![dense(features, hidden), dense(hidden, classes)];
    Classifier { input_name: "features".into(), standardize: None, layers }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => Value::DimValue(*n as i64),
                None => Value::DimParam("rows".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    assert_eq!(dims.iter().product::<usize>(), values.len(), "tensor `{name}` has the wrong number of values");
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}
