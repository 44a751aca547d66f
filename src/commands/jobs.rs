//! Layer 8, commands: `jobs` — the async jobs (video/audio) of a pipeline's table, read from its
//! job ledger (`<table>_jobs.jsonl` next to the table, or one object per job under
//! `<table>_jobs/` when the table is in S3).

use crate::clients::store::Stores;
use crate::config::Pipeline;
use crate::jobs::ledger::{self, JobRecord};
use crate::resolve::{Overrides, StorageSettings};
use crate::util::Location;
use anyhow::Result;

/// The jobs in a table's ledger, as read at one moment.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The ledger: a local file, or a prefix in S3 (it may not exist: then there are no jobs).
    pub location: Location,
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
pub async fn list(pipeline: &Pipeline, overrides: &Overrides) -> Result<Listing> {
    let storage = StorageSettings::resolve(pipeline, overrides)?;
    let target = crate::resolve::sink::target(pipeline, &storage)?;
    let location = target.jobs_location();
    let stores = match &location {
        Location::S3(_) => Some(Stores::connect(&storage).await?),
        Location::Local(_) => None,
    };
    let jobs = ledger::read(&location, stores.as_ref()).await?;
    Ok(Listing {
        location,
        jobs,
        read_at: ledger::now(),
    })
}
