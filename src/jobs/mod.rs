//! Layer 6, jobs (above prepare): the async route, video and audio through Bedrock async
//! invoke.
//!
//! Per input: stage the file in S3 (content-addressed, once), derive the job's
//! `clientRequestToken` from the content hash and the model parameters, record the job in the
//! ledger *before* submitting, StartAsyncInvoke, record the ARN, poll GetAsyncInvoke with
//! backoff and jitter until it ends or times out, then read and parse the result files from
//! `<output_s3_uri>/<invocation id>/`. A run started again finds its jobs in the ledger and
//! resumes polling them; a job that failed is submitted again under a new token.

pub mod batch;
pub mod ledger;
pub mod media;

use crate::clients::bedrock::{Bedrock, CallError, JobState};
use crate::clients::s3::S3;
use crate::prepare::MediaInput;
use crate::resolve::{JobSettings, ModelSettings};
use crate::util::{Attempts, ErrorClass, FailureKind, RetryPolicy, S3Uri};
use anyhow::{anyhow, Result};
use embedpipe_wire::{AsyncResults, MediaRef, Modality, Segment};
use ledger::{JobRecord, Ledger, Status};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Polls slow down to this.
pub const MAX_POLL: Duration = Duration::from_secs(30);

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

/// What became of one input: its modality and segments, or (why, reason).
pub type MediaOutcome = Result<(Modality, Vec<Segment>), (FailureKind, String)>;

/// A model's async route.
pub struct AsyncRoute {
    info: ModelSettings,
    cfg: JobSettings,
    bedrock: Bedrock,
    s3: S3,
    ledger: Arc<Ledger>,
    slots: Semaphore,
    retry: RetryPolicy,
    stats: Mutex<JobStats>,
}

