//! The async route: video and audio through Bedrock async invoke.
//!
//! Per input: stage the file in S3 (content-addressed, once), derive the job's
//! `clientRequestToken` from the content hash and the model parameters, record the job in the
//! ledger *before* submitting, StartAsyncInvoke, record the ARN, poll GetAsyncInvoke with
//! backoff and jitter until it ends or times out, then read and parse the result files from
//! `<output_s3_uri>/<invocation id>/`. A run started again finds its jobs in the ledger and
//! resumes polling them; a job that failed is submitted again under a new token.

pub mod ledger;
pub mod media;

use crate::config::{EnvString, ModelConfig};
use crate::dispatch::retry::{Attempts, RetryPolicy};
use crate::dispatch::ModelInfo;
use crate::models::{self, MediaRef, Modality, Segment};
use crate::providers::bedrock::{Bedrock, CallError, ErrorClass, JobState};
use crate::providers::s3::{S3Uri, S3};
use anyhow::{anyhow, Result};
use ledger::{JobRecord, Ledger, Status};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const DEFAULT_MAX_JOBS: usize = 16;
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Polls slow down to this.
pub const MAX_POLL: Duration = Duration::from_secs(30);

/// A model's async-invoke settings, from its `[[model]]` table.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub output: S3Uri,
    pub staging: S3Uri,
    pub s3_endpoint: Option<String>,
    pub max_jobs: usize,
    pub timeout: Duration,
    pub poll: Duration,
}

impl JobConfig {
    /// `None` without `output_s3_uri` (validation has checked the URIs).
    pub fn from_model(cfg: &ModelConfig) -> Option<Self> {
        let env = |s: &toml::Spanned<EnvString>| s.get_ref().to_string();
        let output = S3Uri::parse(&env(cfg.output_s3_uri.as_ref()?)).ok()?;
        let staging = cfg
            .staging_s3_uri
            .as_ref()
            .and_then(|s| S3Uri::parse(&env(s)).ok())
            .unwrap_or_else(|| output.join("inputs/"));
        Some(Self {
            staging: staging.folder(),
            output: output.folder(),
            s3_endpoint: cfg.s3_endpoint_url.as_ref().map(env),
            max_jobs: cfg
                .max_jobs
                .as_ref()
                .map_or(DEFAULT_MAX_JOBS, |m| *m.get_ref()),
            timeout: cfg
                .job_timeout_secs
                .as_ref()
                .map_or(DEFAULT_JOB_TIMEOUT, |t| {
                    Duration::from_secs_f64(*t.get_ref())
                }),
            poll: cfg
                .poll_secs
                .as_ref()
                .map_or(DEFAULT_POLL, |t| Duration::from_secs_f64(*t.get_ref())),
        })
    }
}

/// Counters of the async route, for the summary and `--json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JobStats {
    /// Jobs submitted by this run (StartAsyncInvoke answered with an ARN).
    pub submitted: u64,
    /// Jobs found in the ledger and polled again instead of submitted.
    pub resumed: u64,
    pub completed: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Local files uploaded to the staging prefix, and ones found there already.
    pub uploaded: u64,
    pub already_staged: u64,
    pub segments: u64,
    /// Result lines the service marked as failed (skipped).
    pub failed_segments: u64,
    pub polls: u64,
    /// Media seconds of the jobs that finished during this run (what they bill).
    pub video_seconds: f64,
    pub audio_seconds: f64,
    /// Characters of long text embedded (Nova bills tokens: estimated at 4 characters each).
    pub text_chars: u64,
}

/// One media input of a step.
#[derive(Debug, Clone)]
pub struct MediaInput {
    /// A local path (relative to the pipeline file) or an `s3://` URI.
    pub source: String,
    /// The step's or the row's modality; `None`: detect it.
    pub modality: Option<Modality>,
}

/// What became of one input: its modality and segments, or (dead-letter kind, reason).
pub type MediaOutcome = Result<(Modality, Vec<Segment>), (String, String)>;

