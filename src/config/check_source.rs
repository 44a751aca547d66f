//! The `[source]` checks that need no data: a path is given, keys belong to the source type,
//! single-character CSV options and valid folder (images, documents) globs. (Whether the files
//! exist is for later.)

use super::{ConfigError, Pipeline, SourceKind};
use std::ops::Range;

impl Pipeline {
    pub(super) fn check_source(&self) -> Result<(), ConfigError> {
        let src = self.file.source.get_ref();
        let kind = *src.kind.get_ref();
        if src.path.is_none() && src.paths.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(self
                .error(self.file.source.span(), "[source] needs `path` (a file, glob or folder) or `paths` (a list)")
                .with_help("e.g. path = \"../sample_data/articles.parquet\" (relative to the pipeline file)"));
        }
        if let Some(b) = &src.batch_size {
            if *b.get_ref() == 0 || *b.get_ref() > 1_000_000 {
                return Err(self.error(b.span(), "batch_size must be between 1 and 1000000"));
            }
        }
        let only = |opt: Option<Range<usize>>, key: &str, kinds: &str| -> Result<(), ConfigError> {
            match opt {
                Some(span) => Err(self.error(
                    span,
                    format!(
                        "`{key}` applies only to {kinds} sources, not `{}`",
                        kind_name(kind)
                    ),
                )),
                None => Ok(()),
            }
        };
        if kind != SourceKind::Csv {
            only(src.delimiter.as_ref().map(|s| s.span()), "delimiter", "csv")?;
            only(src.quote.as_ref().map(|s| s.span()), "quote", "csv")?;
            only(
                src.has_header.as_ref().map(|s| s.span()),
                "has_header",
                "csv",
            )?;
            only(src.schema.as_ref().map(|s| s.span()), "schema", "csv")?;
            only(
                src.infer_rows.as_ref().map(|s| s.span()),
                "infer_rows",
                "csv",
            )?;
        }
        let folder = matches!(kind, SourceKind::Images | SourceKind::Documents);
        if !folder {
            only(
                src.include
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "include",
                "images and documents",
            )?;
            only(
                src.exclude
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "exclude",
                "images and documents",
            )?;
            only(
                src.recursive.as_ref().map(|s| s.span()),
                "recursive",
                "images and documents",
            )?;
        } else {
            only(
                src.columns
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "columns",
                "parquet and csv",
            )?;
            only(
                src.id_column.as_ref().map(|s| s.span()),
                "id_column",
                "parquet and csv",
            )?;
        }
        if kind != SourceKind::Images {
            only(
                src.max_image_bytes.as_ref().map(|s| s.span()),
                "max_image_bytes",
                "images",
            )?;
        }
        if kind != SourceKind::Documents {
            only(
                src.max_document_bytes.as_ref().map(|s| s.span()),
                "max_document_bytes",
                "documents",
            )?;
        }
        if let Some(m) = &src.max_document_bytes {
            if *m.get_ref() == 0 {
                return Err(self.error(m.span(), "max_document_bytes must be at least 1"));
            }
        }
        for (key, v) in [("delimiter", &src.delimiter), ("quote", &src.quote)] {
            if let Some(v) = v {
                if v.get_ref().len() != 1 {
                    return Err(self.error(
                        v.span(),
                        format!("`{key}` must be a single ASCII character, e.g. \",\" or \"\\t\""),
                    ));
                }
            }
        }
        for pats in [&src.include, &src.exclude].into_iter().flatten() {
            for p in pats {
                if let Err(e) = globset::Glob::new(p.get_ref()) {
                    return Err(self.error(p.span(), format!("invalid glob: {e}")));
                }
            }
        }
        Ok(())
    }
}

fn kind_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Parquet => "parquet",
        SourceKind::Csv => "csv",
        SourceKind::Images => "images",
        SourceKind::Documents => "documents",
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::GOOD;

    /// The error message of the shared good file with `source` as its [source] keys, if any.
    fn error_of(source: &str) -> Option<String> {
        let written = "type = \"parquet\"\npath = \"data.parquet\"";
        assert!(GOOD.contains(written));
        let text = GOOD.replacen(written, source, 1);
        crate::resolve::parse(std::path::Path::new("pipelines/p.toml"), &text)
            .err()
            .map(|e| e.message.clone())
    }

    #[test]
    fn folder_keys_belong_to_images_and_documents() {
        let docs = "type = \"documents\"\npath = \"docs\"";
        assert_eq!(
            error_of(&format!(
                "{docs}\ninclude = [\"**/*.md\"]\nexclude = [\"drafts/**\"]\nrecursive = false\n\
                 max_document_bytes = 1000"
            )),
            None
        );
        let e = error_of("type = \"csv\"\npath = \"d.csv\"\ninclude = [\"*.csv\"]").unwrap();
        assert!(
            e.contains("`include` applies only to images and documents sources, not `csv`"),
            "{e}"
        );
        let e = error_of("type = \"images\"\npath = \"imgs\"\nmax_document_bytes = 10").unwrap();
        assert!(
            e.contains("`max_document_bytes` applies only to documents sources, not `images`"),
            "{e}"
        );
        let e = error_of(&format!("{docs}\nmax_image_bytes = 10")).unwrap();
        assert!(
            e.contains("`max_image_bytes` applies only to images sources, not `documents`"),
            "{e}"
        );
        let e = error_of(&format!("{docs}\nid_column = \"path\"")).unwrap();
        assert!(e.contains("applies only to parquet and csv sources"), "{e}");
        let e = error_of(&format!("{docs}\nmax_document_bytes = 0")).unwrap();
        assert!(e.contains("at least 1"), "{e}");
    }
}
