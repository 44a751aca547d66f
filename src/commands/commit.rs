//! Layer 8, commands: `commit` — makes every shard of a sharded run one table version, once
//! all of them reported; then maintains the table, merges the dead letters and records the run.
//!
//! It refuses, with the table unchanged, when a shard is missing or failed (naming them), when
//! the pipeline file is not the one the workers ran, or when the table changed in a way the
//! staged write cannot follow. Run again after a crash, it finishes what it started without
//! committing anything twice: create / overwrite / append commits carry a transaction id
//! recorded before the commit; incremental upserts and deletes are idempotent.

use crate::clients::store::Stores;
use crate::commands::run::shard::{
    pipeline_hash, RunManifest, ShardReport, Staged, COMMITTED, MANIFEST,
};
use crate::config::{Pipeline, WriteMode};
use crate::resolve::{Overrides, Settings};
use crate::sink::incremental::{all_rows, delete_ids, Upserter};
use crate::sink::runlog::{self, RunRecord};
use crate::sink::runstage::RunStage;
use crate::sink::staged::{self, CommitIntent, StagedFragments};
use crate::sink::table;
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

const INTENT: &str = "committing.json";

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Nothing was changed: a shard is missing or failed, or the run does not match (exit 2).
    Refused(anyhow::Error),
    /// The commit failed midway; running it again finishes it (exit 1).
    Failed(anyhow::Error),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Refused(e) | CommitError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// What the commit did (also written as `committed.json` in the run's staging folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitOutcome {
    pub run_id: String,
    pub table: String,
    pub uri: String,
    pub mode: String,
    pub shards: u32,
    /// False when the run had been committed before (nothing was done now).
    pub committed_now: bool,
    /// The table version the run's rows became (create, overwrite, append); for incremental
    /// runs, the version after the last upsert or delete.
    pub version: Option<u64>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_skipped: u64,
    pub rows_failed: u64,
    pub rows_deleted: u64,
    pub table_rows: u64,
    pub calls: u64,
    pub cost_usd: f64,
    pub failures_file: Option<String>,
    pub committed_at_micros: i64,
    pub commit_secs: f64,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Commits run `run_id` of `pipeline`'s table.
