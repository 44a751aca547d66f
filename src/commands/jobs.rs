//! Layer 8, commands: `jobs` — the async jobs (video/audio) of a pipeline's table, read from its
//! job ledger (`<table>_jobs.jsonl` next to the table).

use crate::config::Pipeline;
use crate::jobs::ledger::{self, JobRecord};
use anyhow::Result;
use std::path::PathBuf;

/// The jobs in a table's ledger, as read at one moment.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The ledger file (it may not exist: then there are no jobs).
    pub path: PathBuf,
    /// Every job, last record per key, oldest submit first.
    pub jobs: Vec<JobRecord>,
    /// When the ledger was read (Unix seconds), for the jobs' ages.
    pub read_at: f64,
}

impl Listing {
    /// Seconds since `job` was submitted, as of [`Listing::read_at`] (never negative).
    pub fn age_seconds(&self, job: &JobRecord) -> f64 {
        (self.read_at - job.submitted_at).max(0.0)
    }
}

/// The pipeline's job ledger and the jobs it holds. An unusable `[sink]` is a
/// [`crate::config::ConfigError`] inside the error.
pub fn list(pipeline: &Pipeline) -> Result<Listing> {
    let target = crate::resolve::sink::target(pipeline)?;
    let path = target.jobs_path();
    let jobs = ledger::read(&path)?;
    Ok(Listing {
        path,
        jobs,
        read_at: ledger::now(),
    })
}
