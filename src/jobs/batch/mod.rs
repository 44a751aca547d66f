//! Bedrock batch inference for one model (`invoke = "batch"`): the run's inputs become JSONL
//! records in S3, grouped into jobs that run outside the on-demand quotas at the batch price,
//! and the run writes the table from their results.
//!
//! A run with a batch model goes through its source twice. The first pass ([`BatchRoute::add`])
//! prepares every row as usual (incremental runs skip unchanged rows, appends refuse stored
//! ids) and writes one record per new input, `{"recordId": <content hash>, "modelInput": <the
//! on-demand body>}`, into the open job; a full job is uploaded (content-addressed:
//! `<batch_s3_uri>/inputs/<key>.jsonl`), recorded in the job ledger *before* it is submitted
//! under a `clientRequestToken` derived from its request, and recorded again with its ARN. A
//! job whose key the ledger knows (a run killed while its jobs ran, started again on the same
//! data) is followed, not submitted again; a job that failed is submitted under the next token.
//! [`BatchRoute::wait`] polls the jobs to their end or `job_timeout_hours`. The second pass is
//! the normal run: [`BatchRoute::embed`] answers each input from the results (joined by
//! `recordId`: output order is not guaranteed) and sends what no job holds on-demand — the rest
//! below the service's minimum records per job, inputs the pre-flight refused.
//!
//! Memory stays bounded: one open job's records in the first pass (and the record ids of at
//! most [`WINDOW`] earlier runs' jobs); in the second, the results of the jobs holding records
//! of the source batches in flight. Both passes read the source in the same order, and each
//! job knows the first and last source batch it holds records of.

use super::ledger::{self, JobRecord, Ledger, Status};
use crate::clients::bedrock_batch::{BatchState, BedrockBatch, JobRequest};
use crate::clients::s3::S3;
use crate::dispatch::{ModelHandle, StepOutput};
use crate::prepare::Inputs;
use crate::resolve::{BatchSettings, ModelSettings};
use crate::util::{Attempts, ErrorClass, FailureKind, RetryPolicy, S3Uri};
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod control;
mod records;
mod results;
mod second_pass;

pub use control::job_name;
use second_pass::Window;

/// Earlier runs' jobs whose record ids the first pass holds at once.
pub const WINDOW: usize = 3;

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
    /// Input tokens and image records of the jobs that completed during this run (what they
    /// bill), and their cost at the batch price.
    pub input_tokens: u64,
    pub images: u64,
    pub cost_usd: f64,
    pub polls: u64,
}

/// What became of one record in a job's results.
type RecordOutcome = Result<Vec<f32>, (FailureKind, String)>;

/// One job of this run, in the order the first pass made them.
struct RunJob {
    input: S3Uri,
    /// The first and last source batch (their place in the source) with an input whose
    /// record this job holds: the second pass needs its results while it works on them.
    span: (usize, usize),
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
    /// See [`RunJob::span`].
    span: Option<(usize, usize)>,
    /// Records that hold an image (billed per image).
    images: u64,
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
    /// A sharded run's shard (`i/n`): its jobs are recorded as that shard's.
    shard: Option<String>,
    jobs: Mutex<Vec<RunJob>>,
    window: tokio::sync::Mutex<Window>,
    /// Source batches the second pass works on at once.
    in_flight: std::sync::atomic::AtomicUsize,
    stats: Mutex<BatchStats>,
}