pub async fn commit(
    pipeline: &Pipeline,
    run_id: &str,
    overrides: &Overrides,
    allow_empty: bool,
) -> Result<CommitOutcome, CommitError> {
    let started = Instant::now();
    crate::resolve::sharding::check_run_id(run_id).map_err(|e| CommitError::Refused(anyhow!(e)))?;
    let settings = Settings::resolve(pipeline, overrides)
        .map_err(|e| CommitError::Refused(anyhow::Error::new(e)))?;
    let target = settings.sink.target.clone();
    let stores = match target.remote.is_some() || settings.sink.failures.as_s3().is_some() {
        true => Some(
            Stores::connect(&settings.storage)
                .await
                .map_err(CommitError::Refused)?,
        ),
        false => None,
    };
    let stage = RunStage::new(&target, run_id, stores.as_ref());
    let refused = |e: anyhow::Error| CommitError::Refused(e);
    // Reading the staging folder can fail for a while (network, throttling): worth retrying.
    let unreadable = |e: anyhow::Error| CommitError::Failed(e);
    if let Some(done) = stage
        .get::<CommitOutcome>(COMMITTED)
        .await
        .map_err(unreadable)?
    {
        return Ok(CommitOutcome {
            committed_now: false,
            ..done
        });
    }
    let manifest: RunManifest = stage.get(MANIFEST).await.map_err(unreadable)?.ok_or_else(|| {
        CommitError::Refused(anyhow!(
            "run `{run_id}` has nothing staged: no worker of it has started (looked in {}). Check the run id (the workers print it), and that this pipeline writes the same table",
            stage.location()
        ))
    })?;
    if manifest.pipeline_hash != pipeline_hash(pipeline) {
        return Err(refused(anyhow!(
            "run `{run_id}` was made with another version of the pipeline file ({}): commit it with the file its workers ran",
            manifest.pipeline
        )));
    }
    let reports = read_reports(&stage, &manifest, pipeline).await?;
    let mode = WriteMode::parse(&manifest.mode).ok_or_else(|| {
        refused(anyhow!(
            "run `{run_id}` has an unknown mode `{}`",
            manifest.mode
        ))
    })?;
    let conn = table::connect(&target).await.map_err(refused)?;
    let schema = Arc::new(manifest.schema.clone());
    let staged: Vec<Staged> = reports
        .iter()
        .map(|r| r.staged.clone().expect("done shards staged their part"))
        .collect();
    let table_rows: u64 = reports.iter().map(|r| r.table_rows).sum();
    let mut rows_deleted = 0;
    if mode == WriteMode::Incremental {
        if let Some(base) = manifest.base_version {
            let replaced = staged::replaced_since(&target, base)
                .await
                .map_err(CommitError::Failed)?;
            if replaced {
                return Err(refused(anyhow!(
                    "table `{}` was replaced or dropped after run `{run_id}` started (version {base}): its changes were computed against the old table. The table is unchanged; run every shard again under a new run id",
                    target.table
                )));
            }
        }
    }
    let version = if mode == WriteMode::Incremental {
        let (version, deleted) = commit_rows(&stage, &conn, &settings, schema, &staged)
            .await
            .map_err(CommitError::Failed)?;
        rows_deleted = deleted;
        version
    } else {
        let fragments: Vec<StagedFragments> = staged
            .into_iter()
            .map(|s| match s {
                Staged::Fragments(f) => Ok(f),
                Staged::Rows { .. } => Err(refused(anyhow!(
                    "run `{run_id}`: a shard staged rows for an incremental run, the run is {}",
                    manifest.mode
                ))),
            })
            .collect::<Result<_, _>>()?;
        Some(
            commit_fragments(
                &stage,
                &conn,
                &target,
                mode,
                &manifest,
                fragments,
                table_rows,
                allow_empty,
            )
            .await?,
        )
    };
    // The rows are in: everything after this is bookkeeping a rerun of the commit redoes.
    let failures_file = match stage
        .merge_failures(manifest.shards, &settings.sink.failures)
        .await
    {
        Ok(0) => None,
        Ok(_) => Some(settings.sink.failures.to_string()),
        Err(e) => {
            tracing::warn!("the shards' dead letters could not be merged: {e:#}");
            None
        }
    };
    let sum = |f: fn(&ShardReport) -> u64| reports.iter().map(f).sum::<u64>();
    let outcome = CommitOutcome {
        run_id: run_id.to_string(),
        table: target.table.clone(),
        uri: target.uri.clone(),
        mode: manifest.mode.clone(),
        shards: manifest.shards,
        committed_now: true,
        version,
        rows_read: sum(|r| r.rows_read),
        rows_written: sum(|r| r.rows_written),
        rows_skipped: sum(|r| r.rows_skipped),
        rows_failed: sum(|r| r.rows_failed),
        rows_deleted,
        table_rows,
        calls: sum(|r| r.calls),
        cost_usd: reports.iter().map(|r| r.cost_usd).sum(),
        failures_file,
        committed_at_micros: now_micros(),
        commit_secs: started.elapsed().as_secs_f64(),
    };
    // Maintenance and the run log come before the run is marked committed: a commit killed in
    // between is run again and redoes them (the run is recorded once).
    after_commit(&settings, &manifest, &reports, &outcome).await;
    mark_batch_jobs_used(&target, stores.as_ref(), &reports).await;
    stage
        .put(COMMITTED, &outcome)
        .await
        .map_err(CommitError::Failed)?;
    // Staged rows of incremental shards are no longer needed.
    for shard in 0..manifest.shards {
        let t = stage.staged_rows_target(shard);
        if let Ok(conn) = table::connect(&t).await {
            let _ = conn.drop_table(&t.table, &[]).await;
        }
    }
    Ok(outcome)
}

/// Every shard's report, or a refusal naming the shards that are missing or failed.
async fn read_reports(
    stage: &RunStage,
    manifest: &RunManifest,
    pipeline: &Pipeline,
) -> Result<Vec<ShardReport>, CommitError> {
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    let mut redo = Vec::new();
    for shard in 0..manifest.shards {
        match stage
            .get::<ShardReport>(&RunStage::report_name(shard))
            .await
            .map_err(CommitError::Failed)?
        {
            Some(r) if r.done() => reports.push(r),
            Some(r) => {
                problems.push(format!(
                    "shard {shard} {}{}",
                    r.status,
                    r.error.map(|e| format!(" ({e})")).unwrap_or_default()
                ));
                redo.push(shard);
            }
            None => {
                let running = stage
                    .get::<serde_json::Value>(&RunStage::progress_name(shard))
                    .await
                    .map_err(CommitError::Failed)?
                    .is_some();
                problems.push(match running {
                    true => format!("shard {shard} has not finished (still running, or killed)"),
                    false => format!("shard {shard} never reported (not started, or killed)"),
                });
                redo.push(shard);
            }
        }
    }
    if problems.is_empty() {
        check_age(&reports, manifest, pipeline)?;
        return Ok(reports);
    }
    let n = manifest.shards;
    let commands: Vec<String> = redo
        .iter()
        .map(|i| {
            format!(
                "embedpipe run {} --shard {i}/{n} --run {}",
                pipeline.path.display(),
                manifest.run_id
            )
        })
        .collect();
    Err(CommitError::Refused(anyhow!(
        "run `{}` cannot be committed: {} of {n} shards are not done: {}. The table is unchanged.\n  help: run those shards again (once the first attempt has stopped), then commit again:\n    {}",
        manifest.run_id,
        redo.len(),
        problems.join("; "),
        commands.join("\n    ")
    )))
}

