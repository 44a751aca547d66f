//! Resolve layer: the `[source]` table → the settings the sources take, defaults applied once.

use crate::config::{ColumnType, Origin, Pipeline, SourceKind};
use crate::util::{Location, S3Uri};
use std::collections::BTreeMap;
use std::ops::Range;

/// Rows per source batch.
pub const DEFAULT_BATCH_ROWS: usize = 1024;
/// Rows read to infer CSV column types.
pub const DEFAULT_INFER_ROWS: usize = 1000;
/// Per-image size limit (Bedrock's largest image limit is 25 MB; local files above this are
/// almost certainly not meant to be embedded).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 25 * 1024 * 1024;
/// Per-document size limit: far above any text or report worth embedding whole, low enough that
/// a batch of documents fits in memory with their extracted text.
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The files a documents source reads when `include` is not given: every format it extracts.
pub const DEFAULT_DOCUMENT_INCLUDE: &[&str] = &[
    "**/*.txt",
    "**/*.md",
    "**/*.markdown",
    "**/*.html",
    "**/*.htm",
    "**/*.pdf",
];

/// One `path` / `paths` entry as written (after `${VAR}` expansion), and resolved.
#[derive(Debug, Clone)]
pub struct SourcePath {
    pub written: String,
    /// A local path resolved against the pipeline file's folder, or an `s3://` URI.
    pub resolved: Location,
    /// Where it is written in the pipeline file, for errors.
    pub span: Range<usize>,
}

/// How CSV files are read.
#[derive(Debug, Clone)]
pub struct CsvSettings {
    pub delimiter: u8,
    pub quote: u8,
    pub has_header: bool,
    pub infer_rows: usize,
    /// Explicit column types; columns not listed are inferred.
    pub types: BTreeMap<String, ColumnType>,
    /// Where each explicit type is written, for errors.
    pub type_spans: BTreeMap<String, Range<usize>>,
}

/// Which files of an image folder are read.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub recursive: bool,
    pub max_image_bytes: u64,
}

/// Which files of a document folder are read.
#[derive(Debug, Clone)]
pub struct DocumentSettings {
    /// As written, else [`DEFAULT_DOCUMENT_INCLUDE`].
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub recursive: bool,
    pub max_document_bytes: u64,
}

/// Everything a source needs from the pipeline file.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub kind: SourceKind,
    /// The pipeline file, for errors that point into it.
    pub origin: Origin,
    pub paths: Vec<SourcePath>,
    /// `id_column` as written.
    pub id_column: Option<String>,
    /// The `columns` projection as written.
    pub columns: Option<Vec<String>>,
    pub batch_rows: usize,
    pub csv: CsvSettings,
    pub images: ImageSettings,
    pub documents: DocumentSettings,
}

impl SourceSettings {
    pub fn resolve(pipeline: &Pipeline) -> Self {
        let s = pipeline.source();
        let byte = |v: &Option<toml::Spanned<String>>, d: u8| {
            v.as_ref().map_or(d, |v| v.get_ref().as_bytes()[0])
        };
        let strings = |v: &Option<Vec<toml::Spanned<String>>>| -> Vec<String> {
            v.iter().flatten().map(|p| p.get_ref().clone()).collect()
        };
        Self {
            kind: *s.kind.get_ref(),
            origin: pipeline.origin(),
            paths: pipeline
                .source_paths()
                .into_iter()
                .map(|p| SourcePath {
                    written: p.get_ref().to_string(),
                    resolved: match S3Uri::parse(p.get_ref()) {
                        Ok(uri) => Location::S3(uri),
                        Err(_) => Location::Local(pipeline.resolve(p.get_ref().as_ref())),
                    },
                    span: p.span(),
                })
                .collect(),
            id_column: s.id_column.as_ref().map(|c| c.get_ref().clone()),
            columns: s
                .columns
                .as_ref()
                .map(|c| c.iter().map(|c| c.get_ref().clone()).collect()),
            batch_rows: s
                .batch_size
                .as_ref()
                .map_or(DEFAULT_BATCH_ROWS, |b| *b.get_ref()),
            csv: CsvSettings {
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
                type_spans: s
                    .schema
                    .as_ref()
                    .map(|m| {
                        m.get_ref()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.span()))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            images: ImageSettings {
                include: strings(&s.include),
                exclude: strings(&s.exclude),
                recursive: s.recursive.as_ref().is_none_or(|r| *r.get_ref()),
                max_image_bytes: s
                    .max_image_bytes
                    .as_ref()
                    .map_or(DEFAULT_MAX_IMAGE_BYTES, |m| *m.get_ref()),
            },
            documents: DocumentSettings {
                include: match strings(&s.include) {
                    written if written.is_empty() => DEFAULT_DOCUMENT_INCLUDE
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    written => written,
                },
                exclude: strings(&s.exclude),
                recursive: s.recursive.as_ref().is_none_or(|r| *r.get_ref()),
                max_document_bytes: s
                    .max_document_bytes
                    .as_ref()
                    .map_or(DEFAULT_MAX_DOCUMENT_BYTES, |m| *m.get_ref()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings of a documents source with `extra` keys in [source].
    fn documents(extra: &str) -> SourceSettings {
        let text = format!(
            "[source]\ntype = \"documents\"\npath = \"docs\"\n{extra}\n\n\
             [[model]]\nname = \"m\"\nprovider = \"local\"\n\
             id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
             [[embed]]\nmodel = \"m\"\ncolumn = \"text\"\n\n\
             [sink]\nuri = \"db\"\ntable = \"t\"\n"
        );
        let p = crate::resolve::parse(std::path::Path::new("pipelines/p.toml"), &text).unwrap();
        SourceSettings::resolve(&p)
    }

    #[test]
    fn documents_read_every_format_unless_include_says_otherwise() {
        let s = documents("");
        assert_eq!(s.documents.include, DEFAULT_DOCUMENT_INCLUDE);
        assert_eq!(s.documents.max_document_bytes, DEFAULT_MAX_DOCUMENT_BYTES);
        assert!(s.documents.recursive);
        let s = documents(
            "include = [\"notes/*.md\"]\nexclude = [\"drafts/**\"]\nrecursive = false\n\
             max_document_bytes = 1000",
        );
        assert_eq!(s.documents.include, ["notes/*.md"]);
        assert_eq!(s.documents.exclude, ["drafts/**"]);
        assert!(!s.documents.recursive);
        assert_eq!(s.documents.max_document_bytes, 1000);
    }

    #[test]
    fn unset_keys_take_their_defaults() {
        let text = "[source]\ntype = \"parquet\"\npath = \"x.parquet\"\n\n\
                    [[model]]\nname = \"m\"\nprovider = \"local\"\n\
                    id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
                    [[embed]]\nmodel = \"m\"\ncolumn = \"title\"\n\n\
                    [sink]\nuri = \"db\"\ntable = \"t\"\n";
        let p = crate::resolve::parse(std::path::Path::new("pipelines/p.toml"), text).unwrap();
        let s = SourceSettings::resolve(&p);
        assert_eq!(s.batch_rows, DEFAULT_BATCH_ROWS);
        assert_eq!(s.csv.infer_rows, DEFAULT_INFER_ROWS);
        assert_eq!(s.images.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
        assert_eq!(s.documents.max_document_bytes, DEFAULT_MAX_DOCUMENT_BYTES);
        assert_eq!(s.documents.include, DEFAULT_DOCUMENT_INCLUDE);
        assert!(s.documents.recursive);
        assert_eq!(
            s.paths[0].resolved,
            Location::Local(std::path::PathBuf::from("pipelines/x.parquet"))
        );
    }
}
