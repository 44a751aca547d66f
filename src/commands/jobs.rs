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
    /// `stopped`, the status it had already ended with, or `error: ...` when the service
    /// could not be asked (the job may still run: run `jobs --stop` again).
    pub status: String,
}

/// `jobs --stop`: stops the pipeline's batch jobs still running (StopModelInvocationJob), so a
/// backfill given up is not billed for records the service has not processed yet (those it
/// has are billed; their results are not used). They are recorded as failed: the next run
/// submits their records again. A job whose create answer was lost is looked up by name.
pub async fn stop_batch_jobs(
    pipeline: &Pipeline,
    overrides: &Overrides,
) -> Result<Vec<StopOutcome>> {
    use crate::clients::bedrock_batch::BedrockBatch;
    let settings = crate::resolve::Settings::resolve(pipeline, overrides)?;
    let location = settings.sink.target.jobs_location();
    let stores = match &location {
        Location::S3(_) => Some(Stores::connect(&settings.storage).await?),
        Location::Local(_) => None,
    };
    let ledger = ledger::Ledger::open(&location, stores.as_ref()).await?;
    let mut outcomes = Vec::new();
    for record in ledger.all() {
        let running = matches!(
            record.status,
            ledger::Status::InProgress | ledger::Status::Submitting
        );
        if record.modality != "batch" || !running {
            continue;
        }
        let Some(info) = settings.models.iter().find(|m| m.name == record.model) else {
            continue;
        };
        let client = BedrockBatch::connect(&info.connection).await?;
        // One job the service could not answer about does not keep the others running.
        let (arn, status) = match stop_one(&client, &ledger, record.clone()).await {
            Ok(Some(done)) => done,
            Ok(None) => continue,
            Err(e) => (
                record.arn.clone().unwrap_or_default(),
                format!("error: {e:#}"),
            ),
        };
        outcomes.push(StopOutcome {
            model: record.model.clone(),
            arn,
            status,
        });
    }
    Ok(outcomes)
}

/// Stops one job and records its end: (ARN, what became of it); `None` when a job recorded
/// as submitting was never created.
async fn stop_one(
    client: &crate::clients::bedrock_batch::BedrockBatch,
    ledger: &ledger::Ledger,
    mut record: JobRecord,
) -> Result<Option<(String, String)>> {
    use crate::clients::bedrock_batch::BatchState;
    let fail = |e: crate::clients::CallError| anyhow::anyhow!("{}", e.message);
    let arn = match record.arn.clone() {
        Some(arn) => arn,
        None => {
            let name = crate::jobs::batch::job_name(&record.token, record.attempt);
            match client.find(&name, &record.token).await.map_err(fail)? {
                Some(arn) => arn,
                None => return Ok(None),
            }
        }
    };
    record.arn = Some(arn.clone());
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
        BatchState::Done => {
            record.status = ledger::Status::InProgress;
            job.status
        }
    };
    record.updated_at = ledger::now();
    ledger.record(&record).await?;
    Ok(Some((arn, status)))
}
