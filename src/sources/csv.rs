//! CSV files: the `csv` crate frames records (so a ragged or malformed row is dead-lettered with
//! its line number instead of failing the file), arrow-csv turns good records into typed columns.

use super::parquet::finish;
use super::{BatchIter, InputFile, ReadFailure, SourcePlan};
use crate::config::{ColumnType, Pipeline};
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

/// Default rows read to infer column types.
pub const DEFAULT_INFER_ROWS: usize = 1000;

#[derive(Clone)]
struct Opts {
    delimiter: u8,
    quote: u8,
    has_header: bool,
    infer_rows: usize,
    types: BTreeMap<String, ColumnType>,
}

fn opts(p: &Pipeline) -> Opts {
    let s = p.source();
    let byte = |v: &Option<toml::Spanned<String>>, d: u8| {
        v.as_ref().map_or(d, |v| v.get_ref().as_bytes()[0])
    };
    Opts {
        delimiter: byte(&s.delimiter, b','),
        quote: byte(&s.quote, b'"'),
        has_header: s.has_header.as_ref().is_none_or(|h| *h.get_ref()),
        infer_rows: s
            .infer_rows
            .as_ref()
            .map_or(DEFAULT_INFER_ROWS, |n| *n.get_ref()),
        types: s
            .schema
            .as_ref()
            .map(|m| {
                m.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), *v.get_ref()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn reader(file: &InputFile, o: &Opts) -> Result<csv::Reader<BufReader<File>>> {
    let f = File::open(&file.path).with_context(|| format!("{}: cannot open", file.display))?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, f)))
}

