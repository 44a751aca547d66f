//! CSV files: the `csv` crate frames records (so a ragged or malformed row is dead-lettered with
//! its line number instead of failing the file), arrow-csv turns good records into typed columns.
//! A watch on the bytes read (`lines::Tracked`) gives each record the line it starts on and
//! catches a quote left open at the end of the file, neither of which the `csv` crate reports.

mod decode;
mod lines;
#[cfg(test)]
mod tests;

use super::parquet::finish;
use super::{BatchIter, InputFile, ReadFailure, Remote, SourceFiles};
use crate::clients::store::Stores;
use crate::config::{ColumnType, ConfigError};
use crate::resolve::{CsvSettings, SourceSettings};
use crate::util::FailureKind;
use anyhow::{anyhow, bail, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use decode::{decode_records, record_id};
use lines::{read_record, reader, CsvReader, Framing};
use std::sync::Arc;

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

fn header_names(file: &InputFile, o: &CsvSettings, remote: Option<&Remote>) -> Result<Vec<String>> {
    let mut r = reader(file, o, remote)?;
    let mut rec = csv::ByteRecord::new();
    let mut at = Framing::default();
    if !read_record(&mut r, &mut rec, &mut at).map_err(|e| anyhow!("{}: {e}", file.display))? {
        bail!(
            "{}: the file is empty; a CSV source needs at least a header line",
            file.display
        );
    }
    if o.has_header {
        if let Some(q) = at.unclosed_quote {
            bail!(
                "{}: line {}: the header's quoted field opened on line {q} is not closed before the end of the file",
                file.display,
                at.line
            );
        }
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

/// The columns of a CSV source: the header of the first file (every file must have the same),
/// typed as `[source.schema]` says or as the first `infer_rows` records suggest; the id column
/// is always text. Reads through blocking readers: call on a blocking thread, where the
/// runtime is current when any file is in S3.
pub fn schema(
    settings: &SourceSettings,
    files: &[InputFile],
    stores: Option<&Stores>,
) -> Result<SchemaRef> {
    let o = &settings.csv;
    let remote = Remote::capture(files, stores)?;
    let remote = remote.as_ref();
    let names = header_names(&files[0], o, remote)?;
    for f in &files[1..] {
        let other = header_names(f, o, remote)?;
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
    if let Some(col) = o.types.keys().find(|col| !names.contains(col)) {
        return Err(unknown_typed_column(settings, col, &files[0], &names).into());
    }
    let guesses = infer_types(&files[0], o, names.len(), remote)?;
    // Ids are text, verbatim, whatever they look like (`007` is not `7`; one `1e3` must not
    // turn `7` into `7.0`) and whatever `[source.schema]` says.
    let id = super::id_column(settings, |c| names.iter().any(|n| n == c));
    let fields: Vec<Field> = names
        .iter()
        .zip(guesses)
        .map(|(name, g)| {
            let dt = match o.types.get(name) {
                _ if id.as_ref() == Some(name) => DataType::Utf8,
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

/// `[source.schema]` names column `col`, which `file` (with columns `names`) does not have: the
/// error points at the entry in the pipeline file.
fn unknown_typed_column(
    settings: &SourceSettings,
    col: &str,
    file: &InputFile,
    names: &[String],
) -> ConfigError {
    let help = crate::config::did_you_mean(col, names.iter().map(String::as_str))
        .map(|b| format!("did you mean `{b}`? "))
        .unwrap_or_default();
    let message = format!(
        "[source.schema] names column `{col}`, which {} does not have",
        file.display
    );
    match settings.csv.type_spans.get(col) {
        Some(span) => settings.origin.error(span.clone(), message),
        None => ConfigError::whole_file(settings.origin.path(), message),
    }
    .with_help(format!("{help}columns: {}", names.join(", ")))
}

/// The type each of the `width` columns of `file` seems to hold, from its first `infer_rows`
/// records of that width.
fn infer_types(
    file: &InputFile,
    o: &CsvSettings,
    width: usize,
    remote: Option<&Remote>,
) -> Result<Vec<Guess>> {
    let mut guesses = vec![Guess::Empty; width];
    let mut r = reader(file, o, remote)?;
    let mut rec = csv::ByteRecord::new();
    let mut at = Framing::default();
    let mut seen = 0;
    if o.has_header {
        read_record(&mut r, &mut rec, &mut at)?;
    }
    while seen < o.infer_rows {
        match read_record(&mut r, &mut rec, &mut at) {
            // A record swallowed by an open quote says nothing about the columns' types.
            Ok(true) if rec.len() == width && at.unclosed_quote.is_none() => {
                for (g, v) in guesses.iter_mut().zip(rec.iter()) {
                    *g = merge(*g, guess(v));
                }
                seen += 1;
            }
            Ok(true) | Err(_) => continue,
            Ok(false) => break,
        }
    }
    Ok(guesses)
}

/// A reader of `file` past its header (if it has one).
fn open_file(file: &InputFile, o: &CsvSettings, remote: Option<&Remote>) -> Result<CsvReader> {
    let mut r = reader(file, o, remote)?;
    if o.has_header {
        let mut skip = csv::ByteRecord::new();
        if let Err(e) = read_record(&mut r, &mut skip, &mut Framing::default()) {
            return Err(anyhow!("{}: {e}", file.display));
        }
    }
    Ok(r)
}

/// Up to `batch_rows` records of one file, framed, with the rows that could not be.
#[derive(Default)]
struct Stretch {
    records: Vec<csv::ByteRecord>,
    /// The line each record starts on.
    lines: Vec<u64>,
    failures: Vec<ReadFailure>,
    /// The file has no more records (its end, or a read error).
    eof: bool,
}

/// The shape of the records a source reads.
#[derive(Clone, Copy)]
struct Shape {
    /// Fields a record must have: the header's.
    width: usize,
    /// Where the id sits in a full record, to name the id of rows that cannot be read.
    id_idx: Option<usize>,
    batch_rows: usize,
}

/// Reads the next [`Stretch`] of `file`; ragged rows, quotes left open and unreadable records
/// become failures with their line.
fn read_stretch(file: &InputFile, r: &mut CsvReader, shape: &Shape) -> Stretch {
    let Shape {
        width,
        id_idx,
        batch_rows,
    } = *shape;
    let mut at = Framing::default();
    let mut s = Stretch {
        records: Vec::with_capacity(batch_rows.min(4096)),
        ..Stretch::default()
    };
    while s.records.len() < batch_rows {
        let mut rec = csv::ByteRecord::new();
        match read_record(r, &mut rec, &mut at) {
            Ok(false) => {
                s.eof = true;
                break;
            }
            Ok(true) => {
                let line = at.line;
                if let Some(quote_line) = at.unclosed_quote {
                    // The open field is the record's last; the fields before it are sound.
                    let id = id_idx
                        .filter(|&i| i + 1 < rec.len())
                        .and_then(|_| record_id(&rec, id_idx));
                    s.failures.push(ReadFailure {
                        hides_later_rows: true,
                        file: file.display.clone(),
                        row: Some(line),
                        id,
                        kind: FailureKind::MalformedRow,
                        message: format!(
                            "line {line}: the quoted field opened on line {quote_line} is not closed before the end of the file"
                        ),
                    });
                    continue;
                }
                if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
                    continue; // blank line
                }
                if rec.len() != width {
                    // A stray or missing delimiter shifts every field after it: only a
                    // first-column id is surely the row's.
                    let id = id_idx
                        .filter(|&i| i == 0)
                        .and_then(|_| record_id(&rec, id_idx));
                    s.failures.push(ReadFailure {
                        hides_later_rows: false,
                        file: file.display.clone(),
                        row: Some(line),
                        id,
                        kind: FailureKind::MalformedRow,
                        message: format!(
                            "line {line}: has {} fields, the header has {width}",
                            rec.len()
                        ),
                    });
                    continue;
                }
                s.records.push(rec);
                s.lines.push(line);
            }
            Err(e) => {
                let line = at.line;
                s.failures.push(ReadFailure {
                    hides_later_rows: false,
                    file: file.display.clone(),
                    row: Some(line),
                    id: None,
                    kind: FailureKind::MalformedRow,
                    message: format!("line {line}: {e}"),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    s.eof = true;
                    break;
                }
            }
        }
    }
    s
}

/// Streams the source's files in order, `batch_rows` records at a time, projected to `columns`.
pub fn open(
    settings: &SourceSettings,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
    remote: Option<Remote>,
) -> Result<BatchIter> {
    let o = settings.csv.clone();
    let schema = survey.schema.clone();
    let projection: Vec<usize> = columns
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<_, _>>()?;
    let shape = Shape {
        width: schema.fields().len(),
        id_idx: id_column.as_ref().and_then(|c| schema.index_of(c).ok()),
        batch_rows: settings.batch_rows,
    };
    let files = survey.files.clone();
    let mut next_file = 0usize;
    let mut current: Option<(InputFile, CsvReader)> = None;
    let iter = std::iter::from_fn(move || loop {
        if current.is_none() {
            let file = files.get(next_file)?.clone();
            next_file += 1;
            match open_file(&file, &o, remote.as_ref()) {
                Ok(r) => current = Some((file, r)),
                Err(e) => return Some(Err(e)),
            }
        }
        let (file, r) = current.as_mut().expect("set above");
        let Stretch {
            records,
            lines,
            mut failures,
            eof,
        } = read_stretch(file, r, &shape);
        let file = file.clone();
        if eof {
            current = None;
        }
        if records.is_empty() && failures.is_empty() {
            continue;
        }
        let result = (|| {
            let (batch, rows) = decode_records(
                &file,
                &records,
                &lines,
                &schema,
                &o,
                shape.id_idx,
                &mut failures,
            )?;
            let batch = batch.project(&projection)?;
            let mut sb = finish(&file, batch, rows, id_column.as_deref())?;
            failures.append(&mut sb.failures);
            sb.failures = failures;
            Ok(sb)
        })();
        return Some(result);
    });
    Ok(Box::new(iter))
}
