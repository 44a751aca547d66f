//! Layer 8, commands: `runs` — the run history of a pipeline's table, read from the run log kept
//! next to it (when each run started and ended, what it changed, calls, cost, failures).

use crate::config::Pipeline;
use crate::resolve::{Overrides, StorageSettings};
use crate::sink::runlog::{self, RunRecord};
use anyhow::Result;

/// Every run recorded for the pipeline's table, oldest first (none if it has no run log yet).
/// An unusable `[sink]` is a [`crate::config::ConfigError`] inside the error.
pub async fn all(pipeline: &Pipeline, overrides: &Overrides) -> Result<Vec<RunRecord>> {
    let storage = StorageSettings::resolve(pipeline, overrides)?;
    let target = crate::resolve::sink::target(pipeline, &storage)?;
    runlog::read(&target).await
}

/// The last `n` runs recorded for the pipeline's table (all of them when there are fewer),
/// oldest first.
pub async fn recent(
    pipeline: &Pipeline,
    n: usize,
    overrides: &Overrides,
) -> Result<Vec<RunRecord>> {
    let mut runs = all(pipeline, overrides).await?;
    let older = runs.len().saturating_sub(n);
    runs.drain(..older);
    Ok(runs)
}

/// A sharded run as its staging folder shows it: per shard, done / failed / running.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardedRun {
    pub run_id: String,
    pub shards: u32,
    pub mode: String,
    pub created_at_micros: i64,
    /// `committed`, `ready` (every shard done), `running` or `incomplete`.
    pub status: String,
    pub committed: Option<crate::commands::commit::CommitOutcome>,
    pub shard_status: Vec<ShardStatus>,
}

/// One shard of a sharded run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// `ok`, `rows_failed`, `failed`, `interrupted` (reported), `running` (progress only) or
    /// `missing`.
    pub status: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_failed: u64,
    pub calls: u64,
    pub cost_usd: f64,
    /// Seconds from start to report (or to the last progress update).
    pub wall_secs: Option<f64>,
    pub error: Option<String>,
}

/// The sharded runs of the pipeline's table (all, or `only` one), oldest first.
pub async fn sharded(
    pipeline: &Pipeline,
    overrides: &Overrides,
    only: Option<&str>,
) -> Result<Vec<ShardedRun>> {
    use crate::commands::run::shard::{
        RunManifest, ShardProgress, ShardReport, COMMITTED, MANIFEST,
    };
    use crate::sink::runstage::{list_runs, RunStage};
    let storage = StorageSettings::resolve(pipeline, overrides)?;
    let target = crate::resolve::sink::target(pipeline, &storage)?;
    let stores = match target.remote {
        Some(_) => Some(crate::clients::store::Stores::connect(&storage).await?),
        None => None,
    };
    let ids = match only {
        Some(id) => {
            crate::resolve::sharding::check_run_id(id).map_err(|e| anyhow::anyhow!(e))?;
            vec![id.to_string()]
        }
        None => list_runs(&target, stores.as_ref()).await?,
    };
    let mut out = Vec::new();
    for id in ids {
        let stage = RunStage::new(&target, &id, stores.as_ref());
        let Some(m) = stage.get::<RunManifest>(MANIFEST).await? else {
            anyhow::ensure!(only.is_none(), "no sharded run `{id}` for this table");
            continue;
        };
        let committed = stage.get(COMMITTED).await?;
        let mut shard_status = Vec::new();
        for i in 0..m.shards {
            let s = match stage.get::<ShardReport>(&RunStage::report_name(i)).await? {
                Some(r) => ShardStatus {
                    shard: i,
                    status: r.status.clone(),
                    rows_read: r.rows_read,
                    rows_written: r.rows_written,
                    rows_failed: r.rows_failed,
                    calls: r.calls,
                    cost_usd: r.cost_usd,
                    wall_secs: Some((r.ended_at_micros - r.started_at_micros) as f64 / 1e6),
                    error: r.error,
                },
                None => match stage
                    .get::<ShardProgress>(&RunStage::progress_name(i))
                    .await?
                {
                    Some(p) => ShardStatus {
                        shard: i,
                        status: "running".into(),
                        rows_read: p.rows_read,
                        rows_written: p.rows_written,
                        rows_failed: 0,
                        calls: p.calls,
                        cost_usd: p.cost_usd,
                        wall_secs: Some((p.updated_at_micros - p.started_at_micros) as f64 / 1e6),
                        error: None,
                    },
                    None => ShardStatus {
                        shard: i,
                        status: "missing".into(),
                        rows_read: 0,
                        rows_written: 0,
                        rows_failed: 0,
                        calls: 0,
                        cost_usd: 0.0,
                        wall_secs: None,
                        error: None,
                    },
                },
            };
            shard_status.push(s);
        }
        let done = |s: &ShardStatus| matches!(s.status.as_str(), "ok" | "rows_failed");
        let status = match (&committed, shard_status.iter().all(done)) {
            (Some(_), _) => "committed",
            (None, true) => "ready",
            _ if shard_status.iter().any(|s| s.status == "running") => "running",
            _ => "incomplete",
        };
        out.push(ShardedRun {
            run_id: id,
            shards: m.shards,
            mode: m.mode,
            created_at_micros: m.created_at_micros,
            status: status.into(),
            committed,
            shard_status,
        });
    }
    out.sort_by_key(|r| r.created_at_micros);
    Ok(out)
}
