//! Reading one input file into the model's feature buffers, with the Arrow readers: only the feature
//! columns are parsed, as numbers; a value that is empty or not a number fails the file, naming the
//! row and column.

use crate::columns::FeatureColumns;
use crate::model::InputSpec;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use std::io::Cursor;
use std::sync::Arc;

/// Rows rebuilt per Arrow batch: large enough that per-batch costs vanish.
const BATCH_ROWS: usize = 64 * 1024;

/// One input's values for a run of rows, row-major (`rows × width`).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    pub fn for_input(input: &InputSpec) -> Self {
        if input.float64 {
            Self::F64(Vec::new())
        } else {
            Self::F32(Vec::new())
        }
    }

    pub fn append(&mut self, other: &Values) {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(b),
            _ => unreachable!("an input's values always have the input's type"),
        }
    }
}

/// The feature values of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub rows: usize,
    pub inputs: Vec<Values>,
}

/// The kinds of file a no-code deployment reads, by extension (as the reference's no-code driver does).
enum Kind {
    Csv,
    Parquet,
}

fn kind(name: &str) -> Result<Kind, String> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "csv" => Ok(Kind::Csv),
        "parquet" | "pqt" => Ok(Kind::Parquet),
        _ => Err(format!("File type '{ext}' is not supported: no-code ONNX deployments read .csv, .parquet and .pqt")),
    }
}

/// Reads `data`, the contents of the file `name`, into the feature values of `inputs`.
///
/// # Errors
/// Why the file cannot be scored, for the failed item's reason.
pub fn read(name: &str, data: &Bytes, inputs: &[InputSpec]) -> Result<Table, String> {
    match kind(name)? {
        Kind::Csv => read_csv(data, inputs),
        Kind::Parquet => read_parquet(data, inputs),
    }
}

fn read_csv(data: &Bytes, inputs: &[InputSpec]) -> Result<Table, String> {
    let format = arrow_csv::reader::Format::default().with_header(true);
    let (schema, _) =
        format.infer_schema(Cursor::new(&data[..]), Some(0)).map_err(|e| format!("cannot read the header: {e}"))?;
    if schema.fields().is_empty() {
        return Err("the file is empty: a CSV file needs a header row".into());
    }
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let columns = FeatureColumns::choose(&header, inputs)?;
    let projection = sorted_unique(&columns);
    // Feature columns parse straight into the input's float type; the others are never parsed.
    let fields: Vec<Field> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let dt = match columns.per_input.iter().position(|cols| cols.contains(&i)) {
                Some(input) if inputs[input].float64 => DataType::Float64,
                Some(_) => DataType::Float32,
                None => DataType::Utf8,
            };
            Field::new(name, dt, true)
        })
        .collect();
    // The reader allocates a whole batch up front; a row takes at least one byte per column, so a
    // small file gets a batch no larger than it can fill.
    let batch_rows = (data.len() / header.len() + 1).min(BATCH_ROWS);
    let reader = arrow_csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_header(true)
        .with_batch_size(batch_rows)
        .with_projection(projection.clone())
        .build(Cursor::new(&data[..]))
        .map_err(|e| e.to_string())?;
    let batches = reader.map(|b| b.map_err(|e| short(&e.to_string())));
    collect(batches, &header, &columns, &projection, inputs)
}

fn read_parquet(data: &Bytes, inputs: &[InputSpec]) -> Result<Table, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone())
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let header: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let columns = FeatureColumns::choose(&header, inputs)?;
    let projection = sorted_unique(&columns);
    let mask = ProjectionMask::roots(builder.parquet_schema(), projection.iter().copied());
    let reader =
        builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(|e| short(&e.to_string()))?;
    let batches = reader.map(|b| b.map_err(|e| short(&e.to_string())));
    collect(batches, &header, &columns, &projection, inputs)
}

/// Column indices in file order: both readers return projected columns in that order.
fn sorted_unique(columns: &FeatureColumns) -> Vec<usize> {
    let mut all = columns.all();
    all.sort_unstable();
    all.dedup();
    all
}

fn collect(
    batches: impl Iterator<Item = Result<RecordBatch, String>>,
    header: &[String],
    columns: &FeatureColumns,
    projection: &[usize],
    inputs: &[InputSpec],
) -> Result<Table, String> {
    let mut table = Table { rows: 0, inputs: inputs.iter().map(Values::for_input).collect() };
    for batch in batches {
        let batch = batch?;
        let n = batch.num_rows();
        for (input, cols) in columns.per_input.iter().enumerate() {
            let width = cols.len();
            let base = table.rows * width;
            for (j, &col) in cols.iter().enumerate() {
                let at = projection.binary_search(&col).expect("every feature column is projected");
                let array = batch.column(at);
                let cast = |dt: &DataType| {
                    arrow_cast::cast(array, dt)
                        .map_err(|e| format!("column `{}` is not numeric: {}", header[col], short(&e.to_string())))
                };
                let array = cast(if inputs[input].float64 { &DataType::Float64 } else { &DataType::Float32 })?;
                if let Some(r) = (0..n).find(|&r| array.is_null(r)) {
                    return Err(format!("row {}: column `{}` is empty or not a number", table.rows + r, header[col]));
                }
                match &mut table.inputs[input] {
                    Values::F32(buf) => {
                        buf.resize(base + n * width, 0.0);
                        for (r, v) in array.as_primitive::<Float32Type>().values().iter().enumerate() {
                            buf[base + r * width + j] = *v;
                        }
                    }
                    Values::F64(buf) => {
                        buf.resize(base + n * width, 0.0);
                        for (r, v) in array.as_primitive::<Float64Type>().values().iter().enumerate() {
                            buf[base + r * width + j] = *v;
                        }
                    }
                }
            }
        }
        table.rows += n;
    }
    Ok(table)
}

/// Keeps a reader's error to its first line, and short: some echo a whole row.
fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}
