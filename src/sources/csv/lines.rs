//! Framing CSV records: the line each record starts on, and a quote left open at the end of the
//! file, neither of which the `csv` crate reports. The bytes come from a local file or, by
//! ranged GETs, from an S3 object.

use crate::resolve::CsvSettings;
use crate::sources::{remote_for, InputFile, Remote};
use crate::util::Location;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};

/// Bytes per ranged GET of a CSV object (the next one is fetched while this one is parsed).
const S3_CHUNK: usize = 8 << 20;

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
pub(super) struct Tracked<R> {
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
    fn new(inner: R, o: &CsvSettings) -> Self {
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

pub(super) type CsvReader = csv::Reader<Tracked<Box<dyn Read + Send>>>;

/// The bytes of `file`: buffered from disk, or from S3 in ranged GETs. S3 reads block on the
/// captured runtime, so an S3 input is read on a blocking thread only.
fn input(file: &InputFile, remote: Option<&Remote>) -> Result<Box<dyn Read + Send>> {
    match &file.location {
        Location::Local(path) => {
            let f = File::open(path).with_context(|| format!("{}: cannot open", file.display))?;
            Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
        }
        Location::S3(uri) => {
            let remote = remote_for(remote)?;
            let size = remote.size(file, uri)?;
            // The reader takes the runtime that is current where it is made.
            let _runtime = remote.runtime.enter();
            Ok(Box::new(remote.stores.reader(uri, size, S3_CHUNK)?))
        }
    }
}

pub(super) fn reader(
    file: &InputFile,
    o: &CsvSettings,
    remote: Option<&Remote>,
) -> Result<CsvReader> {
    Ok(framed(input(file, remote)?, o))
}

/// A CSV reader of any bytes: quoting and delimiter as `o` says, records framed by [`Tracked`].
fn framed(input: Box<dyn Read + Send>, o: &CsvSettings) -> CsvReader {
    csv::ReaderBuilder::new()
        .delimiter(o.delimiter)
        .quote(o.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(Tracked::new(input, o))
}

/// Where the last record read starts, and whether it ran into the end of the file inside
/// quotes (then the csv crate has swallowed everything after the opening quote into it).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Framing {
    /// 1-based line where the record starts.
    pub line: u64,
    /// Line of the quote left open at the end of the file, if this record holds it.
    pub unclosed_quote: Option<u64>,
}

/// Reads the next record, as `read_byte_record` does, noting its [`Framing`].
pub(super) fn read_record(
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