/// A model's async route.
pub struct AsyncRoute {
    info: ModelInfo,
    cfg: JobConfig,
    bedrock: Bedrock,
    s3: S3,
    ledger: Arc<Ledger>,
    slots: Semaphore,
    retry: RetryPolicy,
    stats: Mutex<JobStats>,
}

impl AsyncRoute {
    pub async fn connect(info: ModelInfo, ledger: Arc<Ledger>, retry: RetryPolicy) -> Result<Self> {
        let cfg = info
            .jobs
            .clone()
            .ok_or_else(|| anyhow!("model `{}` has no output_s3_uri", info.name))?;
        let bedrock = Bedrock::connect(&info.connection).await?;
        let s3 = S3::connect(&info.connection, cfg.s3_endpoint.as_deref()).await?;
        Ok(Self {
            slots: Semaphore::new(cfg.max_jobs),
            info,
            cfg,
            bedrock,
            s3,
            ledger,
            retry,
            stats: Mutex::new(JobStats::default()),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.info.name
    }

    pub fn dimension(&self) -> usize {
        self.info.dimension
    }

    /// The model's fingerprint (part of every content hash).
    pub fn fingerprint(&self) -> &str {
        &self.info.fingerprint
    }

    pub fn stats(&self) -> JobStats {
        self.stats.lock().expect("job stats").clone()
    }

    fn count(&self, f: impl FnOnce(&mut JobStats)) {
        f(&mut self.stats.lock().expect("job stats"));
    }

    /// Embeds every input (up to `max_jobs` at once); one outcome per input, in order. Relative
    /// paths are relative to `base_dir` (the folder of the data file listing them).
    pub async fn embed(&self, inputs: &[MediaInput], base_dir: &Path) -> Vec<MediaOutcome> {
        futures::future::join_all(inputs.iter().map(|i| async move {
            let _slot = self.slots.acquire().await.expect("never closed");
            self.one(i, base_dir).await
        }))
        .await
    }

    async fn one(&self, input: &MediaInput, base_dir: &Path) -> MediaOutcome {
        let fail = |(k, m): (&str, String)| (k.to_string(), m);
        let media = media::resolve(
            &self.s3,
            &input.source,
            input.modality,
            &self.cfg.staging,
            base_dir,
        )
        .await
        .map_err(fail)?;
        self.count(|s| {
            if media.uploaded {
                s.uploaded += 1
            } else if !input.source.starts_with("s3://") {
                s.already_staged += 1
            }
        });
        let key = crate::plan::content_hash(
            &self.info.fingerprint,
            format!(
                "{}\0{}\0{}",
                media.content,
                media.modality.as_str(),
                media.format
            )
            .as_bytes(),
        );
        let uri = media.uri.to_string();
        let model_input = models::build_async(
            self.info.spec,
            &self.info.params,
            &MediaRef {
                uri: &uri,
                modality: media.modality,
                format: media.format,
            },
        )
        .map_err(|e| ("request".to_string(), e.0))?;
        let mut record = match self.ledger.get(&key) {
            Some(r) if r.status != Status::Failed => {
                if r.arn.is_some() {
                    self.count(|s| s.resumed += 1);
                }
                r
            }
            previous => {
                let attempt = previous.map_or(0, |r| r.attempt + 1);
                let now = ledger::now();
                JobRecord {
                    token: token(&key, attempt),
                    key: key.clone(),
                    attempt,
                    model: self.info.name.clone(),
                    model_id: self.info.spec.id.to_string(),
                    input: input.source.clone(),
                    input_uri: uri.clone(),
                    modality: media.modality.as_str().to_string(),
                    arn: None,
                    status: Status::Submitting,
                    failure: None,
                    submitted_at: now,
                    updated_at: now,
                }
            }
        };
        let mut resumed = record.arn.is_some();
        // A job completed in an earlier run was billed then: its results are only read again.
        let billed_before = record.status == Status::Completed;
        let (arn, state, failure) = loop {
            if record.arn.is_none() {
                // Durable before the call: if the run dies now, the next one submits again
                // with the same token, which the service answers with the same job.
                self.ledger
                    .record(&record)
                    .map_err(|e| ("ledger".to_string(), format!("{e:#}")))?;
                let arn = self
                    .submit(&model_input, &record.token)
                    .await
                    .map_err(|e| (e.class.as_str().to_string(), e.message))?;
                record.arn = Some(arn);
                record.status = Status::InProgress;
                record.updated_at = ledger::now();
                self.ledger
                    .record(&record)
                    .map_err(|e| ("ledger".to_string(), format!("{e:#}")))?;
                self.count(|s| s.submitted += 1);
            }
            let arn = record.arn.clone().expect("submitted");
            match self.poll(&arn, record.submitted_at).await {
                Ok((state, failure)) => break (arn, state, failure),
                // A job from an earlier run the service no longer knows (expired, or another
                // endpoint): submit it again under a new token, once.
                Err(e)
                    if resumed
                        && matches!(e.class, ErrorClass::Validation | ErrorClass::NotFound) =>
                {
                    tracing::warn!(%arn, "the service does not know this ledger job ({}); submitting it again", e.message);
                    record.status = Status::Failed;
                    record.failure = Some(e.message.clone());
                    record.updated_at = ledger::now();
                    let _ = self.ledger.record(&record);
                    self.count(|s| s.resumed -= 1);
                    resumed = false;
                    record.attempt += 1;
                    record.token = token(&key, record.attempt);
                    record.arn = None;
                    record.failure = None;
                    record.status = Status::Submitting;
                    record.submitted_at = ledger::now();
                }
                Err(e) => return Err((e.class.as_str().to_string(), e.message)),
            }
        };
        match state {
            JobState::InProgress => {
                self.count(|s| s.timed_out += 1);
                return Err((
                    "job_timeout".into(),
                    format!(
                        "job {arn} was still running after {:.0} s (job_timeout_secs); it keeps \
                         running and the next run picks its results up",
                        self.cfg.timeout.as_secs_f64()
                    ),
                ));
            }
            JobState::Failed => {
                let msg = failure.unwrap_or_else(|| "(no failureMessage)".into());
                if record.status != Status::Failed {
                    record.status = Status::Failed;
                    record.failure = Some(msg.clone());
                    record.updated_at = ledger::now();
                    let _ = self.ledger.record(&record);
                }
                self.count(|s| s.failed += 1);
                return Err(("job_failed".into(), format!("job {arn} failed: {msg}")));
            }
            JobState::Completed => {}
        }
        if record.status != Status::Completed {
            record.status = Status::Completed;
            record.updated_at = ledger::now();
            let _ = self.ledger.record(&record);
        }
        let segments = self
            .read_results(&arn)
            .await
            .map_err(|e| ("job_results".to_string(), format!("job {arn}: {e:#}")))?;
        let seconds = segments
            .iter()
            .filter_map(|s| s.end_sec)
            .fold(0.0, f64::max);
        let chars = segments
            .iter()
            .filter_map(|s| s.end_char)
            .max()
            .unwrap_or(0);
        self.count(|s| {
            s.completed += 1;
            s.segments += segments.len() as u64;
            match (billed_before, media.modality) {
                (true, _) => {}
                (false, Modality::Video) => s.video_seconds += seconds,
                (false, Modality::Text) => s.text_chars += chars,
                (false, _) => s.audio_seconds += seconds,
            }
        });
        Ok((media.modality, segments))
    }

    /// StartAsyncInvoke, retried (same token) on throttling, 5xx and network errors.
    async fn submit(&self, input: &serde_json::Value, token: &str) -> Result<String, CallError> {
        let mut attempts = Attempts::default();
        let started = std::time::Instant::now();
        loop {
            let r = self
                .bedrock
                .start_async_invoke(
                    self.info.spec.id,
                    input,
                    &self.cfg.output.to_string(),
                    token,
                )
                .await;
            match r {
                Ok(arn) => return Ok(arn),
                Err(e) => match self.retry.next(&mut attempts, e.class, started.elapsed()) {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return Err(e),
                },
            }
        }
    }

    /// Polls until the job ends or its timeout (counted from its submit, across runs) passes.
    async fn poll(
        &self,
        arn: &str,
        submitted_at: f64,
    ) -> Result<(JobState, Option<String>), CallError> {
        let deadline = tokio::time::Instant::now()
            + self.cfg.timeout.saturating_sub(Duration::from_secs_f64(
                (ledger::now() - submitted_at).max(0.0),
            ));
        let mut wait = self.cfg.poll;
        let mut attempts = Attempts::default();
        let mut failing_since = std::time::Instant::now();
        loop {
            self.count(|s| s.polls += 1);
            match self.bedrock.get_async_invoke(arn).await {
                Ok(s) if s.status != JobState::InProgress => {
                    return Ok((s.status, s.failure_message))
                }
                Ok(_) => {
                    attempts = Attempts::default();
                    failing_since = std::time::Instant::now();
                }
                Err(e) => {
                    if self
                        .retry
                        .next(&mut attempts, e.class, failing_since.elapsed())
                        .is_none()
                    {
                        return Err(e);
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok((JobState::InProgress, None));
            }
            // Full jitter on a growing interval, never past the deadline.
            let sleep = wait.mul_f64(0.5 + fastrand::f64() * 0.5);
            tokio::time::sleep_until((now + sleep).min(deadline)).await;
            wait = (wait.mul_f64(1.5)).min(MAX_POLL.max(self.cfg.poll));
        }
    }

    /// Lists `<output>/<invocation id>/` and parses the family's result files.
    async fn read_results(&self, arn: &str) -> Result<Vec<Segment>> {
        let id = arn.rsplit('/').next().unwrap_or(arn);
        let folder = self.cfg.output.join(id).folder();
        let keys = self.s3.list(&folder).await?;
        let file = |name: &str| {
            keys.iter()
                .find(|k| k.rsplit('/').next() == Some(name))
                .map(|k| S3Uri {
                    bucket: folder.bucket.clone(),
                    key: k.clone(),
                })
        };
        let segments = match self.info.spec.family {
            models::Family::Nova2 => {
                let summary = file("segmented-embedding-result.json")
                    .ok_or_else(|| anyhow!("no segmented-embedding-result.json in {folder}"))?;
                let files = models::nova::result_files(&self.s3.get(&summary).await?)
                    .map_err(|e| anyhow!("{e}"))?;
                let mut all = Vec::new();
                for (kind, uri) in files {
                    let body = self.s3.get(&S3Uri::parse(&uri)?).await?;
                    let (mut segs, skipped) =
                        crate::run::cpu(move || models::nova::parse_segments(&kind, &body))
                            .await?
                            .map_err(|e| anyhow!("{e}"))?;
                    self.count(|s| s.failed_segments += skipped as u64);
                    all.append(&mut segs);
                }
                all
            }
            _ => {
                let output =
                    file("output.json").ok_or_else(|| anyhow!("no output.json in {folder}"))?;
                let body = self.s3.get(&output).await?;
                crate::run::cpu(move || models::marengo::parse_async(&body))
                    .await?
                    .map_err(|e| anyhow!("{e}"))?
            }
        };
        if segments.is_empty() {
            anyhow::bail!("the job produced no segments");
        }
        if let Some(s) = segments
            .iter()
            .find(|s| s.vector.len() != self.info.dimension)
        {
            anyhow::bail!(
                "segment {} has a {}-dimensional vector, expected {}",
                s.index,
                s.vector.len(),
                self.info.dimension
            );
        }
        Ok(segments)
    }
}

/// `clientRequestToken`: the job key, plus the attempt once a job has failed (printable ASCII,
/// ≤ 256 characters).
fn token(key: &str, attempt: u32) -> String {
    if attempt == 0 {
        format!("embedpipe-{key}")
    } else {
        format!("embedpipe-{key}-{attempt}")
    }
}
