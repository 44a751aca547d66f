//! `embedpipe run`: source → per-step inputs → model calls → LanceDB, with dead letters.
//!
//! Stages are joined by bounded channels: a blocking reader thread produces batches, the async
//! task prepares inputs (on rayon) and awaits model calls, and the sink task streams rows into
//! one LanceDB commit.
//!
//! The failure rule: a row whose *input* is bad (empty, too long, not an image, refused by the
//! model's validation) is dead-lettered and the run goes on. A row that failed because of the
//! *service* (network, timeouts, 5xx and throttling past their retries, unknown operation) says
//! nothing about the data: once more than `max_service_failures` rows failed so, the run stops
//! without committing (an outage must never empty a table).

mod batch;
mod chunked;
mod embed;
mod finish;
mod media;
mod pump;
pub mod shard;

use finish::*;

use crate::commands::validate::{self, Checked};
use crate::config::{Cleanup, Pipeline, WriteMode};
use crate::dispatch::Models;
use crate::jobs::batch::BatchRoute;
use crate::jobs::AsyncRoute;
use crate::prepare::chunked::ChunkStage;
use crate::prepare::{self, Prepared};
use crate::report::{Progress, Summary};
use crate::resolve::Settings;
use crate::sink::failures::{DeadLetter, FailureWriter};
use crate::sink::incremental::{delete_missing, unchanged_rows, Existing, Upserter};
use crate::sink::runlog;
use crate::sink::staged::StagedWriter;
use crate::sink::table::{self as sink_table, Writer};
use crate::sink::Database;
use crate::sink::SegmentColumns;
use crate::sources::{self, SourceBatch};
use crate::util::failure::READ_STEP;
use crate::util::{cpu, FailureKind, RowFailure};
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::RecordBatch;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar / progress log lines.
    pub progress: bool,
    /// How models are reached (`--emulator`).
    pub overrides: crate::resolve::Overrides,
    /// Embed every row again and rewrite the table (`--reindex`): allowed to change the
    /// vector space of an existing table.
    pub reindex: bool,
    /// Let an overwrite replace a non-empty table with an empty one (`--allow-empty`).
    pub allow_empty: bool,
    /// One worker of a sharded run (`--shard I/N`, or from the engine): its rows are staged
    /// for `embedpipe commit` instead of committed.
    pub shard: Option<crate::resolve::sharding::ShardRun>,
}

/// The signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what containers and schedulers send).
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Where a run stopped.
#[derive(Debug)]
pub enum RunError {
    /// Before any model call: invalid pipeline, input, sink or missing model. Nothing written.
    Setup(anyhow::Error),
    /// During the run; the summary says what it did (calls, cost, rows committed).
    Failed(anyhow::Error, Box<Summary>),
    /// Interrupted by a signal; the summary says what it did.
    Interrupted(Signal, Box<Summary>),
}

impl RunError {
    /// What the run did before it stopped (none when it stopped during setup).
    pub fn summary(&self) -> Option<&Summary> {
        match self {
            RunError::Setup(_) => None,
            RunError::Failed(_, s) | RunError::Interrupted(_, s) => Some(s),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Setup(e) | RunError::Failed(e, _) => write!(f, "{e:#}"),
            RunError::Interrupted(sig, _) => write!(f, "interrupted ({})", sig.name()),
        }
    }
}

pub(super) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub(super) fn new_run_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:08x}",
        t.as_secs(),
        (t.subsec_nanos() ^ std::process::id().rotate_left(16))
    )
}

/// Waits for SIGINT or SIGTERM.
pub(super) async fn stop_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Interrupt,
                _ = term.recv() => Signal::Terminate,
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    Signal::Interrupt
}

pub(super) struct Counters {
    pub(super) read: u64,
    pub(super) written: u64,
    /// Table rows of media pipelines (one per segment).
    pub(super) segments: u64,
    /// Rows unchanged since the table was written (incremental).
    pub(super) skipped: u64,
    /// Ids read so far (incremental and append: duplicates, cleanup).
    pub(super) seen: Option<HashSet<String>>,
    /// Every row read had an id (else cleanup would not know what to keep).
    pub(super) ids_complete: bool,
    /// Ids of rows that could not be read (incremental cleanup keeps their table rows: they
    /// are still in the source).
    pub(super) unreadable_ids: HashSet<String>,
    /// Rows dead-lettered because of the service ([`FailureKind::is_service_level`]), by the
    /// kind's text (the order the stop message lists them in), and the first such message.
    pub(super) service_failures: BTreeMap<String, u64>,
    pub(super) first_service_error: Option<String>,
}

/// Where output rows go.
pub(super) enum Output {
    /// One streaming commit (create, overwrite, append).
    Stream(Writer),
    /// Upserts by id in chunks (incremental).
    Upsert(Upserter),
    /// A shard of a create / overwrite / append run: data files of the table, uncommitted.
    Staged(StagedWriter),
    /// A shard of an incremental run: rows into its staging table, ids to delete noted.
    StagedRows {
        writer: Writer,
        deletes: Vec<String>,
    },
}

