//! Bedrock batch inference for one model (`invoke = "batch"`): the run's inputs become JSONL
//! records in S3, grouped into jobs that run outside the on-demand quotas at the batch price,
//! and the run writes the table from their results.
//!
//! A run with a batch model goes through its source twice. The first pass ([`BatchRoute::add`])
//! prepares every row as usual (incremental runs skip unchanged rows, appends refuse stored
//! ids) and writes one record per new input, `{"recordId": <content hash>, "modelInput": <the
//! on-demand body>}`, into the open job; a full job is uploaded (content-addressed:
//! `<batch_s3_uri>/inputs/<key>.jsonl`), recorded in the job ledger *before* it is submitted
//! under a `clientRequestToken` derived from its content, and recorded again with its ARN. A
//! job whose key the ledger knows (a run killed while its jobs ran, started again on the same
//! data) is followed, not submitted again; a job that failed is submitted under the next token.
//! [`BatchRoute::wait`] polls the jobs to their end or `job_timeout_hours`. The second pass is
//! the normal run: [`BatchRoute::embed`] answers each input from the results (joined by
//! `recordId`: output order is not guaranteed) and sends what no job holds on-demand — the rest
//! below the service's minimum records per job, inputs the pre-flight refused, images.
//!
//! Memory stays bounded: one open job's records in the first pass; in the second, the results
//! of at most [`WINDOW`] jobs, read in the order the first pass made them (both passes see the
//! rows in source order).

use super::ledger::{self, JobRecord, Ledger, Status};
use crate::clients::bedrock_batch::{BatchState, BedrockBatch, JobRequest};
use crate::clients::s3::S3;
use crate::dispatch::{ModelHandle, StepOutput};
use crate::prepare::Inputs;
use crate::resolve::{BatchSettings, ModelSettings};
use crate::util::{Attempts, ErrorClass, FailureKind, RetryPolicy, S3Uri};
use anyhow::{anyhow, Context, Result};
use embedpipe_wire::Input;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod results;
mod second_pass;

use second_pass::Window;

/// Earlier runs' jobs whose record ids the first pass holds at once.
pub const WINDOW: usize = 3;

/// Jobs the second pass loads ahead of those it takes records from.
const LOOKAHEAD: usize = 2;

/// A job's records file is closed at this size whatever `records_per_job` says: well under the
/// service's per-file limit (1 GB as quoted), and the first pass's memory.
const MAX_JOB_BYTES: usize = 256 << 20;

/// Polls slow down to this.
const MAX_POLL: Duration = Duration::from_secs(120);

/// Counters of the batch route, for the summary and `--json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BatchStats {
    pub model: String,
    /// Records written into jobs by this run.
    pub records: u64,
    /// Jobs submitted by this run, and jobs found in the ledger and followed instead.
    pub jobs_submitted: u64,
    pub jobs_resumed: u64,
    pub jobs_completed: u64,
    /// Jobs that ended without results (Failed, Stopped, Expired): their rows are
    /// dead-lettered and the next run submits them again.
    pub jobs_failed: u64,
    /// Jobs still running at `job_timeout_hours`: their rows are dead-lettered; the next run
    /// picks their results up if they complete.
    pub jobs_timed_out: u64,
    /// Records of the last, short job below `min_records_per_job`, sent on-demand.
    pub records_below_minimum: u64,
    /// Inputs answered from job results, and records the service answered with an error.
    pub results_used: u64,
    pub record_errors: u64,
    /// Input tokens of the jobs that completed during this run (what they bill), and their cost
    /// at the batch price.
    pub input_tokens: u64,
    pub cost_usd: f64,
    pub polls: u64,
}

/// What became of one record in a job's results.
type RecordOutcome = Result<Vec<f32>, (FailureKind, String)>;

/// One job of this run, in the order the first pass made them.
struct RunJob {
    input: S3Uri,
    /// `None`: too few records to be a job; they go on-demand.
    ledger: Option<JobRecord>,
    end: Option<JobEnd>,
}