impl AsyncRoute {
    pub async fn connect(info: ModelSettings, ledger: Arc<Ledger>) -> Result<Self> {
        let cfg = info
            .jobs
            .clone()
            .ok_or_else(|| anyhow!("model `{}` has no output_s3_uri", info.name))?;
        let retry = cfg.retry;
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

    /// One input through the async flow: stage, submit or resume, poll, read the results.
    async fn one(&self, input: &MediaInput, base_dir: &Path) -> MediaOutcome {
        let media = self.stage(input, base_dir).await?;
        let key = self.job_key(&media);
        let uri = media.uri.to_string();
        let model_input = embedpipe_wire::build_async(
            self.info.spec,
            &self.info.params,
            &MediaRef {
                uri: &uri,
                modality: media.modality,
                format: media.format,
            },
        )
        .map_err(|e| (FailureKind::Request, e.0))?;
        let mut record = self.ledger_record(&key, input, &uri, media.modality);
        // A job completed in an earlier run was billed then: its results are only read again.
        let billed_before = record.status == Status::Completed;
        let (arn, state, failure) = self
            .submit_or_resume(&mut record, &model_input, &key)
            .await?;
        self.settle(&mut record, &arn, state, failure).await?;
        let segments = self
            .read_results(&arn)
            .await
            .map_err(|e| (FailureKind::JobResults, format!("job {arn}: {e:#}")))?;
        self.count_results(&segments, billed_before, media.modality);
        Ok((media.modality, segments))
    }

    /// Stages the input's file in S3 (content-addressed, once), counting if this run uploaded it.
    async fn stage(
        &self,
        input: &MediaInput,
        base_dir: &Path,
    ) -> Result<media::Resolved, (FailureKind, String)> {
        let media = media::resolve(
            &self.s3,
            &input.source,
            input.modality,
            &self.cfg.staging,
            base_dir,
        )
        .await?;
        self.count(|s| {
            if media.uploaded {
                s.uploaded += 1
            } else if !input.source.starts_with("s3://") {
                s.already_staged += 1
            }
        });
        Ok(media)
    }

    /// The job's ledger key: the input's content, modality and format under the model fingerprint.
    fn job_key(&self, media: &media::Resolved) -> String {
        crate::util::content_hash(
            &self.info.fingerprint,
            format!(
                "{}\0{}\0{}",
                media.content,
                media.modality.as_str(),
                media.format
            )
            .as_bytes(),
        )
    }

    /// The ledger's job for this input to resume, or (none, or failed) a new attempt to submit.
    fn ledger_record(
        &self,
        key: &str,
        input: &MediaInput,
        uri: &str,
        modality: Modality,
    ) -> JobRecord {
        match self.ledger.get(key) {
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
                    token: token(key, attempt),
                    key: key.to_string(),
                    attempt,
                    model: self.info.name.clone(),
                    model_id: self.info.spec.id.to_string(),
                    input: input.source.clone(),
                    input_uri: uri.to_string(),
                    modality: modality.as_str().to_string(),
                    arn: None,
                    status: Status::Submitting,
                    failure: None,
                    submitted_at: now,
                    updated_at: now,
                    counts: None,
                    used: false,
                    images: 0,
                    shard: None,
                }
            }
        }
    }

    /// Submits the job unless it has an ARN, then polls it; an unknown resumed job goes again once.
    async fn submit_or_resume(
        &self,
        record: &mut JobRecord,
        model_input: &serde_json::Value,
        key: &str,
    ) -> Result<(String, JobState, Option<String>), (FailureKind, String)> {
        let mut resumed = record.arn.is_some();
        loop {
            if record.arn.is_none() {
                resumed = self.submit_recorded(record, model_input).await?;
            }
            let arn = record.arn.clone().expect("submitted");
            match self.poll(&arn, record.submitted_at).await {
                Ok((state, failure)) => return Ok((arn, state, failure)),
                // A job from an earlier run the service no longer knows (expired, or another
                // endpoint): submit it again under a new token, once.
                Err(e)
                    if resumed
                        && matches!(e.class, ErrorClass::Validation | ErrorClass::NotFound) =>
                {
                    self.forget_unknown_job(record, key, &arn, &e).await;
                    resumed = false;
                }
                Err(e) => return Err((FailureKind::Call(e.class), e.message)),
            }
        }
    }

    /// Submits the job, in the ledger before the call (a rerun reuses the token) and after it.
    /// True when someone else (another run, or a row with the same input) had submitted it
    /// already: `record` is then theirs, with their ARN, to poll.
    async fn submit_recorded(
        &self,
        record: &mut JobRecord,
        model_input: &serde_json::Value,
    ) -> Result<bool, (FailureKind, String)> {
        // Durable before the call: if the run dies now, the next one submits again
        // with the same token, which the service answers with the same job.
        let there = self
            .ledger
            .record_new(record)
            .await
            .map_err(|e| (FailureKind::Ledger, format!("{e:#}")))?;
        if let Some(there) = there {
            *record = there;
            if record.arn.is_some() {
                self.count(|s| s.resumed += 1);
                return Ok(true);
            }
            // Recorded but never submitted (its writer died in between, or is submitting
            // now): submitting with the same clientRequestToken is idempotent at the service,
            // which answers with the same job, so going on cannot start a second one.
        }
        let arn = self
            .submit(model_input, &record.token)
            .await
            .map_err(|e| (FailureKind::Call(e.class), e.message))?;
        record.arn = Some(arn);
        record.status = Status::InProgress;
        record.updated_at = ledger::now();
        self.ledger
            .record(record)
            .await
            .map_err(|e| (FailureKind::Ledger, format!("{e:#}")))?;
        self.count(|s| s.submitted += 1);
        Ok(false)
    }

    /// Records a job's state where losing the record costs nothing but a repeated poll (the
    /// next run asks the service again): a failed write is a warning, not the row's failure.
    async fn record_quietly(&self, record: &JobRecord) {
        if let Err(e) = self.ledger.record(record).await {
            tracing::warn!("{e:#}");
        }
    }

    /// Marks a resumed job the service does not know failed; `record` becomes its next attempt.
    async fn forget_unknown_job(
        &self,
        record: &mut JobRecord,
        key: &str,
        arn: &str,
        e: &CallError,
    ) {
        tracing::warn!(%arn, "the service does not know this ledger job ({}); submitting it again", e.message);
        record.status = Status::Failed;
        record.failure = Some(e.message.clone());
        record.updated_at = ledger::now();
        self.record_quietly(record).await;
        self.count(|s| s.resumed -= 1);
        record.attempt += 1;
        record.token = token(key, record.attempt);
        record.arn = None;
        record.failure = None;
        record.status = Status::Submitting;
        record.submitted_at = ledger::now();
    }

    /// How the job ended: timed out or failed ends the input; completed is marked in the ledger.
    async fn settle(
        &self,
        record: &mut JobRecord,
        arn: &str,
        state: JobState,
        failure: Option<String>,
    ) -> Result<(), (FailureKind, String)> {
        match state {
            JobState::InProgress => {
                self.count(|s| s.timed_out += 1);
                return Err((
                    FailureKind::JobTimeout,
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
                    self.record_quietly(record).await;
                }
                self.count(|s| s.failed += 1);
                return Err((FailureKind::JobFailed, format!("job {arn} failed: {msg}")));
            }
            JobState::Completed => {}
        }
        if record.status != Status::Completed {
            record.status = Status::Completed;
            record.updated_at = ledger::now();
            self.record_quietly(record).await;
        }
        Ok(())
    }

    /// Counts a completed job's segments and what it bills (unless an earlier run paid for it).
    fn count_results(&self, segments: &[Segment], billed_before: bool, modality: Modality) {
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
            match (billed_before, modality) {
                (true, _) => {}
                (false, Modality::Video) => s.video_seconds += seconds,
                (false, Modality::Text) => s.text_chars += chars,
                (false, _) => s.audio_seconds += seconds,
            }
        });
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
        let spec = self.info.spec;
        let codec = spec.codec;
        let segments = match codec.async_results() {
            Some(AsyncResults::Manifest(name)) => {
                let summary = file(name).ok_or_else(|| anyhow!("no {name} in {folder}"))?;
                let files = codec
                    .parse_async_manifest(&self.s3.get(&summary).await?)
                    .map_err(|e| anyhow!("{e}"))?;
                let mut all = Vec::new();
                for (kind, uri) in files {
                    let body = self.s3.get(&S3Uri::parse(&uri)?).await?;
                    let (mut segs, skipped) =
                        crate::util::cpu(move || codec.parse_async_segments(&kind, &body))
                            .await?
                            .map_err(|e| anyhow!("{e}"))?;
                    self.count(|s| s.failed_segments += skipped as u64);
                    all.append(&mut segs);
                }
                all
            }
            Some(AsyncResults::Segments(name)) => {
                let output = file(name).ok_or_else(|| anyhow!("no {name} in {folder}"))?;
                let body = self.s3.get(&output).await?;
                let (segs, skipped) =
                    crate::util::cpu(move || codec.parse_async_segments("", &body))
                        .await?
                        .map_err(|e| anyhow!("{e}"))?;
                self.count(|s| s.failed_segments += skipped as u64);
                segs
            }
            None => anyhow::bail!("{} has no async results to read", spec.id),
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
