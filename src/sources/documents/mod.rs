//! Document folders, local or S3 prefixes: `.txt`, `.md`, `.html`/`.htm` and `.pdf` files, one
//! row per document with its text extracted (and, for PDFs, where each page starts), so that a
//! step (or the chunk stage) reads plain text whatever the format. The folder machinery is
//! [`super::folder`]'s, shared with images; extraction is CPU work, done per batch on rayon.
//!
//! A document that cannot be turned into text (not UTF-8, encrypted, damaged, empty, too large)
//! is dead-lettered with its path and the reason; the run goes on.

mod html;
mod pdf;
mod text;

use super::folder::{self, Chunk, Chunks, Filters, Object};
use super::{remote_for, BatchIter, InputFile, ReadFailure, Remote, SourceBatch, SourceFiles};
use crate::resolve::source::{DocumentSettings, DEFAULT_DOCUMENT_INCLUDE};
use crate::util::columns::PAGE_STARTS;
use crate::util::{FailureKind, Location};
use anyhow::Result;
use arrow::array::{ArrayRef, ListBuilder, StringArray, UInt64Array, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// The setting that limits a document's size, named in messages.
const LIMIT_KEY: &str = "max_document_bytes";

/// The item of `page_starts` lists (as Arrow's list builder makes it).
fn page_start_item() -> Field {
    Field::new_list_field(DataType::UInt64, true)
}

/// Columns of a documents source. `path` is also the row id; `page_starts` holds, for PDFs, the
/// character offset (in Unicode scalar values) in `text` where each page starts.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("text", DataType::Utf8, false),
        Field::new(
            PAGE_STARTS,
            DataType::List(Arc::new(page_start_item())),
            true,
        ),
        Field::new("size", DataType::UInt64, false),
    ]))
}

/// The formats a documents source reads, told by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Txt,
    Md,
    Html,
    Pdf,
}

impl Format {
    /// The format of the file at `rel`, whatever the case of its extension.
    fn of(rel: &str) -> Option<Self> {
        let ext = Path::new(rel).extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(Self::Txt),
            "md" | "markdown" => Some(Self::Md),
            "html" | "htm" | "xhtml" => Some(Self::Html),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    /// The `format` column's value.
    fn as_str(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Md => "md",
            Self::Html => "html",
            Self::Pdf => "pdf",
        }
    }
}

/// What extraction made of a document's bytes.
#[derive(Debug, Clone, PartialEq)]
struct Extracted {
    title: Option<String>,
    text: String,
    /// PDFs: the character offset in `text` where each page starts.
    page_starts: Option<Vec<u64>>,
}

/// Why a document is dead-lettered: its kind, and a message (without the path, added once by
/// the caller).
type Refusal = (FailureKind, String);

/// A document read and extracted: one row.
struct Document {
    rel: String,
    format: Format,
    /// Bytes of the file.
    size: u64,
    extracted: Extracted,
}

/// The filters of a documents source. The default include names extensions, matched whatever
/// their case (`scan.PDF`); patterns the user writes are matched as written, as for images.
pub(super) fn filters(settings: &DocumentSettings) -> Result<Filters> {
    let include = settings.include.iter().map(String::as_str);
    let exclude = settings.exclude.iter().map(String::as_str);
    if include.clone().eq(DEFAULT_DOCUMENT_INCLUDE.iter().copied()) {
        Filters::with_include_any_case(include, exclude)
    } else {
        Filters::new(include, exclude)
    }
}

/// The rows the source will read (documents and walk failures), when a walk can count them: local
/// folders only, since counting an S3 prefix would list it all twice. Blocking.
pub(super) fn count(settings: &DocumentSettings, folders: &[InputFile]) -> Result<Option<u64>> {
    let filters = filters(settings)?;
    let mut rows = 0u64;
    for f in folders {
        match &f.location {
            Location::Local(path) => {
                rows +=
                    folder::walk_folder(path.clone(), filters.clone(), settings.recursive, false)
                        .count() as u64;
            }
            Location::S3(_) => return Ok(None),
        }
    }
    Ok(Some(rows))
}

/// The refusal of a file whose extension names no format the source reads (an `include` the
/// user wrote can let such files in).
fn unsupported(rel: &str) -> Refusal {
    let ext = Path::new(rel)
        .extension()
        .map(|e| format!(".{} files", e.to_string_lossy()))
        .unwrap_or_else(|| "files without an extension".to_string());
    (
        FailureKind::Unreadable,
        format!(
            "not a document embedpipe reads ({ext} are not): documents are .txt, .md, .markdown, \
             .html, .htm and .pdf files; leave others out with `exclude`"
        ),
    )
}