#[derive(Debug, Clone, PartialEq)]
enum JobEnd {
    Done,
    Ended(String),
    TimedOut,
}

/// The records of the job being filled.
#[derive(Default)]
struct OpenJob {
    lines: Vec<u8>,
    ids: HashSet<String>,
}

/// Jobs of earlier runs whose results no run has committed yet (a run killed while they ran,
/// or while it wrote their rows), oldest first, and the record ids of at most [`WINDOW`] of
/// them: the first pass finds its records in them, in order, instead of paying for them again.
#[derive(Default)]
struct Prior {
    candidates: VecDeque<JobRecord>,
    loaded: VecDeque<PriorJob>,
}

struct PriorJob {
    record: JobRecord,
    input: S3Uri,
    ids: HashSet<String>,
    /// Some record was found in it (it joined this run's jobs).
    used: bool,
}

/// A model's batch route.
pub struct BatchRoute {
    info: ModelSettings,
    cfg: BatchSettings,
    client: BedrockBatch,
    s3: S3,
    ledger: Arc<Ledger>,
    open: Mutex<OpenJob>,
    prior: tokio::sync::Mutex<Prior>,
    /// The keys of the earlier runs' jobs this run started with (see [`Prior`]).
    earlier: Vec<String>,
    jobs: Mutex<Vec<RunJob>>,
    window: tokio::sync::Mutex<Window>,
    /// Jobs behind the newest in use that the second pass may still take records from.
    reach: std::sync::atomic::AtomicUsize,
    stats: Mutex<BatchStats>,
}