/// Staged data files no version names are removed by any run's version cleanup once older
/// than Lance's 7-day guard: a run staged longer ago than that may have lost some.
const STAGED_MAX_AGE_MICROS: i64 = 6 * 86_400 * 1_000_000;

fn check_age(
    reports: &[ShardReport],
    manifest: &RunManifest,
    pipeline: &Pipeline,
) -> Result<(), CommitError> {
    if manifest.mode == WriteMode::Incremental.as_str() {
        return Ok(()); // staged in tables of their own, which no cleanup touches
    }
    let oldest = reports.iter().map(|r| r.ended_at_micros).min().unwrap_or(0);
    if now_micros() - oldest > STAGED_MAX_AGE_MICROS {
        return Err(CommitError::Refused(anyhow!(
            "run `{}` was staged more than 6 days ago: version cleanup removes staged data files after 7 days, so some may be gone. The table is unchanged; run the pipeline again as a new run (embedpipe run {} --shards {} --run NEW_ID ...)",
            manifest.run_id,
            pipeline.path.display(),
            manifest.shards
        )));
    }
    Ok(())
}

/// create / overwrite / append: every shard's data files become one table version.
#[allow(clippy::too_many_arguments)]
async fn commit_fragments(
    stage: &RunStage,
    conn: &table::Database,
    target: &crate::resolve::Target,
    mode: WriteMode,
    manifest: &RunManifest,
    fragments: Vec<StagedFragments>,
    table_rows: u64,
    allow_empty: bool,
) -> Result<u64, CommitError> {
    // A commit that crashed after Lance committed: find its version instead of committing again.
    if let Some(intent) = stage
        .get::<CommitIntent>(INTENT)
        .await
        .map_err(CommitError::Failed)?
    {
        if let Some(v) = staged::find_commit(target, &intent)
            .await
            .map_err(CommitError::Failed)?
        {
            return Ok(v);
        }
    }
    let exists = table::existing_schema(conn, &target.table)
        .await
        .map_err(CommitError::Failed)?
        .is_some();
    let read_version = fragments.iter().map(|f| f.read_version).min().unwrap_or(0);
    let operation = &fragments[0].operation;
    if fragments.iter().any(|f| &f.operation != operation) {
        return Err(CommitError::Refused(anyhow!(
            "the shards of run `{}` staged different writes (some an addition, some a new table): the table was created or dropped while they ran. The table is unchanged; run every shard again under a new run id",
            manifest.run_id
        )));
    }
    // An append staged as a new table (there was none), while one was created since: committing
    // would replace it.
    if mode == WriteMode::Append && exists && operation == "overwrite" {
        return Err(CommitError::Refused(anyhow!(
            "table `{}` was created in {} after run `{}` started: its workers staged a new table, which would replace it. The table is unchanged; run every shard again under a new run id",
            target.table, target.uri, manifest.run_id
        )));
    }
    if mode == WriteMode::Create && exists && read_version == 0 {
        return Err(CommitError::Refused(anyhow!(
            "table `{}` was created in {} after run `{}` started (mode = \"create\"): the run is not committed; start a new run with mode = \"overwrite\" or \"append\"",
            target.table, target.uri, manifest.run_id
        )));
    }
    if mode == WriteMode::Append && !exists && read_version > 0 {
        return Err(CommitError::Refused(anyhow!(
            "table `{}` was dropped after run `{}` started: run every shard again",
            target.table,
            manifest.run_id
        )));
    }
    if mode == WriteMode::Overwrite && table_rows == 0 && exists && !allow_empty {
        let rows = table::row_count(conn, &target.table)
            .await
            .map_err(CommitError::Refused)?;
        if rows > 0 {
            return Err(CommitError::Refused(anyhow!(
                "run `{}` staged no rows: committing it would replace table `{}` ({rows} rows) with an empty one. Check the source; to empty the table on purpose, commit with --allow-empty",
                manifest.run_id, target.table
            )));
        }
    }
    let intent = CommitIntent::new(&fragments);
    stage
        .put(INTENT, &intent)
        .await
        .map_err(CommitError::Failed)?;
    staged::commit_fragments(target, &manifest.schema, fragments, &intent)
        .await
        .map_err(CommitError::Failed)
}