/// Turns a document's bytes into text, by its format.
fn extract(format: Format, bytes: &[u8]) -> Result<Extracted, Refusal> {
    if bytes.is_empty() {
        return Err((FailureKind::EmptyInput, "the file is empty".to_string()));
    }
    let extracted = match format {
        Format::Txt => Extracted {
            title: None,
            text: text::decode(bytes)?,
            page_starts: None,
        },
        Format::Md => {
            // Kept as written: the markdown chunker reads the `#` headings.
            let text = text::decode(bytes)?;
            Extracted {
                title: text::markdown_title(&text),
                text,
                page_starts: None,
            }
        }
        Format::Html => html::extract(bytes)?,
        Format::Pdf => pdf::extract(bytes)?,
    };
    if extracted.text.trim().is_empty() {
        let why = match format {
            Format::Pdf => "the PDF has no extractable text (a scanned document?); run OCR first",
            Format::Html => "the page has no text once its markup, scripts and styles are removed",
            Format::Txt | Format::Md => "the file holds only whitespace",
        };
        return Err((FailureKind::EmptyInput, why.to_string()));
    }
    Ok(extracted)
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

/// The row of a document whose bytes were read, or why it has none. A parser that panics on
/// the file fails that file only (PDFs say more in their own module).
fn document(format: Format, rel: &str, bytes: &[u8]) -> Result<Document, Refusal> {
    let extracted =
        std::panic::catch_unwind(|| extract(format, bytes)).unwrap_or_else(|panic| {
            Err((
                FailureKind::Unreadable,
                format!(
                    "the {} parser failed on this file ({})",
                    format.as_str(),
                    panic_message(&*panic)
                ),
            ))
        })?;
    Ok(Document {
        rel: rel.to_string(),
        format,
        size: bytes.len() as u64,
        extracted,
    })
}

/// A document's failure: `file` names it in full, `rel` is its id and starts the message.
fn failure(file: &str, rel: &str, (kind, message): Refusal) -> ReadFailure {
    folder::file_failure(file, rel, kind, format!("{rel}: {message}"))
}

/// Reads and extracts a local document; its format is checked, and its size stat'ed, before a
/// byte is read.
fn read_document(path: &Path, rel: &str, max: u64, display: &str) -> Result<Document, ReadFailure> {
    let file = format!("{display}/{rel}");
    let format = Format::of(rel).ok_or_else(|| failure(&file, rel, unsupported(rel)))?;
    let bytes =
        folder::read_local(path, max, LIMIT_KEY).map_err(|refusal| failure(&file, rel, refusal))?;
    document(format, rel, &bytes).map_err(|refusal| failure(&file, rel, refusal))
}

/// Downloads a batch's documents (not those of no format the source reads, nor those over
/// `max`) and extracts them. A failed GET fails that document only.
fn fetch_documents(
    objects: Vec<Object>,
    remote: &Remote,
    max: u64,
) -> Vec<Result<Document, ReadFailure>> {
    let mut out = Vec::with_capacity(objects.len());
    let mut wanted = Vec::with_capacity(objects.len());
    for o in objects {
        match Format::of(&o.rel) {
            Some(_) => wanted.push(o),
            None => out.push(Err(failure(
                &o.uri.to_string(),
                &o.rel,
                unsupported(&o.rel),
            ))),
        }
    }
    let extracted: Vec<Result<Document, ReadFailure>> =
        folder::fetch_objects(wanted, remote, max, LIMIT_KEY)
            .into_par_iter()
            .map(|(o, got)| {
                let file = o.uri.to_string();
                let format = Format::of(&o.rel).ok_or_else(|| unsupported(&o.rel));
                got.and_then(|bytes| document(format?, &o.rel, &bytes))
                    .map_err(|refusal| failure(&file, &o.rel, refusal))
            })
            .collect();
    out.extend(extracted);
    out
}

/// Opens a documents source: a lazy walk (or listing) of its folders, in batches of at most
/// `batch_rows` documents and about 64 MB of files, each extracted on rayon.
pub(crate) fn open(
    settings: &DocumentSettings,
    batch_rows: usize,
    survey: &SourceFiles,
    remote: Option<Remote>,
    shard: crate::util::Shard,
) -> Result<BatchIter> {
    let max = settings.max_document_bytes;
    let mut chunks = Chunks::new(
        survey.files.clone(),
        filters(settings)?,
        settings.recursive,
        remote.clone(),
        batch_rows,
        max,
        shard,
    );
    let schema = schema();
    let iter = std::iter::from_fn(move || {
        let Chunk {
            display,
            files,
            objects,
            mut failures,
        } = match chunks.next()? {
            Ok(chunk) => chunk,
            Err(e) => return Some(Err(e)),
        };
        let mut results: Vec<Result<Document, ReadFailure>> = files
            .par_iter()
            .map(|(path, rel)| read_document(path, rel, max, &display))
            .collect();
        if !objects.is_empty() {
            match remote_for(remote.as_ref()) {
                Ok(remote) => results.extend(fetch_documents(objects, remote, max)),
                Err(e) => return Some(Err(e)),
            }
        }
        let mut documents = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(d) => documents.push(d),
                Err(f) => failures.push(f),
            }
        }
        Some(build(&schema, display, documents, failures))
    });
    Ok(Box::new(iter))
}

fn build(
    schema: &SchemaRef,
    display: Arc<str>,
    documents: Vec<Document>,
    failures: Vec<ReadFailure>,
) -> Result<SourceBatch> {
    let paths: StringArray = documents.iter().map(|d| Some(d.rel.as_str())).collect();
    let mut page_starts = ListBuilder::new(UInt64Builder::new()).with_field(page_start_item());
    for d in &documents {
        match &d.extracted.page_starts {
            Some(starts) => {
                page_starts.values().append_slice(starts);
                page_starts.append(true);
            }
            None => page_starts.append_null(),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(paths.clone()),
        Arc::new(
            documents
                .iter()
                .map(|d| Some(d.format.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            documents
                .iter()
                .map(|d| d.extracted.title.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            documents
                .iter()
                .map(|d| Some(d.extracted.text.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(page_starts.finish()),
        Arc::new(documents.iter().map(|d| d.size).collect::<UInt64Array>()),
    ];
    Ok(SourceBatch {
        file: display,
        batch: RecordBatch::try_new(schema.clone(), columns)?,
        ids: Arc::new(paths),
        // Document rows are located by their path (the id), not a row number.
        rows: vec![0; documents.len()],
        failures,
        hidden_elsewhere: false,
    })
}

#[cfg(test)]
mod tests;
