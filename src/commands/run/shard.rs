//! One worker of a sharded run: it claims the run (same shard count and pipeline for every
//! worker), stages its rows instead of committing them, keeps its progress visible, and ends
//! with its report — the record `embedpipe commit` reads.

use super::*;
use crate::resolve::sharding::ShardRun;
use crate::sink::runstage::RunStage;
use crate::sink::staged::StagedFragments;
use crate::util::Shard;
use arrow_schema::Schema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const MANIFEST: &str = "run.json";
pub const COMMITTED: &str = "committed.json";

/// Written once by the first worker: what every worker of the run must agree on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    pub run_id: String,
    pub shards: u32,
    /// BLAKE3 of the pipeline file's text: every worker and the commit run the same file.
    pub pipeline_hash: String,
    pub pipeline: String,
    pub table: String,
    pub mode: String,
    /// The table's schema, as the workers write it (the commit writes it as the table's).
    pub schema: Schema,
    pub created_at_micros: i64,
    /// The table's version when the first worker started (none: no table yet). An incremental
    /// commit refuses when the table was replaced or dropped since.
    #[serde(default)]
    pub base_version: Option<u64>,
}

/// What a shard staged for the commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Staged {
    /// create / overwrite / append: data files of the table, not yet committed.
    Fragments(StagedFragments),
    /// incremental: rows to upsert (LanceDB table `table` in the staging folder) and ids to
    /// delete after them.
    Rows {
        table: String,
        rows: u64,
        deletes: Vec<String>,
    },
}

/// A shard's report: written last, so its presence means the shard ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReport {
    pub run_id: String,
    pub shard: u32,
    pub shards: u32,
    /// `ok`, `rows_failed` (done, some rows dead-lettered), `failed` or `interrupted`.
    pub status: String,
    pub error: Option<String>,
    pub started_at_micros: i64,
    pub ended_at_micros: i64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_skipped: u64,
    pub rows_failed: u64,
    /// Table rows staged (segments and chunks count one each).
    pub table_rows: u64,
    pub calls: u64,
    pub input_tokens: u64,
    pub images: u64,
    pub media_seconds: f64,
    pub cost_usd: f64,
    pub failures_by_kind: BTreeMap<String, u64>,
    pub staged: Option<Staged>,
    /// The batch jobs (ledger keys) whose results the shard staged: the commit marks them
    /// used once the rows are in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_jobs: Vec<String>,
}

impl ShardReport {
    pub fn done(&self) -> bool {
        matches!(self.status.as_str(), "ok" | "rows_failed") && self.staged.is_some()
    }
}

/// A running shard's counters, rewritten every few seconds for `embedpipe runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardProgress {
    pub shard: u32,
    pub started_at_micros: i64,
    pub updated_at_micros: i64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub calls: u64,
    pub cost_usd: f64,
}

/// How often a running shard rewrites its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A worker's handle on its run's staging folder.
pub(super) struct ShardContext {
    pub(super) shard: Shard,
    pub(super) stage: RunStage,
    pub(super) started_micros: i64,
    last_progress: std::sync::Mutex<Instant>,
}

impl ShardContext {
    pub(super) fn new(run: &ShardRun, checked: &Checked) -> Self {
        Self {
            shard: run.shard,
            stage: RunStage::new(&checked.target, &run.run_id, checked.stores.as_ref()),
            started_micros: now_micros(),
            last_progress: std::sync::Mutex::new(Instant::now() - PROGRESS_EVERY),
        }
    }

