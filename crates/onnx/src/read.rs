//! Reading one input file into the model's feature buffers, with the Arrow readers: only the feature
//! columns are parsed, as numbers; a value that is empty or not a number fails the file, naming the
//! row and column.

use crate::columns::FeatureColumns;
use crate::shape::InputSpec;
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

    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Self::F32(v) => v.truncate(len),
            Self::F64(v) => v.truncate(len),
        }
    }

    /// Rows `start..start + rows` of values `width` wide.
    pub fn slice(&self, start: usize, rows: usize, width: usize) -> Self {
        let range = start * width..(start + rows) * width;
        match self {
            Self::F32(v) => Self::F32(v[range].to_vec()),
            Self::F64(v) => Self::F64(v[range].to_vec()),
        }
    }
}

impl Table {
    pub fn empty(inputs: &[InputSpec]) -> Self {
        Self { rows: 0, inputs: inputs.iter().map(Values::for_input).collect() }
    }

    /// Empties the table, keeping its buffers' capacity for the next mini-batch.
    pub fn clear(&mut self) {
        self.rows = 0;
        for v in &mut self.inputs {
            v.truncate(0);
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

/// Appends the rows of `data`, the contents of the file `name`, to `table` (one mini-batch's rows
/// share one table, so they are copied once); returns how many rows it added.
///
/// # Errors
/// Why the file cannot be scored, for the failed item's reason; `table` is then as it was.
pub fn read_into(name: &str, data: &Bytes, inputs: &[InputSpec], table: &mut Table) -> Result<usize, String> {
    let (rows, lens): (usize, Vec<usize>) = (table.rows, table.inputs.iter().map(Values::len).collect());
    let read = match kind(name) {
        Ok(Kind::Csv) => read_csv(data, inputs, table),
        Ok(Kind::Parquet) => read_parquet(data, inputs, table),
        Err(e) => Err(e),
    };
    if read.is_err() {
        table.rows = rows;
        for (v, len) in table.inputs.iter_mut().zip(lens) {
            v.truncate(len);
        }
    }
    read.map(|()| table.rows - rows)
}

/// Appends the rows of every file to `table`, in order; returns each file's first row in `table` and its
/// row count, or why it cannot be scored (its rows are then not in `table`).
///
/// Consecutive small CSV files with the same plain header line are fed to one kept decoder and turned
/// into one Arrow batch (a batch per one-row file cost more than its row); should that batch fail (a
/// value that is not a number, say), those files are read again one by one, so each error names its
/// own file and row.
pub fn read_all(
    files: &[(String, Bytes)],
    inputs: &[InputSpec],
    table: &mut Table,
) -> Vec<Result<(usize, usize), String>> {
    let mut spans = Vec::with_capacity(files.len());
    // The files fed to the decoder and not yet turned into a batch: (index, rows fed).
    let mut run: Vec<(usize, usize)> = Vec::new();
    let mut run_plan: Option<Arc<CsvPlan>> = None;
    for (name, data) in files {
        let fed = match (kind(name), plain_header_line(data)) {
            (Ok(Kind::Csv), Some(_)) => feed_run(data, inputs, &mut run_plan, &mut run, files, table, &mut spans),
            _ => false,
        };
        if fed {
            continue;
        }
        end_run(&mut run_plan, &mut run, files, inputs, table, &mut spans);
        spans.push(single(name, data, inputs, table));
    }
    end_run(&mut run_plan, &mut run, files, inputs, table, &mut spans);
    spans
}

fn single(name: &str, data: &Bytes, inputs: &[InputSpec], table: &mut Table) -> Result<(usize, usize), String> {
    let start = table.rows;
    read_into(name, data, inputs, table).map(|rows| (start, rows))
}

/// Feeds a CSV file's rows to the run's decoder, when it can join the run (ending the run first when
/// its header differs or the decoder would fill up); returns whether it did.
fn feed_run(
    data: &Bytes,
    inputs: &[InputSpec],
    run_plan: &mut Option<Arc<CsvPlan>>,
    run: &mut Vec<(usize, usize)>,
    files: &[(String, Bytes)],
    table: &mut Table,
    spans: &mut Vec<Result<(usize, usize), String>>,
) -> bool {
    let Ok(plan) = csv_plan(data, inputs) else { return false };
    let body = &data[data.iter().position(|&b| b == b'\n').expect("a plain header line ends") + 1..];
    // At most one row per line (and one more for a last line with no end).
    let most = body.iter().filter(|&&b| b == b'\n').count() + 1;
    if most >= DECODER_ROWS / 2 {
        return false;
    }
    let same = run_plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan));
    let buffered: usize = run.iter().map(|(_, rows)| rows).sum();
    if !same || buffered + most >= DECODER_ROWS {
        end_run(run_plan, run, files, inputs, table, spans);
    }
    let index = spans.len() + run.len();
    let Some(rows) = feed_kept(&plan, body) else {
        // The decoder refused the rows (and is gone with them): the run so far and this file are read
        // one by one.
        run.push((index, 0));
        *run_plan = None;
        fail_run(run, files, inputs, table, spans);
        return true;
    };
    *run_plan = Some(plan);
    run.push((index, rows));
    true
}

/// Feeds rows to the decoder kept for `plan` (made when there is none for it) without turning them into
/// a batch; returns how many rows it took.
fn feed_kept(plan: &Arc<CsvPlan>, body: &[u8]) -> Option<usize> {
    let kept = DECODER.with(|d| d.borrow_mut().take()).filter(|(p, _)| Arc::ptr_eq(p, plan));
    let mut decoder = match kept {
        Some((_, decoder)) => decoder,
        None => new_decoder(plan),
    };
    let before = decoder.capacity();
    let mut rest = body;
    while !rest.is_empty() {
        let used = decoder.decode(rest).ok()?;
        if used == 0 {
            return None;
        }
        rest = &rest[used..];
    }
    // A last row with no line end is ended here, so it is not carried into the next file.
    if !body.is_empty() && !body.ends_with(b"\n") && decoder.decode(b"\n").ok()? != 1 {
        return None;
    }
    let rows = before - decoder.capacity();
    DECODER.with(|d| *d.borrow_mut() = Some((plan.clone(), decoder)));
    Some(rows)
}

fn new_decoder(plan: &CsvPlan) -> arrow_csv::reader::Decoder {
    arrow_csv::ReaderBuilder::new(plan.schema.clone())
        .with_header(false)
        .with_batch_size(DECODER_ROWS)
        .with_projection(plan.projection.clone())
        .build_decoder()
}

/// Turns the run's rows into one batch and appends it to `table`; on failure, reads the run's files
/// one by one instead.
fn end_run(
    run_plan: &mut Option<Arc<CsvPlan>>,
    run: &mut Vec<(usize, usize)>,
    files: &[(String, Bytes)],
    inputs: &[InputSpec],
    table: &mut Table,
    spans: &mut Vec<Result<(usize, usize), String>>,
) {
    let Some(plan) = run_plan.take() else {
        debug_assert!(run.is_empty());
        return;
    };
    if run.is_empty() {
        return;
    }
    let kept = DECODER.with(|d| d.borrow_mut().take()).filter(|(p, _)| Arc::ptr_eq(p, &plan));
    let (rows, lens): (usize, Vec<usize>) = (table.rows, table.inputs.iter().map(Values::len).collect());
    let collected = kept.and_then(|(_, mut decoder)| {
        let batch = decoder.flush().ok()?;
        DECODER.with(|d| *d.borrow_mut() = Some((plan.clone(), decoder)));
        let batches = batch.into_iter().map(Ok);
        collect(batches, &plan.header, &plan.columns, &plan.projection, inputs, table).ok()
    });
    let expected: usize = run.iter().map(|(_, n)| n).sum();
    if collected.is_some() && table.rows - rows == expected {
        let mut start = rows;
        for &(_, n) in run.iter() {
            spans.push(Ok((start, n)));
            start += n;
        }
        run.clear();
        return;
    }
    table.rows = rows;
    for (values, len) in table.inputs.iter_mut().zip(lens) {
        values.truncate(len);
    }
    DECODER.with(|d| d.borrow_mut().take());
    fail_run(run, files, inputs, table, spans);
}

/// Reads the run's files one by one (after a batch of them failed), so each error is its own.
fn fail_run(
    run: &mut Vec<(usize, usize)>,
    files: &[(String, Bytes)],
    inputs: &[InputSpec],
    table: &mut Table,
    spans: &mut Vec<Result<(usize, usize), String>>,
) {
    for (index, _) in run.drain(..) {
        let (name, data) = &files[index];
        spans.push(single(name, data, inputs, table));
    }
}

/// How to read a CSV file with a given header for given inputs: worked out once per header.
struct CsvPlan {
    header: Vec<String>,
    columns: FeatureColumns,
    projection: Vec<usize>,
    schema: Arc<Schema>,
}

impl CsvPlan {
    fn new(header: Vec<String>, inputs: &[InputSpec]) -> Result<CsvPlan, String> {
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
        Ok(CsvPlan { header, columns, projection, schema: Arc::new(Schema::new(fields)) })
    }
}

thread_local! {
    /// The plan of the last header read on this thread, with the header line and the inputs it was
    /// made for: the files of a job nearly always share one header, and working it out (a CSV parser
    /// built to infer it) cost more than reading a one-row file.
    static LAST_PLAN: std::cell::RefCell<Option<(Vec<u8>, Vec<InputSpec>, Arc<CsvPlan>)>> = const { std::cell::RefCell::new(None) };
}

/// The header line as written, when it can be compared byte for byte: no quoting, no blank line.
fn plain_header_line(data: &[u8]) -> Option<&[u8]> {
    let end = data.iter().position(|&b| b == b'\n')?;
    let line = data[..end].strip_suffix(b"\r").unwrap_or(&data[..end]);
    (!line.is_empty() && !line.contains(&b'"')).then_some(line)
}

fn csv_plan(data: &Bytes, inputs: &[InputSpec]) -> Result<Arc<CsvPlan>, String> {
    let line = plain_header_line(data);
    if let Some(line) = line {
        let cached = LAST_PLAN.with(|c| {
            c.borrow().as_ref().filter(|(l, i, _)| l == line && i == inputs).map(|(_, _, plan)| plan.clone())
        });
        if let Some(plan) = cached {
            return Ok(plan);
        }
    }
    let format = arrow_csv::reader::Format::default().with_header(true);
    let (schema, _) =
        format.infer_schema(Cursor::new(&data[..]), Some(0)).map_err(|e| format!("cannot read the header: {e}"))?;
    if schema.fields().is_empty() {
        return Err("the file is empty: a CSV file needs a header row".into());
    }
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let plan = Arc::new(CsvPlan::new(header, inputs)?);
    if let Some(line) = line {
        LAST_PLAN.with(|c| *c.borrow_mut() = Some((line.to_vec(), inputs.to_vec(), plan.clone())));
    }
    Ok(plan)
}

/// Rows an arrow decoder kept across files buffers before it hands over a batch.
const DECODER_ROWS: usize = 8 * 1024;

thread_local! {
    /// An arrow CSV decoder for the last plan, kept across files: building one builds a CSV parser,
    /// which cost more than decoding a one-row file. Files with that plan's header feed it their rows.
    static DECODER: std::cell::RefCell<Option<(Arc<CsvPlan>, arrow_csv::reader::Decoder)>> = const { std::cell::RefCell::new(None) };
}

/// Decodes the rows after a plain header line with the decoder kept for `plan`; `None` when it could
/// not (the caller then reads the file afresh, whose errors name rows exactly).
fn decode_with_kept(plan: &Arc<CsvPlan>, body: &[u8]) -> Option<Vec<RecordBatch>> {
    let kept = DECODER.with(|d| d.borrow_mut().take()).filter(|(p, _)| Arc::ptr_eq(p, plan));
    let mut decoder = match kept {
        Some((_, decoder)) => decoder,
        None => new_decoder(plan),
    };
    let mut batches = Vec::new();
    let mut feed = |mut rest: &[u8], decoder: &mut arrow_csv::reader::Decoder| -> Option<()> {
        while !rest.is_empty() {
            let used = decoder.decode(rest).ok()?;
            rest = &rest[used..];
            if used == 0 || decoder.capacity() == 0 {
                let batch = decoder.flush().ok()?;
                // Nothing taken and nothing to hand over: it cannot go on, so read the file afresh.
                if used == 0 && batch.is_none() {
                    return None;
                }
                batches.extend(batch);
            }
        }
        Some(())
    };
    feed(body, &mut decoder)?;
    // A last row with no line end is ended here, so it is not carried into the next file.
    if !body.is_empty() && !body.ends_with(b"\n") {
        feed(b"\n", &mut decoder)?;
    }
    batches.extend(decoder.flush().ok()?);
    DECODER.with(|d| *d.borrow_mut() = Some((plan.clone(), decoder)));
    Some(batches)
}

fn read_csv(data: &Bytes, inputs: &[InputSpec], table: &mut Table) -> Result<(), String> {
    let plan = csv_plan(data, inputs)?;
    let (header, columns, projection) = (&plan.header, &plan.columns, &plan.projection);
    if plain_header_line(data).is_some() {
        let body = &data[data.iter().position(|&b| b == b'\n').expect("a plain header line ends") + 1..];
        if let Some(batches) = decode_with_kept(&plan, body) {
            let (rows, lens): (usize, Vec<usize>) = (table.rows, table.inputs.iter().map(Values::len).collect());
            if collect(batches.into_iter().map(Ok), header, columns, projection, inputs, table).is_ok() {
                return Ok(());
            }
            // Read it again afresh below, so the error names its row exactly.
            table.rows = rows;
            for (values, len) in table.inputs.iter_mut().zip(lens) {
                values.truncate(len);
            }
        }
    }
    // The reader allocates a whole batch up front; a row takes at least one byte per column, so a
    // small file gets a batch no larger than it can fill.
    let batch_rows = (data.len() / header.len() + 1).min(BATCH_ROWS);
    let reader = arrow_csv::ReaderBuilder::new(plan.schema.clone())
        .with_header(true)
        .with_batch_size(batch_rows)
        .with_projection(projection.clone())
        .build(Cursor::new(&data[..]))
        .map_err(|e| e.to_string())?;
    let batches = reader.map(|b| b.map_err(|e| short(&e.to_string())));
    collect(batches, header, columns, projection, inputs, table)
}

fn read_parquet(data: &Bytes, inputs: &[InputSpec], table: &mut Table) -> Result<(), String> {
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
    collect(batches, &header, &columns, &projection, inputs, table)
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
    table: &mut Table,
) -> Result<(), String> {
    let mut file_rows = 0;
    for batch in batches {
        let batch = batch?;
        let n = batch.num_rows();
        for (input, cols) in columns.per_input.iter().enumerate() {
            let dt = if inputs[input].float64 { DataType::Float64 } else { DataType::Float32 };
            let mut arrays = Vec::with_capacity(cols.len());
            for &col in cols {
                let at = projection.binary_search(&col).expect("every feature column is projected");
                let array = arrow_cast::cast(batch.column(at), &dt)
                    .map_err(|e| format!("column `{}` is not numeric: {}", header[col], short(&e.to_string())))?;
                if let Some(r) = (0..n).find(|&r| array.is_null(r)) {
                    return Err(format!("row {}: column `{}` is empty or not a number", file_rows + r, header[col]));
                }
                arrays.push(array);
            }
            // Row-major, appended in place: no zero-fill, no per-file copy.
            match &mut table.inputs[input] {
                Values::F32(buf) => {
                    let cols: Vec<&[f32]> =
                        arrays.iter().map(|a| &a.as_primitive::<Float32Type>().values()[..]).collect();
                    interleave(buf, &cols, n);
                }
                Values::F64(buf) => {
                    let cols: Vec<&[f64]> =
                        arrays.iter().map(|a| &a.as_primitive::<Float64Type>().values()[..]).collect();
                    interleave(buf, &cols, n);
                }
            }
        }
        file_rows += n;
        table.rows += n;
    }
    Ok(())
}

fn interleave<T: Copy>(buf: &mut Vec<T>, cols: &[&[T]], rows: usize) {
    if let [only] = cols {
        buf.extend_from_slice(&only[..rows]);
        return;
    }
    buf.reserve(rows * cols.len());
    for r in 0..rows {
        buf.extend(cols.iter().map(|c| c[r]));
    }
}

/// Keeps a reader's error to its first line, and short: some echo a whole row.
fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, width: usize) -> InputSpec {
        InputSpec { name: name.into(), width, float64: false }
    }

    #[test]
    fn files_with_other_headers_are_read_by_their_own_header() {
        let inputs = [input("features", 2)];
        let mut table = Table::empty(&inputs);
        let files = [
            "id,a,b\n1,1.5,2.5\n",
            "id,a,b\r\n2,3.5,4.5\r\n",
            "extra,id,a,b\nx,3,5,6\n",
            "\"id\",a,b\n4,7.5,8.5\n",
            "id,a,b\n5,9.5,10.5\n",
        ];
        for f in files {
            read_into("f.csv", &Bytes::from(f), &inputs, &mut table).unwrap();
        }
        // By position, the model's inputs take the file's last columns.
        let Values::F32(v) = &table.inputs[0] else { panic!("float32 input") };
        assert_eq!(v, &[1.5, 2.5, 3.5, 4.5, 5.0, 6.0, 7.5, 8.5, 9.5, 10.5]);
        // A bad file among good ones fails alone, naming its own row, and leaves the table as it was;
        // a last row with no line end is not carried into the next file.
        let bad = read_into("bad.csv", &Bytes::from("id,a,b\n6,1,2\n7,,3\n"), &inputs, &mut table).unwrap_err();
        assert!(bad.contains("row 1: column `a` is empty or not a number"), "{bad}");
        read_into("f.csv", &Bytes::from("id,a,b\n8,11.5,12.5"), &inputs, &mut table).unwrap();
        read_into("f.csv", &Bytes::from("id,a,b\n9,13.5,14.5\n"), &inputs, &mut table).unwrap();
        let Values::F32(v) = &table.inputs[0] else { panic!("float32 input") };
        assert_eq!(&v[10..], &[11.5, 12.5, 13.5, 14.5]);
        assert_eq!(table.rows, 7);
    }

    #[test]
    fn a_mini_batch_of_small_files_is_read_as_one_batch_and_a_bad_file_fails_alone() {
        let inputs = [input("features", 2)];
        let file = |name: &str, text: &str| (name.to_string(), Bytes::from(text.to_string()));
        let files = vec![
            file("a.csv", "id,a,b\n1,1,2\n2,3,4\n"),
            file("b.csv", "id,a,b\n3,5,6"),
            file("c.csv", "id,a,b\n"),
            file("bad.csv", "id,a,b\n4,x,8\n"),
            file("d.csv", "id,a,b\n5,9,10\n"),
            file("other.csv", "a,b\n11,12\n"),
            file("e.txt", "id,a,b\n6,0,0\n"),
            file("f.csv", "id,a,b\n7,13,14\n"),
        ];
        let mut table = Table::empty(&inputs);
        let spans = read_all(&files, &inputs, &mut table);
        assert_eq!(spans[0], Ok((0, 2)));
        assert_eq!(spans[1], Ok((2, 1)), "a last row with no line end is its own");
        assert_eq!(spans[2], Ok((3, 0)));
        let bad = spans[3].as_ref().unwrap_err();
        assert!(bad.contains("value 'x'") && bad.contains("line 1"), "{bad}");
        assert_eq!(spans[4], Ok((3, 1)));
        assert_eq!(spans[5], Ok((4, 1)));
        assert!(spans[6].as_ref().unwrap_err().contains("File type 'txt' is not supported"));
        assert_eq!(spans[7], Ok((5, 1)));
        let Values::F32(v) = &table.inputs[0] else { panic!("float32 input") };
        assert_eq!(v, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]);
        // The next mini-batch starts clean: nothing of this one is carried over.
        let mut next = Table::empty(&inputs);
        assert_eq!(read_all(&files[4..5], &inputs, &mut next), vec![Ok((0, 1))]);
        assert_eq!(next.rows, 1);
    }
}
