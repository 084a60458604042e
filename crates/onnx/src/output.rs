//! The no-code output format: one line per input row, `row,prediction[,probability…],file`, where `row`
//! is the row's index within its file and `file` its base name (quoted as CSV when it needs to be). The
//! reference's no-code driver writes `row,prediction,file`; class probabilities, when the model gives
//! them, sit between the prediction and the file name so the file name stays last.

use crate::shape::OutputRoles;
use tract_onnx::prelude::*;

/// Float values in the precision the model produced them: a float64 model's outputs are written with
/// all their digits, a float32 model's in their shortest float32 form.
#[derive(Debug)]
enum Floats {
    Single(Vec<f32>),
    Double(Vec<f64>),
}

impl Floats {
    fn from_tensor(t: &Tensor) -> Result<Self, String> {
        if t.datum_type() == DatumType::F64 {
            Ok(Self::Double(values::<f64>(t)?))
        } else {
            Ok(Self::Single(values::<f32>(&*t.cast_to::<f32>().map_err(|e| e.to_string())?)?))
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Single(v) => v.len(),
            Self::Double(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> f64 {
        match self {
            Self::Single(v) => f64::from(v[i]),
            Self::Double(v) => v[i],
        }
    }

    fn write(&self, i: usize, buf: &mut ryu::Buffer, out: &mut Vec<u8>) {
        match self {
            Self::Single(v) => out.extend_from_slice(buf.format(v[i]).as_bytes()),
            Self::Double(v) => out.extend_from_slice(buf.format(v[i]).as_bytes()),
        }
    }
}

/// One value per row, in the type the model produced.
#[derive(Debug)]
enum Labels {
    Int(Vec<i64>),
    Float(Floats),
    Text(Vec<String>),
    /// No label output: the prediction is the index of the largest probability.
    ArgMax,
}

/// A model run's results, ready to be written row by row.
#[derive(Debug)]
pub struct Prediction {
    labels: Labels,
    /// Row-major class probabilities, `classes` per row.
    probabilities: Floats,
    classes: usize,
}

impl Prediction {
    pub fn empty() -> Self {
        Self { labels: Labels::Int(Vec::new()), probabilities: Floats::Single(Vec::new()), classes: 0 }
    }

    pub fn from_outputs(outputs: &[TValue], roles: &OutputRoles, rows: usize) -> Result<Self, String> {
        let (probabilities, classes) = match roles.probabilities {
            Some((o, classes)) => {
                let v = Floats::from_tensor(&outputs[o])?;
                check_len(v.len(), rows * classes, "probabilities")?;
                (v, classes)
            }
            None => (Floats::Single(Vec::new()), 0),
        };
        let labels = match roles.prediction {
            Some(o) => {
                let t = &outputs[o];
                let dt = t.datum_type();
                let labels = if dt == DatumType::String {
                    Labels::Text(values::<String>(t)?)
                } else if dt.is_float() {
                    Labels::Float(Floats::from_tensor(t)?)
                } else {
                    Labels::Int(values::<i64>(&*t.cast_to::<i64>().map_err(|e| e.to_string())?)?)
                };
                let len = match &labels {
                    Labels::Int(v) => v.len(),
                    Labels::Float(v) => v.len(),
                    Labels::Text(v) => v.len(),
                    Labels::ArgMax => rows,
                };
                check_len(len, rows, "prediction")?;
                labels
            }
            None => Labels::ArgMax,
        };
        Ok(Self { labels, probabilities, classes })
    }
}

fn values<T: Datum + Clone>(t: &Tensor) -> Result<Vec<T>, String> {
    Ok(t.to_plain_array_view::<T>().map_err(|e| e.to_string())?.iter().cloned().collect())
}

fn check_len(got: usize, want: usize, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("the model's {what} output has {got} values for {want} expected"))
    }
}

/// Appends the lines of one file's rows, which are rows `start..start + rows` of `prediction`.
pub fn write_file_rows(out: &mut Vec<u8>, file: &str, prediction: &Prediction, start: usize, rows: usize) {
    let file = csv_field(file);
    let mut ints = itoa::Buffer::new();
    let mut floats = ryu::Buffer::new();
    out.reserve(rows * (16 + file.len() + prediction.classes * 12));
    for r in 0..rows {
        let at = start + r;
        out.extend_from_slice(ints.format(r).as_bytes());
        out.push(b',');
        let probs = at * prediction.classes..(at + 1) * prediction.classes;
        let p = &prediction.probabilities;
        match &prediction.labels {
            Labels::Int(v) => out.extend_from_slice(ints.format(v[at]).as_bytes()),
            Labels::Float(v) => v.write(at, &mut floats, out),
            Labels::Text(v) => out.extend_from_slice(csv_field(&v[at]).as_bytes()),
            Labels::ArgMax => {
                let best = probs.clone().fold(probs.start, |best, i| if p.get(i) > p.get(best) { i } else { best });
                out.extend_from_slice(ints.format(best - probs.start).as_bytes());
            }
        }
        for i in probs {
            out.push(b',');
            p.write(i, &mut floats, out);
        }
        out.push(b',');
        out.extend_from_slice(file.as_bytes());
        out.push(b'\n');
    }
}

/// Quotes a field as CSV does when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_row_prediction_probabilities_and_file() {
        let p = Prediction {
            labels: Labels::Int(vec![1, 0]),
            probabilities: Floats::Single(vec![0.25, 0.75, 0.5, 0.5]),
            classes: 2,
        };
        let mut out = Vec::new();
        write_file_rows(&mut out, "a,b.csv", &p, 0, 2);
        assert_eq!(String::from_utf8(out).unwrap(), "0,1,0.25,0.75,\"a,b.csv\"\n1,0,0.5,0.5,\"a,b.csv\"\n");
    }

    #[test]
    fn float64_outputs_keep_every_digit() {
        let p = Prediction {
            labels: Labels::Float(Floats::Double(vec![0.1 + 0.2])),
            probabilities: Floats::Double(vec![0.0015465055230551106, 0.9984534944769449]),
            classes: 2,
        };
        let mut out = Vec::new();
        write_file_rows(&mut out, "f.csv", &p, 0, 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0,0.30000000000000004,0.0015465055230551106,0.9984534944769449,f.csv\n"
        );
    }

    #[test]
    fn without_labels_the_prediction_is_the_likeliest_class() {
        let p = Prediction { labels: Labels::ArgMax, probabilities: Floats::Single(vec![0.1, 0.7, 0.2]), classes: 3 };
        let mut out = Vec::new();
        write_file_rows(&mut out, "f.csv", &p, 0, 1);
        assert_eq!(String::from_utf8(out).unwrap(), "0,1,0.1,0.7,0.2,f.csv\n");
    }
}
