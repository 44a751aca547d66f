//! The `[sink]` checks that need no data: a safe table name that is not a run log's, a database
//! folder, keys that belong to the write mode, and metadata columns that collide with nothing.
//! (Whether the table exists, and with which columns, is for later.)

use super::{ConfigError, Pipeline, SourceKind, Step, StepInput, WriteMode};
use std::collections::HashSet;

impl Pipeline {
    pub(super) fn check_sink(&self, steps: &[Step]) -> Result<(), ConfigError> {
        self.check_table_name()?;
        let sink = self.sink();
        if sink.uri.get_ref().is_empty() {
            return Err(self.error(sink.uri.span(), "sink uri is empty").with_help(
                "e.g. uri = \"../.embedpipe/db\" (a folder, relative to the pipeline file)",
            ));
        }
        self.check_write_mode(steps)?;
        self.check_metadata(steps)
    }

    /// Letters, digits, `_`, `-` or `.`, and not the name of another table's run log.
    fn check_table_name(&self) -> Result<(), ConfigError> {
        let sink = self.sink();
        let table = sink.table.get_ref();
        if table.is_empty()
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            || table.starts_with('.')
        {
            return Err(self.error(
                sink.table.span(),
                format!("table name `{table}` must be letters, digits, `_`, `-` or `.`"),
            ));
        }
        if let Some(owner) = table.strip_suffix(crate::util::columns::RUN_LOG_SUFFIX) {
            return Err(self
                .error(
                    sink.table.span(),
                    format!(
                        "table names ending in `{}` are reserved: `{table}` would be the run log of table `{owner}`",
                        crate::util::columns::RUN_LOG_SUFFIX
                    ),
                )
                .with_help("choose another name; each table's run history is kept next to it as `<table>_runs`"));
        }
        Ok(())
    }

    /// What the write mode allows: media steps (not with append or incremental), `cleanup` and
    /// `commit_rows` (incremental only), and a stable row id for incremental runs.
    fn check_write_mode(&self, steps: &[Step]) -> Result<(), ConfigError> {
        let sink = self.sink();
        let incremental = self.write_mode() == WriteMode::Incremental;
        // Appends refuse ids the table has; a media step's rows are segments, not checked so.
        if self.write_mode() == WriteMode::Append {
            if let Some(step) = steps
                .iter()
                .find(|s| matches!(s.input, StepInput::Media(..)))
            {
                return Err(self
                    .error(step.span.clone(), "append runs do not cover media steps yet")
                    .with_help("use mode = \"overwrite\": the job ledger already avoids paying twice for a job"));
            }
        }
        for (key, span) in [
            ("cleanup", sink.cleanup.as_ref().map(|c| c.span())),
            ("commit_rows", sink.commit_rows.as_ref().map(|c| c.span())),
        ] {
            if let (Some(span), false) = (span, incremental) {
                return Err(self
                    .error(
                        span,
                        format!("`{key}` applies only to `mode = \"incremental\"`"),
                    )
                    .with_help("set mode = \"incremental\" or remove it"));
            }
        }
        if let Some(c) = &sink.commit_rows {
            if *c.get_ref() == 0 {
                return Err(self.error(c.span(), "commit_rows must be at least 1"));
            }
        }
        if incremental {
            if let Some(step) = steps
                .iter()
                .find(|s| matches!(s.input, StepInput::Media(..)))
            {
                return Err(self
                    .error(step.span.clone(), "incremental runs do not cover media steps yet")
                    .with_help("use mode = \"overwrite\": the job ledger already avoids paying twice for a job"));
            }
            let src = self.source();
            // Folder rows (images, documents) have their path as id.
            let folder = matches!(
                src.kind.get_ref(),
                SourceKind::Images | SourceKind::Documents
            );
            if !folder && src.id_column.is_none() {
                let span = sink.mode.as_ref().map_or(sink.uri.span(), |m| m.span());
                return Err(self
                    .error(span, "incremental runs need a stable row id: set `id_column` in [source]")
                    .with_help("without it ids are file + row number, which shift when rows are added or removed"));
            }
        }
        Ok(())
    }

    /// Metadata columns: listed once, not written by embedpipe itself nor by an embed step.
    fn check_metadata(&self, steps: &[Step]) -> Result<(), ConfigError> {
        let sink = self.sink();
        if let Some(meta) = &sink.metadata {
            let mut seen = HashSet::new();
            for m in meta {
                let name = m.get_ref();
                if !seen.insert(name) {
                    return Err(self.error(
                        m.span(),
                        format!("metadata column `{name}` is listed twice"),
                    ));
                }
                if crate::util::columns::RESERVED_COLUMNS.contains(&name.as_str()) && name != "id" {
                    return Err(self.error(m.span(), format!("`{name}` is a column embedpipe writes itself; rename it in the source or leave it out")));
                }
                if steps
                    .iter()
                    .any(|s| crate::util::columns::step_columns(&s.vector).contains(name))
                {
                    return Err(self.error(
                        m.span(),
                        format!(
                            "metadata column `{name}` collides with an embed step's output column"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