fn to_arrow(t: ColumnType) -> DataType {
    match t {
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Guess {
    Empty,
    Int,
    Float,
    Bool,
    Text,
}

fn guess(v: &[u8]) -> Guess {
    let Ok(s) = std::str::from_utf8(v) else {
        return Guess::Text;
    };
    let s = s.trim();
    if s.is_empty() {
        Guess::Empty
    } else if s.parse::<i64>().is_ok() {
        Guess::Int
    } else if s.parse::<f64>().is_ok() && s.chars().any(|c| c.is_ascii_digit()) {
        Guess::Float
    } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
        Guess::Bool
    } else {
        Guess::Text
    }
}

fn merge(a: Guess, b: Guess) -> Guess {
    use Guess::*;
    match (a, b) {
        (Empty, x) | (x, Empty) => x,
        (x, y) if x == y => x,
        (Int, Float) | (Float, Int) => Float,
        _ => Text,
    }
}

fn header_names(file: &InputFile, o: &Opts) -> Result<Vec<String>> {
    let mut r = reader(file, o)?;
    let mut rec = csv::ByteRecord::new();
    if !r
        .read_byte_record(&mut rec)
        .map_err(|e| anyhow!("{}: {e}", file.display))?
    {
        bail!(
            "{}: the file is empty; a CSV source needs at least a header line",
            file.display
        );
    }
    if o.has_header {
        rec.iter()
            .enumerate()
            .map(|(i, h)| {
                let name = String::from_utf8_lossy(h)
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .to_string();
                if name.is_empty() {
                    Ok(format!("column_{}", i + 1))
                } else {
                    Ok(name)
                }
            })
            .collect()
    } else {
        Ok((1..=rec.len()).map(|i| format!("column_{i}")).collect())
    }
}

pub fn schema(pipeline: &Pipeline, files: &[InputFile]) -> Result<SchemaRef> {
    let o = opts(pipeline);
    let names = header_names(&files[0], &o)?;
    for f in &files[1..] {
        let other = header_names(f, &o)?;
        if other != names {
            bail!(
                "{}: header {:?} differs from {}'s {:?}; all files of a source must agree",
                f.display,
                other,
                files[0].display,
                names
            );
        }
    }
    if let Some(types) = &pipeline.source().schema {
        for (col, t) in types.get_ref() {
            if !names.contains(col) {
                let help = crate::config::did_you_mean(col, names.iter().map(String::as_str))
                    .map(|b| format!("did you mean `{b}`? "))
                    .unwrap_or_default();
                return Err(pipeline
                    .error(
                        t.span(),
                        format!(
                            "[source.schema] names column `{col}`, which {} does not have",
                            files[0].display
                        ),
                    )
                    .with_help(format!("{help}columns: {}", names.join(", ")))
                    .into());
            }
        }
    }
    let mut guesses = vec![Guess::Empty; names.len()];
    let mut r = reader(&files[0], &o)?;
    let mut rec = csv::ByteRecord::new();
    let mut seen = 0;
    if o.has_header {
        r.read_byte_record(&mut rec)?;
    }
    while seen < o.infer_rows {
        match r.read_byte_record(&mut rec) {
            Ok(true) if rec.len() == names.len() => {
                for (g, v) in guesses.iter_mut().zip(rec.iter()) {
                    *g = merge(*g, guess(v));
                }
                seen += 1;
            }
            Ok(true) | Err(_) => continue,
            Ok(false) => break,
        }
    }
    let fields: Vec<Field> = names
        .iter()
        .zip(guesses)
        .map(|(name, g)| {
            let dt = match o.types.get(name) {
                Some(t) => to_arrow(*t),
                None => match g {
                    Guess::Int => DataType::Int64,
                    Guess::Float => DataType::Float64,
                    Guess::Bool => DataType::Boolean,
                    Guess::Empty | Guess::Text => DataType::Utf8,
                },
            };
            Field::new(name, dt, true)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Encodes records back to CSV bytes for arrow-csv.
fn encode(records: &[csv::ByteRecord], o: &Opts) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .from_writer(Vec::new());
    for r in records {
        w.write_byte_record(r)?;
    }
    w.into_inner().map_err(|e| anyhow!("csv encode: {e}"))
}

fn decode(
    buf: &[u8],
    schema: &SchemaRef,
    o: &Opts,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    arrow_csv::ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_delimiter(o.delimiter)
        .with_quote(o.quote)
        .with_batch_size(1 << 20)
        .build_buffered(std::io::Cursor::new(buf))?
        .collect()
}

/// Decodes framed records into one batch; a value that does not parse dead-letters its row.
fn decode_records(
    file: &InputFile,
    records: &[csv::ByteRecord],
    lines: &[u64],
    schema: &SchemaRef,
    o: &Opts,
    failures: &mut Vec<ReadFailure>,
) -> Result<(RecordBatch, Vec<u64>)> {
    if let Ok(batches) = decode(&encode(records, o)?, schema, o) {
        return Ok((
            arrow::compute::concat_batches(schema, &batches)?,
            lines.to_vec(),
        ));
    }
    // Slow path: find the records that do not parse.
    let mut good = Vec::new();
    let mut good_lines = Vec::new();
    for (rec, &line) in records.iter().zip(lines) {
        match decode(&encode(std::slice::from_ref(rec), o)?, schema, o) {
            Ok(b) => {
                good.extend(b);
                good_lines.push(line);
            }
            Err(e) => failures.push(ReadFailure {
                file: file.display.clone(),
                row: Some(line),
                id: None,
                kind: "bad_value",
                message: format!("line {line}: {}", strip_arrow_line(&e.to_string())),
            }),
        }
    }
    Ok((arrow::compute::concat_batches(schema, &good)?, good_lines))
}

/// arrow-csv's messages count lines within our re-encoded buffer; drop that misleading part.
fn strip_arrow_line(msg: &str) -> String {
    let msg = msg.trim_start_matches("Parser error: ");
    match msg.find(" for column ") {
        Some(_) => msg.split(". Error while").next().unwrap_or(msg).to_string(),
        None => msg.to_string(),
    }
}

pub fn open(
    pipeline: &Pipeline,
    plan: &SourcePlan,
    columns: &[String],
    id_column: Option<String>,
) -> Result<BatchIter> {
    let o = opts(pipeline);
    let batch_rows = pipeline.batch_rows();
    let schema = plan.schema.clone();
    let projection: Vec<usize> = columns
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<_, _>>()?;
    let width = schema.fields().len();
    let files = plan.files.clone();
    let mut next_file = 0usize;
    let mut current: Option<(InputFile, csv::Reader<BufReader<File>>)> = None;
    let iter = std::iter::from_fn(move || loop {
        if current.is_none() {
            let file = files.get(next_file)?.clone();
            next_file += 1;
            match reader(&file, &o) {
                Ok(mut r) => {
                    if o.has_header {
                        let mut skip = csv::ByteRecord::new();
                        if let Err(e) = r.read_byte_record(&mut skip) {
                            return Some(Err(anyhow!("{}: {e}", file.display)));
                        }
                    }
                    current = Some((file, r));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let (file, r) = current.as_mut().expect("set above");
        let mut records = Vec::with_capacity(batch_rows.min(4096));
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        let mut eof = false;
        while records.len() < batch_rows {
            let mut rec = csv::ByteRecord::new();
            match r.read_byte_record(&mut rec) {
                Ok(false) => {
                    eof = true;
                    break;
                }
                Ok(true) => {
                    let line = rec.position().map_or(0, |p| p.line());
                    if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
                        continue; // blank line
                    }
                    if rec.len() != width {
                        failures.push(ReadFailure {
                            file: file.display.clone(),
                            row: Some(line),
                            id: None,
                            kind: "malformed_row",
                            message: format!(
                                "line {line}: has {} fields, the header has {width}",
                                rec.len()
                            ),
                        });
                        continue;
                    }
                    records.push(rec);
                    lines.push(line);
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    failures.push(ReadFailure {
                        file: file.display.clone(),
                        row: Some(line),
                        id: None,
                        kind: "malformed_row",
                        message: format!("line {line}: {e}"),
                    });
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        eof = true;
                        break;
                    }
                }
            }
        }
        let file_c = file.clone();
        if eof {
            current = None;
        }
        if records.is_empty() && failures.is_empty() {
            continue;
        }
        let result = (|| {
            let (batch, rows) =
                decode_records(&file_c, &records, &lines, &schema, &o, &mut failures)?;
            let batch = batch.project(&projection)?;
            let mut sb = finish(&file_c, batch, rows, id_column.as_deref())?;
            failures.append(&mut sb.failures);
            sb.failures = failures;
            Ok(sb)
        })();
        return Some(result);
    });
    Ok(Box::new(iter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_guessing_widens() {
        assert!(matches!(merge(guess(b"1"), guess(b"2.5")), Guess::Float));
        assert!(matches!(merge(guess(b"1"), guess(b"x")), Guess::Text));
        assert!(matches!(merge(guess(b""), guess(b"true")), Guess::Bool));
    }
}