    /// Joins the run, before any model call: the first worker writes the manifest; the
    /// others must have the same shard count, pipeline and mode. A committed run is closed.
    pub(super) async fn claim(
        &self,
        pipeline: &Pipeline,
        checked: &Checked,
        mode: WriteMode,
    ) -> Result<()> {
        let run = &self.stage.run_id;
        if self
            .stage
            .get::<serde_json::Value>(COMMITTED)
            .await?
            .is_some()
        {
            bail!("run `{run}` was committed already; a new run needs a new run id");
        }
        let ours = RunManifest {
            run_id: run.clone(),
            shards: self.shard.count,
            pipeline_hash: pipeline_hash(pipeline),
            pipeline: pipeline.path.display().to_string(),
            table: checked.target.table.clone(),
            mode: mode.as_str().to_string(),
            schema: checked.layout.schema.as_ref().clone(),
            created_at_micros: now_micros(),
            base_version: crate::sink::staged::current_version(&checked.target).await?,
        };
        self.stage.put_new(MANIFEST, &ours).await?;
        let theirs: RunManifest = self.stage.get(MANIFEST).await?.ok_or_else(|| {
            anyhow!(
                "{} vanished right after it was written",
                self.stage.location()
            )
        })?;
        if theirs.shards != ours.shards {
            bail!(
                "run `{run}` was started with {} shards, this worker says {}: every worker of a run needs the same shard count (use a new run id for a different split)",
                theirs.shards,
                ours.shards
            );
        }
        if theirs.pipeline_hash != ours.pipeline_hash {
            bail!("run `{run}` was started with another version of the pipeline file ({}): every worker of a run must run the same file; use a new run id", theirs.pipeline);
        }
        if theirs.mode != ours.mode || theirs.schema != ours.schema {
            bail!("run `{run}` was started with mode {} and another table layout: every worker of a run must write the same table the same way", theirs.mode);
        }
        // Running a shard again replaces what it reported.
        let shard = self.shard.index;
        self.stage.remove(&RunStage::report_name(shard)).await?;
        self.stage.remove(&RunStage::progress_name(shard)).await
    }

    /// Rewrites the progress file when it is due (errors only logged: progress is for people).
    pub(super) async fn tick(
        &self,
        counters: &Counters,
        models: &Models,
        batch: &BTreeMap<usize, crate::jobs::batch::BatchRoute>,
    ) {
        {
            let mut last = self.last_progress.lock().expect("progress lock");
            if last.elapsed() < PROGRESS_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let stats: Vec<_> = models.iter().map(|m| m.stats()).collect();
        let p = ShardProgress {
            shard: self.shard.index,
            started_at_micros: self.started_micros,
            updated_at_micros: now_micros(),
            rows_read: counters.read,
            rows_written: counters.written,
            calls: stats.iter().map(|s| s.calls).sum(),
            cost_usd: stats.iter().map(|s| s.cost_usd).sum::<f64>()
                + batch.values().map(|b| b.stats().cost_usd).sum::<f64>(),
        };
        let name = RunStage::progress_name(self.shard.index);
        if let Err(e) = self.stage.put(&name, &p).await {
            tracing::warn!("shard progress not written: {e:#}");
        }
    }

    /// Writes the shard's report: the last thing a worker does.
    /// `batch_jobs`: see [`ShardReport::batch_jobs`].
    pub(super) async fn report(
        &self,
        summary: &Summary,
        staged: Option<Staged>,
        batch_jobs: Vec<String>,
    ) -> Result<()> {
        let batch = |f: fn(&crate::jobs::batch::BatchStats) -> u64| -> u64 {
            summary.batch.iter().map(f).sum()
        };
        let report = ShardReport {
            run_id: self.stage.run_id.clone(),
            shard: self.shard.index,
            shards: self.shard.count,
            status: summary.status.clone(),
            // The report is shared (S3, `runs`, the commit's refusals): no key id in it.
            error: summary.error.as_deref().map(crate::config::redact_key_ids),
            started_at_micros: self.started_micros,
            ended_at_micros: now_micros(),
            rows_read: summary.rows_read,
            rows_written: summary.rows_written,
            rows_skipped: summary.rows_skipped,
            rows_failed: summary.rows_failed,
            table_rows: summary.segments_written + summary.chunks_written,
            calls: summary.models.iter().map(|m| m.calls).sum(),
            input_tokens: summary
                .models
                .iter()
                .map(|m| m.usage.input_tokens)
                .sum::<u64>()
                + batch(|b| b.input_tokens),
            images: summary.models.iter().map(|m| m.usage.images).sum::<u64>()
                + batch(|b| b.images),
            media_seconds: summary
                .models
                .iter()
                .map(|m| m.usage.video_seconds + m.usage.audio_seconds)
                .sum(),
            cost_usd: summary.models.iter().map(|m| m.cost_usd).sum::<f64>()
                + summary.batch.iter().map(|b| b.cost_usd).sum::<f64>(),
            failures_by_kind: summary.failures_by_kind.clone(),
            staged,
            batch_jobs,
        };
        self.stage
            .put(&RunStage::report_name(self.shard.index), &report)
            .await
    }
}

pub fn pipeline_hash(pipeline: &Pipeline) -> String {
    hex::encode(&blake3::hash(pipeline.text.as_bytes()).as_bytes()[..16])
}
