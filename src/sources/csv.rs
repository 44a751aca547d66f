//! CSV files: the `csv` crate frames records (so a ragged or malformed row is dead-lettered with
//! its line number instead of failing the file), arrow-csv turns good records into typed columns.
//! A watch on the bytes read (`Tracked`) gives each record the line it starts on and catches a
//! quote left open at the end of the file, neither of which the `csv` crate reports.

use super::parquet::finish;
use super::{BatchIter, InputFile, ReadFailure, SourcePlan};
use crate::config::{ColumnType, Pipeline};
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read};
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

/// A run of `\r`/`\n` bytes (line breaks and blank lines) in a CSV file.
#[derive(Debug, Clone, Copy)]
struct BreakRun {
    start: u64,
    end: u64,
    /// Line breaks in the file up to `end`.
    breaks: u64,
}

/// Where the scan stands with respect to quoting, mirroring csv-core's states for our settings
/// (quoting on, doubled quotes, no escape, `\r`, `\n` or `\r\n` ending records).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quote {
    /// At the start of a field (or of a record, or on a blank line).
    AtFieldStart,
    Unquoted,
    Quoted,
    /// Just after a quote inside a quoted field: it closes the field unless another follows.
    AfterQuoteInQuoted,
}

/// Watches the bytes the csv crate reads, for what it does not tell: its `Position::line()`
/// counts only `\n` (a CR-only file is all line 1) and is taken before the blank lines and the
/// `\n` of a CRLF that precede a record; and it closes a quoted field still open at the end of
/// the file as if nothing were wrong. Memory: the runs of line-break bytes not yet passed, i.e.
/// within the parser's 8 KiB buffer and the record being read.
struct Tracked<R> {
    inner: R,
    delimiter: u8,
    quote_byte: u8,
    /// Bytes handed to the parser so far.
    offset: u64,
    /// Line breaks (`\n`, `\r\n`, or a lone `\r`) in those bytes.
    breaks: u64,
    prev_cr: bool,
    /// Start of the run of `\r`/`\n` bytes being read, if the last byte was one.
    open_run: Option<u64>,
    /// Closed runs not yet passed by a record start.
    runs: VecDeque<BreakRun>,
    /// Line breaks before the runs still in `runs`.
    passed: u64,
    quote: Quote,
    /// Line of the quote that opened the current quoted field.
    quote_line: u64,
    /// At end of file: the line where a quoted field left open there started.
    eof_open_quote: Option<u64>,
}

impl<R: Read> Tracked<R> {
    fn new(inner: R, o: &Opts) -> Self {
        Self {
            inner,
            delimiter: o.delimiter,
            quote_byte: o.quote,
            offset: 0,
            breaks: 0,
            prev_cr: false,
            open_run: None,
            runs: VecDeque::new(),
            passed: 0,
            quote: Quote::AtFieldStart,
            quote_line: 0,
            eof_open_quote: None,
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &c in bytes {
            let at = self.offset;
            self.offset += 1;
            let newline = c == b'\r' || c == b'\n';
            if newline {
                // `\r\n` is one break, counted at its `\r`.
                if c == b'\r' || !self.prev_cr {
                    self.breaks += 1;
                }
                if self.open_run.is_none() {
                    self.open_run = Some(at);
                }
            } else if let Some(start) = self.open_run.take() {
                self.runs.push_back(BreakRun {
                    start,
                    end: at,
                    breaks: self.breaks,
                });
            }
            self.prev_cr = c == b'\r';
            let ends_field = c == self.delimiter || newline;
            self.quote = match self.quote {
                Quote::AtFieldStart if c == self.quote_byte => {
                    self.quote_line = self.breaks + 1;
                    Quote::Quoted
                }
                Quote::Quoted if c == self.quote_byte => Quote::AfterQuoteInQuoted,
                Quote::Quoted => Quote::Quoted,
                Quote::AfterQuoteInQuoted if c == self.quote_byte => Quote::Quoted,
                _ if ends_field => Quote::AtFieldStart,
                _ => Quote::Unquoted,
            };
        }
    }

    /// The 1-based line of the record the parser started reading at byte `pos`: the record
    /// itself starts after any `\r`/`\n` bytes there (blank lines, the `\n` of a CRLF).
    /// Calls must come with growing `pos`.
    fn line_at(&mut self, pos: u64) -> u64 {
        while let Some(run) = self.runs.front().copied() {
            if run.end <= pos {
                self.passed = run.breaks;
                self.runs.pop_front();
            } else if run.start <= pos {
                self.passed = run.breaks;
                self.runs.pop_front();
                return run.breaks + 1;
            } else {
                break;
            }
        }
        if self.open_run.is_some_and(|start| start <= pos) {
            return self.breaks + 1;
        }
        self.passed + 1
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof_open_quote = (self.quote == Quote::Quoted).then_some(self.quote_line);
        } else {
            self.scan(&buf[..n]);
        }
        Ok(n)
    }
}

