//! Resolve layer: the `[sink]` table → the settings of the table and its side files, defaults
//! applied once.

use crate::config::{Cleanup, ConfigError, Pipeline, VectorIndex, WriteMode};
use std::path::PathBuf;

/// Rows per commit of an incremental run.
pub const DEFAULT_COMMIT_ROWS: usize = 10_000;
/// Rows from which the vector index is built (below, search is exact).
pub const DEFAULT_INDEX_AFTER_ROWS: usize = 100_000;
/// Fragments from which a run compacts the table.
pub const DEFAULT_COMPACT_AFTER_FRAGMENTS: usize = 64;

/// Where the table lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Database URI as given to LanceDB (local folder resolved against the pipeline file).
    pub uri: String,
    pub table: String,
    /// The local database folder, when the sink is local.
    pub local_dir: Option<PathBuf>,
}

impl Target {
    /// The async-job ledger of the table: `<database>/<table>_jobs.jsonl`.
    pub fn jobs_path(&self) -> PathBuf {
        self.local_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(format!("{}_jobs.jsonl", self.table))
    }
}

/// Everything the sink needs from the pipeline file.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub target: Target,
    pub mode: WriteMode,
    pub cleanup: Cleanup,
    pub commit_rows: usize,
    /// The `metadata` columns as written (default: every non-binary source column).
    pub metadata: Option<Vec<String>>,
    /// The dead-letter file.
    pub failures: PathBuf,
    pub vector_index: VectorIndex,
    pub index_after_rows: usize,
    pub compact_after_fragments: usize,
    pub fts_column: Option<String>,
    pub max_service_failures: u64,
    /// The vector column of every step, in file order.
    pub vectors: Vec<String>,
}

fn is_remote(uri: &str) -> bool {
    uri.contains("://")
}

/// Where the pipeline's table lives (object stores are refused by this build).
pub fn target(pipeline: &Pipeline) -> Result<Target, ConfigError> {
    let sink = pipeline.sink();
    let raw = sink.uri.get_ref().as_ref();
    let table = sink.table.get_ref().clone();
    if is_remote(raw) {
        let scheme = raw.split("://").next().unwrap_or_default();
        return Err(pipeline
            .error(
                sink.uri.span(),
                format!("`{scheme}://` sinks are not supported by this build yet"),
            )
            .with_help("use a local folder, e.g. uri = \"../.embedpipe/db\""));
    }
    let dir = pipeline.resolve(raw);
    Ok(Target {
        uri: dir.to_string_lossy().to_string(),
        table,
        local_dir: Some(dir),
    })
}

impl SinkSettings {
    pub fn resolve(pipeline: &Pipeline) -> Result<Self, ConfigError> {
        let sink = pipeline.sink();
        let target = target(pipeline)?;
        let failures = match &sink.failures {
            Some(p) => pipeline.resolve(p.get_ref()),
            None => target
                .local_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(format!("{}_failures.jsonl", target.table)),
        };
        let get =
            |v: &Option<toml::Spanned<usize>>, d: usize| v.as_ref().map_or(d, |v| *v.get_ref());
        Ok(Self {
            mode: sink
                .mode
                .as_ref()
                .map_or(WriteMode::default(), |m| *m.get_ref()),
            cleanup: sink
                .cleanup
                .as_ref()
                .map_or(Cleanup::default(), |c| *c.get_ref()),
            commit_rows: get(&sink.commit_rows, DEFAULT_COMMIT_ROWS),
            metadata: sink
                .metadata
                .as_ref()
                .map(|m| m.iter().map(|c| c.get_ref().clone()).collect()),
            failures,
            vector_index: sink
                .vector_index
                .as_ref()
                .map_or(VectorIndex::Auto, |v| *v.get_ref()),
            index_after_rows: get(&sink.index_after_rows, DEFAULT_INDEX_AFTER_ROWS),
            compact_after_fragments: get(
                &sink.compact_after_fragments,
                DEFAULT_COMPACT_AFTER_FRAGMENTS,
            ),
            fts_column: sink.fts_column.as_ref().map(|c| c.get_ref().clone()),
            max_service_failures: sink
                .max_service_failures
                .as_ref()
                .map_or(0, |m| *m.get_ref()),
            vectors: pipeline.steps.iter().map(|s| s.vector.clone()).collect(),
            target,
        })
    }
}
