//! Resolve layer: the `[sink]` table → the settings of the table and its side files, defaults
//! applied once.

use super::StorageSettings;
use crate::config::{
    keep_versions, Cleanup, ConfigError, KeepRule, Pipeline, VectorIndex, WriteMode,
};
use crate::util::{Location, S3Uri};
use std::path::PathBuf;
use std::time::Duration;

/// Rows per commit of an incremental run.
pub const DEFAULT_COMMIT_ROWS: usize = 10_000;
/// Rows from which the vector index is built (below, search is exact).
pub const DEFAULT_INDEX_AFTER_ROWS: usize = 100_000;
/// Fragments from which a run compacts the table.
pub const DEFAULT_COMPACT_AFTER_FRAGMENTS: usize = 64;
/// Old versions younger than this are kept (LanceDB's own default for pruning).
pub const DEFAULT_KEEP_VERSIONS: Duration = Duration::from_secs(7 * 86_400);

/// Which old table versions a successful run keeps (the current one always stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Never prune.
    All,
    /// The newest `n` versions (the current one included).
    Newest(u64),
    /// Versions younger than this.
    Younger(Duration),
}

impl Retention {
    /// As the summary and the run log say it.
    pub fn describe(&self) -> String {
        match self {
            Retention::All => "all versions".into(),
            Retention::Newest(n) => format!("the newest {n} versions"),
            Retention::Younger(d) => format!(
                "versions younger than {}",
                crate::util::describe_secs(d.as_secs())
            ),
        }
    }
}

/// Where the table lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Database URI as given to LanceDB (local folder resolved against the pipeline file).
    pub uri: String,
    pub table: String,
    /// The local database folder, when the sink is local.
    pub local_dir: Option<PathBuf>,
    /// The database prefix, when the sink is in S3.
    pub remote: Option<S3Uri>,
    /// How S3 is reached, when the sink is there.
    pub storage: StorageSettings,
}

impl Target {
    /// The database: a local folder or an S3 prefix; the table's side files live in it.
    pub fn database(&self) -> Location {
        match (&self.remote, &self.local_dir) {
            (Some(u), _) => Location::S3(u.clone()),
            (None, Some(d)) => Location::Local(d.clone()),
            (None, None) => Location::Local(PathBuf::from(&self.uri)),
        }
    }

    /// The async-job ledger of the table: `<database>/<table>_jobs.jsonl` on a local disk, the
    /// prefix `<database>/<table>_jobs/` (one object per job) in S3.
    pub fn jobs_location(&self) -> Location {
        match self.database() {
            Location::Local(d) => Location::Local(d.join(format!("{}_jobs.jsonl", self.table))),
            Location::S3(u) => Location::S3(u.join(&format!("{}_jobs/", self.table))),
        }
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
    /// The dead-letter file (local or in S3).
    pub failures: Location,
    /// Which old versions a successful run keeps.
    pub retention: Retention,
    pub vector_index: VectorIndex,
    pub index_after_rows: usize,
    pub compact_after_fragments: usize,
    pub fts_column: Option<String>,
    pub max_service_failures: u64,
    /// The vector column of every step, in file order.
    pub vectors: Vec<String>,
}

/// Where the pipeline's table lives: a local folder or an `s3://` prefix (other schemes were
/// refused by config's checks).
pub fn target(pipeline: &Pipeline, storage: &StorageSettings) -> Result<Target, ConfigError> {
    let sink = pipeline.sink();
    let raw: &str = sink.uri.get_ref().as_ref();
    let table = sink.table.get_ref().clone();
    if raw.starts_with("s3://") {
        let uri = S3Uri::parse(raw).map_err(|e| pipeline.error(sink.uri.span(), e.to_string()))?;
        // No trailing slash: LanceDB joins table names on with its own.
        let key = uri.key.trim_end_matches('/').to_string();
        let uri = S3Uri { key, ..uri };
        return Ok(Target {
            uri: if uri.key.is_empty() {
                format!("s3://{}", uri.bucket)
            } else {
                uri.to_string()
            },
            table,
            local_dir: None,
            remote: Some(uri),
            storage: storage.clone(),
        });
    }
    let dir = pipeline.resolve(raw);
    Ok(Target {
        uri: dir.to_string_lossy().to_string(),
        table,
        local_dir: Some(dir),
        remote: None,
        storage: storage.clone(),
    })
}

impl SinkSettings {
    pub fn resolve(pipeline: &Pipeline, storage: &StorageSettings) -> Result<Self, ConfigError> {
        let sink = pipeline.sink();
        let target = target(pipeline, storage)?;
        let failures = match &sink.failures {
            Some(p) => match S3Uri::parse(p.get_ref()) {
                Ok(u) => Location::S3(u),
                Err(_) => Location::Local(pipeline.resolve(p.get_ref())),
            },
            None => target
                .database()
                .join(&format!("{}_failures.jsonl", target.table)),
        };
        let retention = match sink
            .keep_versions
            .as_ref()
            .map(|k| keep_versions(k.get_ref()))
        {
            None => Retention::Younger(DEFAULT_KEEP_VERSIONS),
            Some(Ok(KeepRule::All)) => Retention::All,
            Some(Ok(KeepRule::Newest(n))) => Retention::Newest(n),
            Some(Ok(KeepRule::Younger(d))) => Retention::Younger(d),
            Some(Err(why)) => {
                return Err(pipeline.error(sink.keep_versions.as_ref().expect("set").span(), why))
            }
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
            retention,
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