type CsvReader = csv::Reader<Tracked<BufReader<File>>>;

fn reader(file: &InputFile, o: &Opts) -> Result<CsvReader> {
    let f = File::open(&file.path).with_context(|| format!("{}: cannot open", file.display))?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(Tracked::new(BufReader::with_capacity(1 << 20, f), o)))
}

/// Where the last record read starts, and whether it ran into the end of the file inside
/// quotes (then the csv crate has swallowed everything after the opening quote into it).
#[derive(Debug, Default, Clone, Copy)]
struct Framing {
    /// 1-based line where the record starts.
    line: u64,
    /// Line of the quote left open at the end of the file, if this record holds it.
    unclosed_quote: Option<u64>,
}

/// Reads the next record, as `read_byte_record` does, noting its [`Framing`].
fn read_record(
    r: &mut CsvReader,
    rec: &mut csv::ByteRecord,
    at: &mut Framing,
) -> csv::Result<bool> {
    let res = r.read_byte_record(rec);
    let start = rec.position().map_or(0, |p| p.byte());
    at.line = r.get_mut().line_at(start);
    at.unclosed_quote = None;
    if matches!(res, Ok(true)) {
        // Only the record that holds the open quote reaches the very end of the file.
        let end = r.position().byte();
        let t = r.get_ref();
        at.unclosed_quote = t.eof_open_quote.filter(|_| end == t.offset);
    }
    res
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
    let mut at = Framing::default();
    let mut seen = 0;
    if o.has_header {
        read_record(&mut r, &mut rec, &mut at)?;
    }
    while seen < o.infer_rows {
        match read_record(&mut r, &mut rec, &mut at) {
            // A record swallowed by an open quote says nothing about the columns' types.
            Ok(true) if rec.len() == names.len() && at.unclosed_quote.is_none() => {
                for (g, v) in guesses.iter_mut().zip(rec.iter()) {
                    *g = merge(*g, guess(v));
                }
                seen += 1;
            }
            Ok(true) | Err(_) => continue,
            Ok(false) => break,
        }
    }
    // Ids are text, verbatim, whatever they look like (`007` is not `7`; one `1e3` must not
    // turn `7` into `7.0`) and whatever `[source.schema]` says.
    let id = super::id_column(pipeline, |c| names.iter().any(|n| n == c));
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

/// The record's id, when its id field holds text that is a usable id.
fn record_id(rec: &csv::ByteRecord, id_idx: Option<usize>) -> Option<String> {
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
    o: &Opts,
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
fn decode_records(
    file: &InputFile,
    records: &[csv::ByteRecord],
    lines: &[u64],
    schema: &SchemaRef,
    o: &Opts,
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
                kind: "bad_value",
                message: bad_value_message(rec, line, schema, o, &e.to_string()),
            }),
        }
    }
    Ok((arrow::compute::concat_batches(schema, &good)?, good_lines))
}

