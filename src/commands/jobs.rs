//! Layer 8, commands: `jobs` — the async (video/audio) and batch inference jobs of a pipeline's
//! table, read from its job ledger (`<table>_jobs.jsonl` next to the table, or one object per
//! job under `<table>_jobs/` when the table is in S3); `jobs --stop` stops its running batch
//! jobs.

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

/// What `jobs --stop` did with one batch job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StopOutcome {
    pub model: String,
    pub arn: String,
    /// `stopped`, or the status it had already ended with.
    pub status: String,
}

/// `jobs --stop`: stops the pipeline's batch jobs still running (StopModelInvocationJob), so a
/// backfill given up is not billed for records the service has not processed. They are
/// recorded as failed: the next run submits their records again.
pub async fn stop_batch_jobs(
    pipeline: &Pipeline,
    overrides: &Overrides,
) -> Result<Vec<StopOutcome>> {
    use crate::clients::bedrock_batch::{BatchState, BedrockBatch};
    let settings = crate::resolve::Settings::resolve(pipeline, overrides)?;
    let location = settings.sink.target.jobs_location();
    let stores = match &location {
        Location::S3(_) => Some(Stores::connect(&settings.storage).await?),
        Location::Local(_) => None,
    };
    let ledger = ledger::Ledger::open(&location, stores.as_ref()).await?;
    let mut outcomes = Vec::new();
    for mut record in ledger.all() {
        let (Some(arn), ledger::Status::InProgress, "batch") =
            (record.arn.clone(), record.status, record.modality.as_str())
        else {
            continue;
        };
        let Some(info) = settings.models.iter().find(|m| m.name == record.model) else {
            continue;
        };
        let client = BedrockBatch::connect(&info.connection).await?;
        let fail = |e: crate::clients::CallError| anyhow::anyhow!("batch job {arn}: {}", e.message);
        // A job that ended meanwhile cannot be stopped: its end is recorded instead.
        let job = client.get(&arn).await.map_err(fail)?;
        let status = match job.state {
            BatchState::Running => {
                client.stop(&arn).await.map_err(fail)?;
                record.status = ledger::Status::Failed;
                record.failure = Some("stopped by `embedpipe jobs --stop`".into());
                "stopped".to_string()
            }
            BatchState::Ended => {
                record.status = ledger::Status::Failed;
                record.failure = Some(format!("batch job ended {}", job.status));
                job.status
            }
            // Its results are there: the next run uses them.
            BatchState::Done => job.status,
        };
        if record.status == ledger::Status::Failed {
            record.updated_at = ledger::now();
            ledger.record(&record).await?;
        }
        outcomes.push(StopOutcome {
            model: record.model.clone(),
            arn,
            status,
        });
    }
    Ok(outcomes)
}
