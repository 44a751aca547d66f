//! A batch route's jobs at the service: submitted under request-derived tokens (recorded in
//! the ledger before and after), held while `max_jobs` run or the account's quota is full,
//! polled with backoff to their end or timeout, and settled (billed from their manifest).

use super::*;

/// The job's name, from its token: a job whose create answer was lost is found by name
/// ([`BatchRoute::recover_lost_creates`]).
pub fn job_name(token: &str, attempt: u32) -> String {
    let id = token.strip_prefix("embedpipe-batch-").unwrap_or(token);
    let id = id.split('-').next().unwrap_or(id);
    format!("embedpipe-{}-{}", &id[..id.len().min(40)], attempt)
}

impl BatchRoute {
    /// Jobs the ledger holds as submitting with no ARN (the run died between its create and
    /// recording the answer) are looked up by name; one found is recorded with its ARN, so
    /// this run finds its records in it rather than pay for them again — even when they now
    /// group into other jobs.
    pub(super) async fn recover_lost_creates(
        client: &BedrockBatch,
        ledger: &Ledger,
        info: &ModelSettings,
        shard: &Option<String>,
    ) -> Result<()> {
        let lost = ledger.all().into_iter().filter(|r| {
            r.modality == "batch"
                && r.model_id == info.invoke_id
                && r.arn.is_none()
                && r.status == Status::Submitting
                && !r.used
                && &r.shard == shard
        });
        for mut record in lost {
            let name = job_name(&record.token, record.attempt);
            let found = match client.find(&name, &record.token).await {
                Ok(found) => found,
                // Not finding it costs at most paying again, as before: not worth stopping for.
                Err(e) => {
                    tracing::warn!(model = %info.name, "cannot list the batch jobs named {name}: {}", e.message);
                    continue;
                }
            };
            let Some(arn) = found else {
                continue;
            };
            tracing::info!(model = %info.name, "found batch job {arn}, created by a run that ended before it recorded it");
            record.arn = Some(arn);
            record.status = Status::InProgress;
            record.updated_at = ledger::now();
            ledger.record(&record).await?;
        }
        Ok(())
    }

    /// Records the job, submits it, records its ARN; follows another writer's job instead.
    pub(super) async fn submit(
        &self,
        key: &str,
        attempt: u32,
        (n, images): (usize, u64),
        input: &S3Uri,
    ) -> Result<JobRecord> {
        let now = ledger::now();
        let output = self.cfg.prefix.join("outputs/").to_string();
        let timeout_hours = (self.cfg.timeout.as_secs_f64() / 3600.0)
            .ceil()
            .clamp(24.0, 168.0) as i32;
        // From everything the request says: sent again, it answers the same job; the same
        // records sent elsewhere (another pipeline's prefix, role or timeout) are a job of
        // their own, not a ConflictException (tokens are the account's).
        let request = format!(
            "{key}\n{input}\n{output}\n{}\n{}\n{timeout_hours}",
            self.cfg.role_arn, self.info.invoke_id
        );
        let id = crate::util::content_hash("batch-request", request.as_bytes());
        let token = match attempt {
            0 => format!("embedpipe-batch-{id}"),
            n => format!("embedpipe-batch-{id}-{n}"),
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
            images,
            shard: self.shard.clone(),
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
        let name = job_name(&record.token, record.attempt);
        let request = JobRequest {
            name: &name,
            model_id: &self.info.invoke_id,
            role_arn: &self.cfg.role_arn,
            input_uri: &record.input_uri,
            output_uri: &output,
            token: &record.token,
            timeout_hours,
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

    /// A control-plane error that retrying will not mend: the run stops with the service's
    /// message and what to do.
    fn fatal(&self, e: &crate::clients::CallError) -> anyhow::Error {
        anyhow!(
            "batch inference for model `{}`: {}{}",
            self.info.name,
            e.message,
            crate::clients::bedrock::fatal_help(e.class)
        )
    }

    /// A control-plane call retried on throttling, 5xx and network errors; other errors stop
    /// the run with the service's message.
    pub(super) async fn with_retries<T, F, Fut>(&self, policy: &RetryPolicy, call: F) -> Result<T>
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
                    None => return Err(self.fatal(&e)),
                },
            }
        }
    }

    /// CreateModelInvocationJob, retried; while the account's jobs-in-progress quota is full
    /// (other jobs of the account, or this run's timed-out ones) it waits for a job to end.
    pub(super) async fn create(&self, request: &JobRequest<'_>) -> Result<String> {
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
                None => return Err(self.fatal(&e)),
            }
        }
    }

    /// Holds a submit while `max_jobs` of this run's jobs are running.
    pub(super) async fn wait_for_slot(&self) -> Result<()> {
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
    pub(super) fn running(&self) -> Vec<usize> {
        let jobs = self.jobs.lock().expect("jobs");
        (0..jobs.len())
            .filter(|&i| jobs[i].ledger.is_some() && jobs[i].end.is_none())
            .collect()
    }

    /// Asks the service about every running job once, settling those that ended.
    pub(super) async fn poll_running(&self) -> Result<()> {
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
    pub(super) async fn settle(&self, i: usize, mut record: JobRecord, end: JobEnd) {
        let billed_before = record.status == Status::Completed;
        match &end {
            JobEnd::Done => {
                self.count(|s| s.jobs_completed += 1);
                if !billed_before {
                    record.counts = self.manifest(&record).await;
                    if let Some(c) = &record.counts {
                        let (tokens, images) = (c.input_token_count, record.images);
                        let prices = &self.cfg.prices;
                        let cost = tokens as f64 / 1000.0 * prices.per_1k_tokens
                            + images as f64 * prices.per_image;
                        self.count(|s| {
                            s.input_tokens += tokens;
                            s.images += images;
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
    pub(super) async fn manifest(&self, record: &JobRecord) -> Option<ledger::RecordCounts> {
        let folder = self.output_folder(record)?;
        let body = self.s3.get(&folder.join("manifest.json.out")).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// `<batch_s3_uri>/outputs/<job id>/`.
    pub(super) fn output_folder(&self, record: &JobRecord) -> Option<S3Uri> {
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