impl Output {
    pub(super) async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Output::Stream(w) | Output::StagedRows { writer: w, .. } => w.send(batch).await,
            Output::Upsert(u) => u.push(batch).await,
            Output::Staged(w) => w.send(batch).await,
        }
    }

    /// Table rows to delete once this output's rows are in (stale chunks).
    pub(super) fn delete_after(&mut self, ids: Vec<String>) {
        match self {
            Output::Upsert(u) => u.delete_after(ids),
            Output::StagedRows { deletes, .. } => deletes.extend(ids),
            Output::Stream(_) | Output::Staged(_) => {}
        }
    }
}

/// Runs the pipeline, and records the run in the table's run log (unless it never started).
pub async fn run(pipeline: Arc<Pipeline>, opts: RunOptions) -> Result<Summary, RunError> {
    let started_micros = now_micros();
    let run_id = new_run_id();
    let overrides = opts.overrides.clone();
    // A shard's work is recorded in the run log by the commit, once for the whole run.
    let sharded = opts.shard.is_some();
    let result = run_inner(pipeline.clone(), opts, run_id).await;
    if sharded {
        return result;
    }
    let pipeline_hash = hex::encode(&blake3::hash(pipeline.text.as_bytes()).as_bytes()[..16]);
    let summary = match &result {
        Ok(s) => Some(s),
        Err(e) => e.summary(),
    };
    let record =
        summary.map(|s| crate::report::run_record(s, pipeline_hash, started_micros, now_micros()));
    let storage = crate::resolve::storage::StorageSettings::resolve(&pipeline, &overrides);
    let target = storage.and_then(|s| crate::resolve::sink::target(&pipeline, &s));
    if let (Some(r), Ok(target)) = (record, target) {
        if let Err(e) = runlog::append(&target, &r).await {
            tracing::warn!("the run could not be recorded in the run log: {e:#}");
        }
    }
    result
}

/// Everything a run set up before its first model call.
pub(super) struct Setup {
    pub(super) checked: Checked,
    pub(super) mode: WriteMode,
    pub(super) models: Models,
    pub(super) settings: Settings,
    pub(super) conn: Database,
}

pub(super) async fn set_up(pipeline: &Arc<Pipeline>, opts: &RunOptions) -> Result<Setup> {
    let checked = validate::check_run(pipeline, opts.reindex, &opts.overrides).await?;
    // A shard takes its share of every job-wide rate limit.
    let settings = match &opts.shard {
        Some(run) => checked.settings.clone().for_shards(run.shard.count),
        None => checked.settings.clone(),
    };
    let mode = if opts.reindex {
        WriteMode::Overwrite
    } else {
        settings.sink.mode
    };
    let models = {
        let (models, quotas) = (settings.models.clone(), settings.quotas.clone());
        let used: Vec<usize> = pipeline.steps.iter().map(|s| s.model_index).collect();
        tokio::task::spawn_blocking(move || Models::load(&models, &quotas, |i| used.contains(&i)))
            .await
            .map_err(|e| anyhow!("model loader panicked: {e}"))??
    };
    let conn = sink_table::connect(&checked.target).await?;
    Ok(Setup {
        checked,
        mode,
        models,
        settings,
        conn,
    })
}

/// The chunk stage (`[chunk]`): sizes counted with each model's own tokenizer where it has
/// one, else its family's estimate.
pub(super) fn chunk_stage(
    settings: &Settings,
    checked: &Checked,
    models: &Models,
) -> Result<Option<Arc<ChunkStage>>> {
    let (Some(chunk), Some(keep)) = (&settings.chunk, &checked.chunk_keep) else {
        return Ok(None);
    };
    let limits =
        prepare::chunked::limits(chunk, &settings.models, |i| models.get(i).token_counter());
    let stage = ChunkStage::new(chunk, limits, &checked.source.schema, keep.clone())?;
    Ok(Some(Arc::new(stage)))
}

