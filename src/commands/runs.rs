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