/// incremental: every shard's staged rows upserted (one commit per `commit_rows`), then the
/// ids they delete (stale chunks, rows gone from the source). Returns the last version made
/// and the rows deleted. Run again, it gives the same table.
async fn commit_rows(
    stage: &RunStage,
    conn: &table::Database,
    settings: &Settings,
    schema: arrow_schema::SchemaRef,
    staged: &[Staged],
) -> Result<(Option<u64>, u64)> {
    let table_name = &settings.sink.target.table;
    let mut upserter = Upserter::new(
        conn.clone(),
        table_name,
        schema.clone(),
        settings.sink.commit_rows,
    )
    .await?;
    let mut deletes: Vec<&String> = Vec::new();
    for (shard, s) in staged.iter().enumerate() {
        let Staged::Rows {
            table,
            rows,
            deletes: d,
        } = s
        else {
            bail!("shard {shard} staged data files, not rows: the run's mode changed");
        };
        deletes.extend(d);
        if *rows == 0 {
            continue;
        }
        let stage_target = stage.staged_rows_target(shard as u32);
        let stage_conn = table::connect(&stage_target).await?;
        let mut stream = all_rows(&stage_conn, table)
            .await
            .with_context(|| format!("reading shard {shard}'s staged rows"))?;
        while let Some(b) = stream.try_next().await? {
            // The staged table's own schema lacks the table's metadata: ours goes on.
            let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())?;
            upserter.push(b).await?;
        }
    }
    upserter.flush().await?;
    let ids: Vec<String> = deletes.into_iter().cloned().collect();
    match table::open_existing(conn, table_name).await? {
        Some(_) => {
            let deleted = delete_ids(conn, table_name, &ids).await?;
            let t = conn.open_table(table_name).execute().await?;
            Ok((Some(t.version().await?), deleted))
        }
        None => Ok((None, 0)),
    }
}

/// The shards' batch jobs are committed: later runs need not look for records in them.
async fn mark_batch_jobs_used(
    target: &crate::resolve::Target,
    stores: Option<&Stores>,
    reports: &[ShardReport],
) {
    let keys: Vec<String> = reports
        .iter()
        .flat_map(|r| r.batch_jobs.iter().cloned())
        .collect();
    if keys.is_empty() {
        return;
    }
    match crate::jobs::ledger::Ledger::open(&target.jobs_location(), stores).await {
        Ok(ledger) => crate::jobs::batch::mark_used(&ledger, &keys).await,
        Err(e) => tracing::warn!(
            "the batch jobs could not be marked used (the rows are committed): {e:#}"
        ),
    }
}

/// Maintenance and the run log, once per run: their failures cost speed or history, never
/// rows, so they are logged, not returned.
async fn after_commit(
    settings: &Settings,
    manifest: &RunManifest,
    reports: &[ShardReport],
    outcome: &CommitOutcome,
) {
    if let Err(e) = crate::sink::maintain::maintain(&settings.sink).await {
        tracing::warn!("table maintenance failed (the rows are committed): {e:#}");
    }
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.failures_by_kind {
            *failures.entry(k.clone()).or_default() += n;
        }
    }
    let record = RunRecord {
        run_id: outcome.run_id.clone(),
        pipeline_hash: manifest.pipeline_hash.clone(),
        pipeline: manifest.pipeline.clone(),
        mode: format!("{} ({} shards)", manifest.mode, manifest.shards),
        status: match outcome.rows_failed {
            0 => "ok".into(),
            _ => "rows_failed".into(),
        },
        started_at_micros: reports
            .iter()
            .map(|r| r.started_at_micros)
            .min()
            .unwrap_or(manifest.created_at_micros),
        ended_at_micros: outcome.committed_at_micros,
        rows_read: outcome.rows_read,
        rows_written: outcome.rows_written,
        rows_skipped: outcome.rows_skipped,
        rows_failed: outcome.rows_failed,
        rows_deleted: outcome.rows_deleted,
        calls: outcome.calls,
        input_tokens: reports.iter().map(|r| r.input_tokens).sum(),
        images: reports.iter().map(|r| r.images).sum(),
        media_seconds: reports.iter().map(|r| r.media_seconds).sum(),
        cost_usd: outcome.cost_usd,
        failures: serde_json::to_string(&failures).unwrap_or_default(),
        error: None,
        versions_removed: 0,
        bytes_removed: 0,
    };
    // A commit run again after a crash records the run once.
    let recorded = runlog::read(&settings.sink.target)
        .await
        .is_ok_and(|runs| runs.iter().any(|r| r.run_id == record.run_id));
    if !recorded {
        if let Err(e) = runlog::append(&settings.sink.target, &record).await {
            tracing::warn!("the run could not be recorded in the run log: {e:#}");
        }
    }
}