/// Why the pump stopped early.
pub(super) enum Stop {
    Failed(anyhow::Error),
    Signal(Signal),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

/// One run from set-up to summary: open the outputs, pump the source through the models,
/// commit (or not), maintain, settle the dead letters.
async fn run_inner(
    pipeline: Arc<Pipeline>,
    opts: RunOptions,
    run_id: String,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let Setup {
        checked,
        mode,
        models,
        settings,
        conn,
    } = set_up(&pipeline, &opts).await.map_err(RunError::Setup)?;
    let shard = opts
        .shard
        .as_ref()
        .map(|run| shard::ShardContext::new(run, &checked));
    if let Some(s) = &shard {
        s.claim(&pipeline, &checked, mode)
            .await
            .map_err(RunError::Setup)?;
    }
    // A shard's dead letters wait in the staging folder; the commit merges them.
    let failures_path = match &shard {
        Some(s) => s.stage.failures_location(s.shard.index),
        None => settings.sink.failures.clone(),
    };
    let mut failures = FailureWriter::start(&failures_path, checked.stores.as_ref())
        .await
        .map_err(RunError::Setup)?;
    let (media, mut output, existing) = open_outputs(
        &pipeline,
        &settings,
        &checked,
        &models,
        &conn,
        mode,
        shard.as_ref(),
    )
    .await
    .map_err(RunError::Setup)?;
    let batch = open_batch_routes(&pipeline, &checked, &models, shard.as_ref())
        .await
        .map_err(RunError::Setup)?;
    let chunks = chunk_stage(&settings, &checked, &models).map_err(RunError::Setup)?;
    let (outcome, counters) = pump_with_progress(
        &pipeline,
        &settings,
        &checked,
        &models,
        media.as_ref(),
        &batch,
        existing.as_ref(),
        chunks.as_ref(),
        mode,
        &opts,
        &run_id,
        shard.as_ref(),
        &mut output,
        &mut failures,
    )
    .await;
    let committed = commit(
        outcome,
        output,
        &conn,
        mode,
        &checked,
        &counters,
        &opts,
        &settings,
        shard.as_ref().map(|s| s.shard),
    )
    .await;
    let Committed {
        result: committed,
        deleted,
        stale_deleted,
        commits,
        rows_committed,
        staged,
    } = committed;
    // The batch jobs' results are in the table: later runs need not look in them. (A shard's
    // rows wait for `embedpipe commit`; its jobs stay open to the next run until then.)
    if committed.is_ok() && shard.is_none() {
        if let Some(route) = batch.values().next() {
            let keys: Vec<String> = batch.values().flat_map(|r| r.used_keys()).collect();
            crate::jobs::batch::mark_used(route.ledger(), &keys).await;
        }
    }
    // A shard committed nothing: the commit maintains the table once for the whole run.
    let maintenance = match shard {
        Some(_) => None,
        None => maintain_after_commit(&settings, &committed).await,
    };
    let failed = failures.count();
    let by_kind = failures.by_kind().clone();
    let deleted = deleted + stale_deleted;
    let failures_file = settle_failures(failures, &committed, rows_committed, &failures_path).await;
    let wall = started.elapsed();
    let (status, error) = match &committed {
        Ok(()) if failed > 0 => ("rows_failed", None),
        Ok(()) => ("ok", None),
        Err(Stop::Failed(e)) => (
            "failed",
            Some(crate::sink::failures::scrub_internal_paths(&format!(
                "{e:#}"
            ))),
        ),
        Err(Stop::Signal(sig)) => ("interrupted", Some(format!("interrupted ({})", sig.name()))),
    };
    let summary = Summary {
        models: model_stats(&models, media.as_ref()),
        run_id: run_id.clone(),
        status: status.into(),
        error,
        pipeline: pipeline.path.display().to_string(),
        table: checked.target.table.clone(),
        uri: checked.target.uri.clone(),
        mode: if opts.reindex {
            format!("{} (reindex)", settings.sink.mode.as_str())
        } else {
            mode.as_str().to_string()
        },
        rows_read: counters.read,
        rows_written: counters.written,
        rows_skipped: counters.skipped,
        rows_deleted: deleted,
        commits,
        rows_failed: failed,
        rows_committed,
        failures_by_kind: by_kind,
        failures_file,
        segments_written: match settings.chunk {
            None => counters.segments,
            Some(_) => 0,
        },
        chunks_written: match settings.chunk {
            Some(_) => counters.segments,
            None => 0,
        },
        maintenance,
        jobs: media.as_ref().map(|m| m.stats()),
        batch: batch.values().map(|b| b.stats()).collect(),
        wall_time: wall,
        rows_per_second: counters.written as f64 / wall.as_secs_f64().max(1e-9),
        shard: shard.as_ref().map(|s| crate::report::ShardOf {
            shard: s.shard.to_string(),
            run: s.stage.run_id.clone(),
        }),
    };
    if let Some(s) = &shard {
        let batch_jobs = match committed.is_ok() {
            true => batch.values().flat_map(|r| r.used_keys()).collect(),
            false => Vec::new(),
        };
        if let Err(e) = s.report(&summary, staged, batch_jobs).await {
            let e = e.context("the shard's report could not be written: run the shard again");
            return Err(RunError::Failed(e, Box::new(summary)));
        }
    }
    match committed {
        Ok(()) => Ok(summary),
        Err(Stop::Failed(e)) => Err(RunError::Failed(e, Box::new(summary))),
        Err(Stop::Signal(sig)) => Err(RunError::Interrupted(sig, Box::new(summary))),
    }
}