impl BatchRoute {
    /// `shard`: the worker's shard (`i/n`) in a sharded run.
    pub async fn connect(
        info: ModelSettings,
        ledger: Arc<Ledger>,
        shard: Option<String>,
    ) -> Result<Self> {
        let cfg = info
            .batch
            .clone()
            .ok_or_else(|| anyhow!("model `{}` has no batch settings", info.name))?;
        let client = BedrockBatch::connect(&info.connection).await?;
        let s3 = S3::connect(&info.connection, cfg.s3_endpoint.as_deref()).await?;
        Self::recover_lost_creates(&client, &ledger, &info, &shard).await?;
        // A shard looks in its own jobs; a whole run in every shard's too (a sharded run that
        // was never committed), shard by shard: each read its stretch of the source in order.
        let mut candidates: Vec<JobRecord> = ledger
            .all()
            .into_iter()
            .filter(|r| {
                r.modality == "batch"
                    && r.model_id == info.invoke_id
                    && r.arn.is_some()
                    && !r.used
                    && (r.shard == shard || shard.is_none())
                    && matches!(r.status, Status::InProgress | Status::Completed)
            })
            .collect();
        let shard_index = |r: &JobRecord| {
            r.shard
                .as_deref()
                .and_then(|s| s.split('/').next()?.parse::<u32>().ok())
        };
        candidates.sort_by(|a, b| {
            (shard_index(a), a.submitted_at)
                .partial_cmp(&(shard_index(b), b.submitted_at))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let candidates = VecDeque::from(candidates);
        let earlier = candidates.iter().map(|r| r.key.clone()).collect();
        Ok(Self {
            earlier,
            shard,
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
            in_flight: std::sync::atomic::AtomicUsize::new(1),
        })
    }

    /// The table's job ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
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
    /// the open job; a full job is uploaded and submitted. Inputs the pre-flight refuses are
    /// left to the on-demand route of the second pass (which dead-letters them).
    /// `seq`: the source batch's place in the source.
    pub async fn add(&self, inputs: &Inputs, hashes: &[String], seq: usize) -> Result<()> {
        let mut fresh = Vec::with_capacity(hashes.len());
        for (i, hash) in hashes.iter().enumerate() {
            if !self.in_prior_job(hash, seq).await? {
                fresh.push(i);
            }
        }
        let lines =
            records::record_lines(self.info.spec, &self.info.params, inputs, hashes, fresh).await?;
        for r in lines {
            let hash = &hashes[r.pos];
            let full = {
                let mut open = self.open.lock().expect("open job");
                let (first, _) = open.span.unwrap_or((seq, seq));
                open.span = Some((first, seq));
                if !open.ids.insert(hash.clone()) {
                    continue;
                }
                open.images += r.image as u64;
                open.lines.extend_from_slice(&r.line);
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
    async fn in_prior_job(&self, id: &str, seq: usize) -> Result<bool> {
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
                        span: (seq, seq),
                        ledger: Some(p.record.clone()),
                        end: None,
                    });
                } else {
                    self.reaches(&p.record.key, seq);
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
            let ids = match self.input_ids(&input).await {
                Ok(ids) => ids.into_iter().collect(),
                // Its records are gone (a lifecycle rule) or unreadable: nothing to find in it.
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

    /// The ledger keys of the jobs to mark used once the run's rows are committed: its jobs'
    /// results are in the table, and later runs need not look for records in them; nor in
    /// the earlier runs' jobs it started with, which a run that committed all it needed did
    /// not need (so they never clog [`Prior`]'s window). A sharded run's commit marks them
    /// for all its shards ([`mark_used`]).
    pub fn used_keys(&self) -> Vec<String> {
        let jobs = self.jobs.lock().expect("jobs");
        let key = |j: &RunJob| j.ledger.as_ref().map(|r| r.key.clone());
        let done: Vec<String> = jobs
            .iter()
            .filter(|j| j.end == Some(JobEnd::Done))
            .filter_map(key)
            .collect();
        let ours: HashSet<String> = jobs.iter().filter_map(key).collect();
        let stale = self.earlier.iter().filter(|k| !ours.contains(*k)).cloned();
        done.iter().cloned().chain(stale).collect()
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
        let Some(span) = job.span.filter(|_| n > 0) else {
            return Ok(());
        };
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
                span,
                ledger: None,
                end: None,
            });
            return Ok(());
        }
        let record = match self.ledger.get(&key) {
            Some(r) if r.arn.is_some() && r.status != Status::Failed && !r.used => {
                if self.has_job(&key) {
                    self.reaches(&key, span.0);
                    self.reaches(&key, span.1);
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
                self.submit(&key, attempt, (n, job.images), &input).await?
            }
        };
        self.count(|s| s.records += n as u64);
        self.push(RunJob {
            input,
            span,
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

    /// Widens the span of this run's job `key` to source batch `seq`.
    fn reaches(&self, key: &str, seq: usize) {
        let mut jobs = self.jobs.lock().expect("jobs");
        if let Some(j) = jobs
            .iter_mut()
            .find(|j| j.ledger.as_ref().is_some_and(|r| r.key == key))
        {
            j.span = (j.span.0.min(seq), j.span.1.max(seq));
        }
    }

    fn push(&self, job: RunJob) {
        self.jobs.lock().expect("jobs").push(job);
    }
}

/// Marks the ledger's jobs `keys` used (see [`BatchRoute::used_keys`]). Losing these records
/// costs a later run a few reads, nothing else: failures are logged.
pub async fn mark_used(ledger: &Ledger, keys: &[String]) {
    for key in keys {
        let Some(mut r) = ledger.get(key).filter(|r| !r.used) else {
            continue;
        };
        r.used = true;
        r.updated_at = ledger::now();
        if let Err(e) = ledger.record(&r).await {
            tracing::warn!("{e:#}");
        }
    }
}