/// arrow-csv's messages count lines and fields from 0 within our re-encoded buffer, and quote
/// the whole row; drop those misleading parts (the caller says the line).
fn strip_arrow_line(msg: &str) -> String {
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
    // Where the id sits in a full record, to name the id of rows that cannot be read.
    let id_idx = id_column.as_ref().and_then(|c| schema.index_of(c).ok());
    let files = plan.files.clone();
    let mut next_file = 0usize;
    let mut current: Option<(InputFile, CsvReader)> = None;
    let iter = std::iter::from_fn(move || loop {
        let mut at = Framing::default();
        if current.is_none() {
            let file = files.get(next_file)?.clone();
            next_file += 1;
            match reader(&file, &o) {
                Ok(mut r) => {
                    if o.has_header {
                        let mut skip = csv::ByteRecord::new();
                        if let Err(e) = read_record(&mut r, &mut skip, &mut at) {
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
            match read_record(r, &mut rec, &mut at) {
                Ok(false) => {
                    eof = true;
                    break;
                }
                Ok(true) => {
                    let line = at.line;
                    if let Some(quote_line) = at.unclosed_quote {
                        // The open field is the record's last; the fields before it are sound.
                        let id = id_idx
                            .filter(|&i| i + 1 < rec.len())
                            .and_then(|_| record_id(&rec, id_idx));
                        failures.push(ReadFailure {
                            hides_later_rows: true,
                            file: file.display.clone(),
                            row: Some(line),
                            id,
                            kind: "malformed_row",
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
                        failures.push(ReadFailure {
                            hides_later_rows: false,
                            file: file.display.clone(),
                            row: Some(line),
                            id,
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
                    let line = at.line;
                    failures.push(ReadFailure {
                        hides_later_rows: false,
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
            let (batch, rows) = decode_records(
                &file_c,
                &records,
                &lines,
                &schema,
                &o,
                id_idx,
                &mut failures,
            )?;
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
    use std::path::Path;

    /// A CSV pipeline over `csv` (written into `dir`), with extra `[source]` keys.
    fn pipeline(dir: &Path, csv: &[u8], source_extra: &str) -> Pipeline {
        let path = dir.join("d.csv");
        std::fs::write(&path, csv).unwrap();
        let text = format!(
            "[source]\ntype = \"csv\"\npath = \"{}\"\n{source_extra}\n\n\
             [[model]]\nname = \"minilm\"\nprovider = \"local\"\n\
             id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
             [[embed]]\nmodel = \"minilm\"\ncolumn = \"title\"\n\n\
             [sink]\nuri = \"db\"\ntable = \"t\"\n",
            path.display()
        );
        Pipeline::parse(&dir.join("p.toml"), &text).unwrap()
    }

    /// Reads the whole source: (id, row) of every row read, and the failures.
    fn read_all(p: &Pipeline) -> (Vec<(String, u64)>, Vec<ReadFailure>) {
        let plan = crate::sources::plan(p).unwrap();
        let columns = plan.column_names();
        let id = crate::sources::id_column(p, |c| columns.iter().any(|n| n == c));
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        for sb in open(p, &plan, &columns, id).unwrap() {
            let sb = sb.unwrap();
            rows.extend((0..sb.rows.len()).map(|i| (sb.ids.value(i).to_string(), sb.rows[i])));
            failures.extend(sb.failures);
        }
        (rows, failures)
    }

    fn ids(rows: &[(String, u64)]) -> Vec<&str> {
        rows.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn lines(rows: &[(String, u64)]) -> Vec<u64> {
        rows.iter().map(|(_, line)| *line).collect()
    }

    #[test]
    fn type_guessing_widens() {
        assert!(matches!(merge(guess(b"1"), guess(b"2.5")), Guess::Float));
        assert!(matches!(merge(guess(b"1"), guess(b"x")), Guess::Text));
        assert!(matches!(merge(guess(b""), guess(b"true")), Guess::Bool));
    }

    #[test]
    fn ids_are_read_as_text_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(
            dir.path(),
            b"id,title\n007,a\n7,b\n0042,c\n42,d\n1e3,e\n",
            "",
        );
        let plan = crate::sources::plan(&p).unwrap();
        assert_eq!(
            plan.schema.field_with_name("id").unwrap().data_type(),
            &DataType::Utf8
        );
        let (rows, failures) = read_all(&p);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(ids(&rows), ["007", "7", "0042", "42", "1e3"]);

        // `id_column`, even when `[source.schema]` calls it a number.
        let p = pipeline(
            dir.path(),
            b"sku,title\n007,a\n7,b\n",
            "id_column = \"sku\"\n[source.schema]\nsku = \"int64\"",
        );
        let (rows, failures) = read_all(&p);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(ids(&rows), ["007", "7"]);

        // A column `id` that the projection leaves out is no id: its type is inferred.
        let p = pipeline(dir.path(), b"id,title\n007,a\n", "columns = [\"title\"]");
        let plan = crate::sources::plan(&p).unwrap();
        assert_eq!(
            plan.schema.field_with_name("id").unwrap().data_type(),
            &DataType::Int64
        );

        // Blank ids are missing, not ids.
        let p = pipeline(dir.path(), b"id,title\n1,a\n  ,b\n,c\n", "");
        let (rows, failures) = read_all(&p);
        assert_eq!(ids(&rows), ["1"]);
        let kinds: Vec<_> = failures.iter().map(|f| (f.kind, f.row)).collect();
        assert_eq!(kinds, [("missing_id", Some(3)), ("missing_id", Some(4))]);
    }

    #[test]
    fn rows_are_the_lines_records_start_on_for_lf_crlf_and_cr() {
        let dir = tempfile::tempdir().unwrap();
        let lf = "\nid,title\n1,a\n\n2,b\n3,\"x\ny\"\n\n\n4,c\n5,d,extra\n";
        for (name, text) in [
            ("LF", lf.to_string()),
            ("CRLF", lf.replace('\n', "\r\n")),
            ("CR", lf.replace('\n', "\r")),
        ] {
            for batch in ["", "batch_size = 1"] {
                let p = pipeline(dir.path(), text.as_bytes(), batch);
                let (rows, failures) = read_all(&p);
                assert_eq!(ids(&rows), ["1", "2", "3", "4"], "{name}");
                assert_eq!(lines(&rows), [3, 5, 6, 10], "{name} {batch}");
                assert_eq!(failures.len(), 1, "{name}: {failures:?}");
                assert_eq!(failures[0].row, Some(11), "{name}: {failures:?}");
                assert_eq!(
                    failures[0].message,
                    "line 11: has 3 fields, the header has 2"
                );
            }
        }
    }

    #[test]
    fn a_quote_left_open_at_the_end_is_a_malformed_row() {
        let dir = tempfile::tempdir().unwrap();
        let lf = "id,title\n1,hello\n2,\"broken\n3,third\n";
        for text in [lf.to_string(), lf.replace('\n', "\r")] {
            for batch in ["", "batch_size = 1"] {
                let p = pipeline(dir.path(), text.as_bytes(), batch);
                let (rows, failures) = read_all(&p);
                assert_eq!(rows, [("1".to_string(), 2)], "{text:?} {batch}");
                assert_eq!(failures.len(), 1, "{failures:?}");
                let f = &failures[0];
                assert_eq!(
                    (f.kind, f.row, f.id.as_deref()),
                    ("malformed_row", Some(3), Some("2"))
                );
                assert_eq!(
                    f.message,
                    "line 3: the quoted field opened on line 3 is not closed before the end of the file"
                );
            }
        }
        // The record starts on line 2; its last field opens a quote on line 3.
        let p = pipeline(dir.path(), b"id,title,n\n1,\"a\nb\",\"open\n", "");
        let (rows, failures) = read_all(&p);
        assert!(rows.is_empty());
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            (failures[0].row, failures[0].id.as_deref()),
            (Some(2), Some("1"))
        );
        assert!(
            failures[0]
                .message
                .starts_with("line 2: the quoted field opened on line 3 "),
            "{}",
            failures[0].message
        );
        // With the id in the open field, the id is not known.
        let p = pipeline(dir.path(), b"title,id\na,\"1\n", "");
        let (_, failures) = read_all(&p);
        assert_eq!(
            (failures[0].kind, failures[0].id.as_deref()),
            ("malformed_row", None)
        );
        // A header left open is an error of the file.
        let p = pipeline(dir.path(), b"id,\"title\n1,a\n", "");
        let err = crate::sources::plan(&p)
            .err()
            .expect("an open header fails");
        assert!(err.to_string().contains("is not closed"), "{err}");
    }

    #[test]
    fn closed_and_literal_quotes_are_not_open_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (text, quote) in [
            ("\"id\",\"title\"\n1,\"ok\"", ""),
            (
                "id,title\n1,\"a \"\"quoted\"\" word\"\n2,5\" disk\n3,\"x\"y\n",
                "",
            ),
            ("id,title\n1,\"\"\n", ""),
            ("id,title\n1,5\" disk\n2,'a,b'\n", "quote = \"'\""),
        ] {
            let p = pipeline(dir.path(), text.as_bytes(), quote);
            let (rows, failures) = read_all(&p);
            assert!(failures.is_empty(), "{text:?}: {failures:?}");
            assert!(!rows.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn unreadable_rows_carry_their_id_and_plain_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(
            dir.path(),
            b"id,title,price\n1,a,1.5\n2,b,abc\n\n3,c,2\n4,d,2,extra\n5,\xff,3\n",
            "[source.schema]\nprice = \"float64\"",
        );
        let (rows, failures) = read_all(&p);
        assert_eq!(rows, [("1".to_string(), 2), ("3".to_string(), 5)]);
        let find = |kind: &str, row: u64| {
            failures
                .iter()
                .find(|f| f.kind == kind && f.row == Some(row))
                .unwrap_or_else(|| panic!("{kind} at {row}: {failures:?}"))
        };
        let bad = find("bad_value", 3);
        assert_eq!(bad.id.as_deref(), Some("2"));
        assert_eq!(
            bad.message,
            "line 3: value `abc` of column `price` is not a float64"
        );
        let ragged = find("malformed_row", 6);
        assert_eq!(ragged.id.as_deref(), Some("4"));
        let utf8 = find("bad_value", 7);
        assert_eq!(utf8.id.as_deref(), Some("5"));
        assert_eq!(
            utf8.message,
            "line 7: value of column `title` is not valid UTF-8"
        );
        assert_eq!(failures.len(), 3, "{failures:?}");

        // A ragged row's fields may be shifted: only a first-column id is named.
        let p = pipeline(dir.path(), b"title,id\na,1\nb,x,2\n", "");
        let (_, failures) = read_all(&p);
        assert_eq!(
            (failures[0].row, failures[0].id.as_deref()),
            (Some(3), None)
        );
    }

    #[test]
    fn arrow_messages_lose_their_buffer_lines() {
        assert_eq!(
            strip_arrow_line("Csv error: Encountered invalid UTF-8 data for line 1 and field 2"),
            "Encountered invalid UTF-8 data"
        );
        assert_eq!(
            strip_arrow_line(
                "Parser error: Error while parsing value 'abc' as type 'Float64' for column 2 at line 0. Row data: '[2,b,abc]'"
            ),
            "Error while parsing value 'abc' as type 'Float64'"
        );
    }
}