impl BatchRoute {
    pub async fn connect(info: ModelSettings, ledger: Arc<Ledger>) -> Result<Self> {
        let cfg = info
            .batch
            .clone()
            .ok_or_else(|| anyhow!("model `{}` has no batch settings", info.name))?;
        let client = BedrockBatch::connect(&info.connection).await?;
        let s3 = S3::connect(&info.connection, cfg.s3_endpoint.as_deref()).await?;
        let candidates: VecDeque<JobRecord> = ledger
            .all()
            .into_iter()
            .filter(|r| {
                r.modality == "batch"
                    && r.model_id == info.invoke_id
                    && r.arn.is_some()
                    && !r.used
                    && matches!(r.status, Status::InProgress | Status::Completed)
            })
            .collect();
        let earlier = candidates.iter().map(|r| r.key.clone()).collect();
        Ok(Self {
            earlier,
            stats: Mutex::new(BatchStats {
                model: info.name.clone(),
                ..Default::default()
            }),
            info,
            cfg,
            client,
            s3,
            ledger,
            open: Mutex::new(OpenJob::default()),
            prior: tokio::sync::Mutex::new(Prior {
                candidates,
                loaded: VecDeque::new(),
            }),
            jobs: Mutex::new(Vec::new()),
            window: tokio::sync::Mutex::new(Window::default()),
            reach: std::sync::atomic::AtomicUsize::new(2),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.info.name
    }

    pub fn stats(&self) -> BatchStats {
        self.stats.lock().expect("batch stats").clone()
    }

    fn count(&self, f: impl FnOnce(&mut BatchStats)) {
        f(&mut self.stats.lock().expect("batch stats"));
    }

    /// First pass: a step's inputs (`hashes[i]` is input i's content hash) become records of
    /// the open job; a full job is uploaded and submitted. Inputs the pre-flight refuses and
    /// images are left to the on-demand route of the second pass.
    pub async fn add(&self, inputs: &Inputs, hashes: &[String]) -> Result<()> {
        let Inputs::Text(texts) = inputs else {
            return Ok(());
        };
        for (text, hash) in texts.iter().zip(hashes) {
            if self.in_prior_job(hash).await? {
                continue;
            }
            let full = {
                let mut open = self.open.lock().expect("open job");
                if open.ids.contains(hash) {
                    continue;
                }
                let Some(line) = self.record_line(text, hash) else {
                    continue;
                };
                open.ids.insert(hash.clone());
                open.lines.extend_from_slice(&line);
                open.lines.push(b'\n');
                let full =
                    open.ids.len() >= self.cfg.records_per_job || open.lines.len() >= MAX_JOB_BYTES;
                full.then(|| std::mem::take(&mut *open))
            };
            if let Some(job) = full {
                self.close(job).await?;
            }
        }
        Ok(())
    }

    /// Whether an earlier run's uncommitted job holds record `id` (that job then joins this
    /// run's jobs). Jobs are looked at in the order they were made, as the records come.
    async fn in_prior_job(&self, id: &str) -> Result<bool> {
        let mut prior = self.prior.lock().await;
        if prior.candidates.is_empty() && prior.loaded.is_empty() {
            return Ok(false);
        }
        loop {
            if let Some(p) = prior.loaded.iter_mut().find(|p| p.ids.contains(id)) {
                if !p.used && !self.has_job(&p.record.key) {
                    self.count(|s| s.jobs_resumed += 1);
                    self.count(|s| s.records += p.ids.len() as u64);
                    self.push(RunJob {
                        input: p.input.clone(),
                        ledger: Some(p.record.clone()),
                        end: None,
                    });
                }
                p.used = true;
                return Ok(true);
            }
            let full = prior.loaded.len() >= WINDOW;
            if full && prior.loaded.back().is_some_and(|p| p.used) {
                prior.loaded.pop_front();
            } else if full {
                return Ok(false);
            }
            let Some(record) = prior.candidates.pop_front() else {
                return Ok(false);
            };
            let input = S3Uri::parse(&record.input_uri)?;
            let ids = match self.s3.get(&input).await {
                Ok(body) => results::record_ids(&body)
                    .with_context(|| format!("cannot read the batch records {input}"))?,
                // Its records are gone (a lifecycle rule): nothing to find in it.
                Err(e) => {
                    tracing::warn!("{e:#}");
                    HashSet::new()
                }
            };
            prior.loaded.push_back(PriorJob {
                record,
                input,
                ids,
                used: false,
            });
        }
    }

    /// After the run committed: its jobs' results are in the table, and later runs do not
    /// look for records in them; nor in the earlier runs' jobs it started with, which a run
    /// that committed all it needed did not need (so they never clog [`Prior`]'s window).
    /// Losing these records costs a few reads, nothing else.
    pub async fn mark_used(&self) {
        let mut records: Vec<JobRecord> = self
            .jobs
            .lock()
            .expect("jobs")
            .iter()
            .filter(|j| j.end == Some(JobEnd::Done))
            .filter_map(|j| j.ledger.clone())
            .collect();
        let done: HashSet<String> = records.iter().map(|r| r.key.clone()).collect();
        let running: HashSet<String> = self
            .jobs
            .lock()
            .expect("jobs")
            .iter()
            .filter(|j| j.end != Some(JobEnd::Done))
            .filter_map(|j| j.ledger.as_ref().map(|r| r.key.clone()))
            .collect();
        records.extend(
            self.earlier
                .iter()
                .filter(|k| !done.contains(*k) && !running.contains(*k))
                .filter_map(|k| self.ledger.get(k))
                .filter(|r| !r.used),
        );
        for mut r in records {
            r.used = true;
            r.updated_at = ledger::now();
            if let Err(e) = self.ledger.record(&r).await {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// The record of one text: the on-demand body of the model's family, or `None` when the
    /// pre-flight refuses the text (the second pass dead-letters it as on-demand would).
    fn record_line(&self, text: &str, hash: &str) -> Option<Vec<u8>> {
        let (spec, params) = (self.info.spec, &self.info.params);
        let cut =
            embedpipe_wire::preflight(spec, params, &Input::Text(text), |_, _| Ok(())).ok()?;
        let text = cut.as_deref().unwrap_or(text);
        let body = embedpipe_wire::build_request(spec, params, &[Input::Text(text)]).ok()?;
        serde_json::to_vec(&serde_json::json!({"recordId": hash, "modelInput": body})).ok()
    }

    /// End of the first pass: the last job is closed (on-demand if below the minimum).
    pub async fn finish(&self) -> Result<()> {
        let job = std::mem::take(&mut *self.open.lock().expect("open job"));
        self.close(job).await
    }

    /// Closes a job: below the minimum its records go on-demand; otherwise it is followed if
    /// the ledger knows it, else uploaded, recorded and submitted.
    async fn close(&self, job: OpenJob) -> Result<()> {
        let n = job.ids.len();
        if n == 0 {
            return Ok(());
        }
        let key = crate::util::content_hash(&self.info.fingerprint, &job.lines);
        let input = self.cfg.prefix.join(&format!("inputs/{key}.jsonl"));
        if n < self.cfg.min_records_per_job {
            tracing::info!(
                model = %self.info.name,
                "{n} records are below the batch minimum of {} records per job (min_records_per_job): they go on-demand",
                self.cfg.min_records_per_job
            );
            self.count(|s| s.records_below_minimum += n as u64);
            self.push(RunJob {
                input,
                ledger: None,
                end: None,
            });
            return Ok(());
        }
        let record = match self.ledger.get(&key) {
            Some(r) if r.arn.is_some() && r.status != Status::Failed && !r.used => {
                if self.has_job(&key) {
                    return Ok(());
                }
                self.count(|s| s.jobs_resumed += 1);
                r
            }
            previous => {
                self.s3
                    .put_bytes(&input, job.lines)
                    .await
                    .with_context(|| format!("cannot upload the batch records to {input}"))?;
                // A failed job goes again under the next token; one recorded but never
                // answered (the run died around its submit) under the same token, which the
                // service answers with the same job.
                // A job whose results a run committed is not used again (its output may be
                // gone): the same records go as a new job.
                let attempt = match previous {
                    Some(r) if r.status == Status::Failed || r.used => r.attempt + 1,
                    Some(r) => r.attempt,
                    None => 0,
                };
                self.wait_for_slot().await?;
                self.submit(&key, attempt, n, &input).await?
            }
        };
        self.count(|s| s.records += n as u64);
        self.push(RunJob {
            input,
            ledger: Some(record),
            end: None,
        });
        Ok(())
    }

    /// Whether the job with ledger key `key` is one of this run's already.
    fn has_job(&self, key: &str) -> bool {
        self.jobs
            .lock()
            .expect("jobs")
            .iter()
            .any(|j| j.ledger.as_ref().is_some_and(|r| r.key == key))
    }

    fn push(&self, job: RunJob) {
        self.jobs.lock().expect("jobs").push(job);
    }

    /// Records the job, submits it, records its ARN; follows another writer's job instead.
    async fn submit(&self, key: &str, attempt: u32, n: usize, input: &S3Uri) -> Result<JobRecord> {
        let now = ledger::now();
        let token = if attempt == 0 {
            format!("embedpipe-batch-{key}")
        } else {
            format!("embedpipe-batch-{key}-{attempt}")
        };
        let mut record = JobRecord {
            token,
            key: key.to_string(),
            attempt,
            model: self.info.name.clone(),
            model_id: self.info.invoke_id.clone(),
            input: format!("{n} records"),
            input_uri: input.to_string(),
            modality: "batch".into(),
            arn: None,
            status: Status::Submitting,
            failure: None,
            submitted_at: now,
            updated_at: now,
            counts: None,
            used: false,
        };
        let followed = self.ledger.record_new(&record).await?;
        let resumed = followed.is_some();
        if let Some(there) = followed {
            if there.arn.is_some() {
                self.count(|s| s.jobs_resumed += 1);
                return Ok(there);
            }
            record = there;
        }
        let name = format!("embedpipe-{}-{}", &key[..key.len().min(40)], attempt);
        let output = self.cfg.prefix.join("outputs/").to_string();
        let request = JobRequest {
            name: &name,
            model_id: &self.info.invoke_id,
            role_arn: &self.cfg.role_arn,
            input_uri: &record.input_uri,
            output_uri: &output,
            token: &record.token,
            timeout_hours: (self.cfg.timeout.as_secs_f64() / 3600.0)
                .ceil()
                .clamp(24.0, 168.0) as i32,
        };
        let arn = self.create(&request).await?;
        record.arn = Some(arn);
        record.status = Status::InProgress;
        record.updated_at = ledger::now();
        self.ledger.record(&record).await?;
        self.count(|s| match resumed {
            true => s.jobs_resumed += 1,
            false => s.jobs_submitted += 1,
        });
        Ok(record)
    }

    /// A control-plane call retried on throttling, 5xx and network errors; other errors stop
    /// the run with the service's message.
    async fn with_retries<T, F, Fut>(&self, policy: &RetryPolicy, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::clients::CallError>>,
    {
        let mut attempts = Attempts::default();
        let started = Instant::now();
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) => match policy.next(&mut attempts, e.class, started.elapsed()) {
                    Some(d) => tokio::time::sleep(d).await,
                    None => {
                        return Err(anyhow!(
                            "batch inference for model `{}`: {}{}",
                            self.info.name,
                            e.message,
                            crate::clients::bedrock::fatal_help(e.class)
                        ))
                    }
                },
            }
        }
    }

    /// CreateModelInvocationJob, retried; while the account's jobs-in-progress quota is full
    /// (other jobs of the account, or this run's timed-out ones) it waits for a job to end.
    async fn create(&self, request: &JobRequest<'_>) -> Result<String> {
        let started = Instant::now();
        let mut wait = self.cfg.poll;
        let mut attempts = Attempts::default();
        loop {
            let e = match self.client.create(request).await {
                Ok(arn) => return Ok(arn),
                Err(e) => e,
            };
            if e.class == ErrorClass::QuotaExceeded && started.elapsed() < self.cfg.timeout {
                tracing::info!(model = %self.info.name, "batch inference: the jobs-in-progress quota is full ({}); waiting for a job to end", e.message);
                self.poll_running().await?;
                tokio::time::sleep(wait).await;
                wait = wait.mul_f64(1.5).min(MAX_POLL.max(self.cfg.poll));
                continue;
            }
            match self
                .cfg
                .retry
                .next(&mut attempts, e.class, started.elapsed())
            {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    return Err(anyhow!(
                        "batch inference for model `{}`: {}{}",
                        self.info.name,
                        e.message,
                        crate::clients::bedrock::fatal_help(e.class)
                    ))
                }
            }
        }
    }

    /// Holds a submit while `max_jobs` of this run's jobs are running.
    async fn wait_for_slot(&self) -> Result<()> {
        let mut wait = self.cfg.poll;
        while self.running().len() >= self.cfg.max_jobs {
            self.poll_running().await?;
            if self.running().len() < self.cfg.max_jobs {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = wait.mul_f64(1.5).min(MAX_POLL.max(self.cfg.poll));
        }
        Ok(())
    }

    /// Indexes of the jobs submitted and not yet ended.
    fn running(&self) -> Vec<usize> {
        let jobs = self.jobs.lock().expect("jobs");
        (0..jobs.len())
            .filter(|&i| jobs[i].ledger.is_some() && jobs[i].end.is_none())
            .collect()
    }

    /// Asks the service about every running job once, settling those that ended.
    async fn poll_running(&self) -> Result<()> {
        for i in self.running() {
            let record = self.jobs.lock().expect("jobs")[i]
                .ledger
                .clone()
                .expect("submitted");
            let arn = record.arn.clone().expect("submitted jobs have an ARN");
            self.count(|s| s.polls += 1);
            // Polls ride out outages and expiring sessions for as long as the jobs may run.
            let policy = RetryPolicy::new(u32::MAX, self.cfg.timeout);
            let job = self.with_retries(&policy, || self.client.get(&arn)).await?;
            let end = match job.state {
                BatchState::Done => Some(JobEnd::Done),
                BatchState::Ended => Some(JobEnd::Ended(format!(
                    "batch job {arn} ended {}: {}",
                    job.status,
                    job.message.as_deref().unwrap_or("(no message)")
                ))),
                BatchState::Running
                    if ledger::now() - record.submitted_at > self.cfg.timeout.as_secs_f64() =>
                {
                    Some(JobEnd::TimedOut)
                }
                BatchState::Running => None,
            };
            if let Some(end) = end {
                self.settle(i, record, end).await;
            }
        }
        Ok(())
    }

    /// Records how a job ended (in the ledger and the counters); a job completed now is billed.
    async fn settle(&self, i: usize, mut record: JobRecord, end: JobEnd) {
        let billed_before = record.status == Status::Completed;
        match &end {
            JobEnd::Done => {
                self.count(|s| s.jobs_completed += 1);
                if !billed_before {
                    record.counts = self.manifest(&record).await;
                    if let Some(c) = &record.counts {
                        let tokens = c.input_token_count;
                        let cost = tokens as f64 / 1000.0 * self.cfg.prices.per_1k_tokens;
                        self.count(|s| {
                            s.input_tokens += tokens;
                            s.cost_usd += cost;
                        });
                    }
                }
                record.status = Status::Completed;
            }
            JobEnd::Ended(msg) => {
                self.count(|s| s.jobs_failed += 1);
                record.status = Status::Failed;
                record.failure = Some(msg.clone());
            }
            JobEnd::TimedOut => self.count(|s| s.jobs_timed_out += 1),
        }
        if end != JobEnd::TimedOut && !billed_before {
            record.updated_at = ledger::now();
            // Losing this record costs a repeated poll in the next run, nothing else.
            if let Err(e) = self.ledger.record(&record).await {
                tracing::warn!("{e:#}");
            }
        }
        let mut jobs = self.jobs.lock().expect("jobs");
        jobs[i].ledger = Some(record);
        jobs[i].end = Some(end);
    }

    /// What a finished job's manifest reports (its records and tokens).
    async fn manifest(&self, record: &JobRecord) -> Option<ledger::RecordCounts> {
        let folder = self.output_folder(record)?;
        let body = self.s3.get(&folder.join("manifest.json.out")).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// `<batch_s3_uri>/outputs/<job id>/`.
    fn output_folder(&self, record: &JobRecord) -> Option<S3Uri> {
        let arn = record.arn.as_deref()?;
        let id = arn.rsplit('/').next()?;
        Some(self.cfg.prefix.join("outputs/").join(&format!("{id}/")))
    }

    /// Between the passes: polls every job of the run until it ends or its timeout passes.
    pub async fn wait(&self) -> Result<()> {
        let mut wait = self.cfg.poll;
        let mut last_running = usize::MAX;
        loop {
            self.poll_running().await?;
            let running = self.running().len();
            if running == 0 {
                return Ok(());
            }
            // A line whenever a job ends: jobs run for hours, and a silent wait looks hung.
            if running != last_running {
                let total = self
                    .jobs
                    .lock()
                    .expect("jobs")
                    .iter()
                    .filter(|j| j.ledger.is_some())
                    .count();
                tracing::info!(
                    model = %self.info.name,
                    "batch inference: {running} of {total} jobs still running (polling every {:.0} s or less)",
                    MAX_POLL.max(self.cfg.poll).as_secs_f64()
                );
                last_running = running;
            }
            // Full jitter on a growing interval.
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
            wait = wait.mul_f64(1.5).min(MAX_POLL.max(self.cfg.poll));
        }
    }
}
