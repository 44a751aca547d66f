//! Turning framed records into typed Arrow columns (through arrow-csv), and saying in the user's
//! terms why a record does not decode.

use crate::resolve::CsvSettings;
use crate::sources::{InputFile, ReadFailure};
use crate::util::FailureKind;
use anyhow::{anyhow, Result};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Encodes records back to CSV bytes for arrow-csv.
fn encode(records: &[csv::ByteRecord], o: &CsvSettings) -> Result<Vec<u8>> {
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
    o: &CsvSettings,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    arrow_csv::ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_delimiter(o.delimiter)
        .with_quote(o.quote)
        .with_batch_size(1 << 20)
        .build_buffered(std::io::Cursor::new(buf))?
        .collect()
}

/// The record's id, when its id field holds text that is a usable id.
pub(super) fn record_id(rec: &csv::ByteRecord, id_idx: Option<usize>) -> Option<String> {
    let v = std::str::from_utf8(rec.get(id_idx?)?).ok()?;
    (!v.trim().is_empty()).then(|| v.to_string())
}

/// A column type as `[source.schema]` names it, with its article, for messages.
fn type_phrase(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 => "a utf8".into(),
        DataType::Int64 => "an int64".into(),
        DataType::Float64 => "a float64".into(),
        DataType::Boolean => "a bool".into(),
        DataType::Date32 => "a date".into(),
        DataType::Timestamp(..) => "a timestamp".into(),
        other => format!("a {other}"),
    }
}

/// A value cut to a readable length for a message.
fn shorten(v: &str) -> String {
    const MAX: usize = 80;
    match v.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &v[..at]),
        None => v.to_string(),
    }
}

/// Why a record does not decode, in the user's terms: the first value that does not parse as
/// its column's type (arrow-csv's own message counts lines and fields from 0 within our
/// re-encoded buffer).
fn bad_value_message(
    rec: &csv::ByteRecord,
    line: u64,
    schema: &SchemaRef,
    o: &CsvSettings,
    arrow_error: &str,
) -> String {
    for (i, field) in schema.fields().iter().enumerate() {
        let v = rec.get(i).unwrap_or_default();
        let Ok(text) = std::str::from_utf8(v) else {
            return format!(
                "line {line}: value of column `{}` is not valid UTF-8",
                field.name()
            );
        };
        if field.data_type() == &DataType::Utf8 {
            continue;
        }
        let one: SchemaRef = Arc::new(Schema::new(vec![(**field).clone()]));
        let mut single = csv::ByteRecord::new();
        single.push_field(v);
        let parses =
            encode(std::slice::from_ref(&single), o).is_ok_and(|buf| decode(&buf, &one, o).is_ok());
        if !parses {
            return format!(
                "line {line}: value `{}` of column `{}` is not {}",
                shorten(text),
                field.name(),
                type_phrase(field.data_type())
            );
        }
    }
    format!("line {line}: {}", strip_arrow_line(arrow_error))
}

/// Decodes framed records into one batch; a value that does not parse dead-letters its row
/// (with the row's id when its id field, at `id_idx`, is readable).
pub(super) fn decode_records(
    file: &InputFile,
    records: &[csv::ByteRecord],
    lines: &[u64],
    schema: &SchemaRef,
    o: &CsvSettings,
    id_idx: Option<usize>,
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
                hides_later_rows: false,
                file: file.display.clone(),
                row: Some(line),
                id: record_id(rec, id_idx),
                kind: FailureKind::BadValue,
                message: bad_value_message(rec, line, schema, o, &e.to_string()),
            }),
        }
    }
    Ok((arrow::compute::concat_batches(schema, &good)?, good_lines))
}

/// arrow-csv's messages count lines and fields from 0 within our re-encoded buffer, and quote
/// the whole row; drop those misleading parts (the caller says the line).
pub(super) fn strip_arrow_line(msg: &str) -> String {
    let msg = msg
        .trim_start_matches("Parser error: ")
        .trim_start_matches("Csv error: ");
    let mut out = msg.split(". Row data:").next().unwrap_or(msg).to_string();
    for pat in [" for line ", " at line ", " for column "] {
        while let Some(at) = out.find(pat) {
            let rest = &out[at + pat.len()..];
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let mut tail = &rest[digits..];
            if let Some(t) = tail.strip_prefix(" and field ") {
                tail = &t[t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())..];
            }
            out = format!("{}{tail}", &out[..at]);
        }
    }
    out
}
