//! The second pass of a batch run: each input's vector from the jobs' results, joined by
//! `recordId`, reading the jobs in the order the first pass made them; the rest on-demand.

use super::results::{parse_output, select};
use super::*;

/// Loaded results: per job (its index), each record's outcome and whether it was taken.
#[derive(Default)]
pub(super) struct Window {
    next: usize,
    loaded: VecDeque<Loaded>,
    /// The `seq` of the newest job a record was taken from.
    newest_taken: usize,
}

struct Loaded {
    records: HashMap<String, (RecordOutcome, bool)>,
    taken: usize,
    /// Its place among the run's jobs (1-based).
    seq: usize,
}

impl BatchRoute {
    /// Second pass: each input's vector from the job results, the rest (no job holds it)
    /// on-demand through `model`.
    pub async fn embed(
        &self,
        model: &ModelHandle,
        inputs: &Inputs,
        hashes: &[String],
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let dim = self.info.dimension;
        let mut found: Vec<Option<RecordOutcome>> = Vec::with_capacity(hashes.len());
        for h in hashes {
            found.push(self.take(h).await?);
        }
        let misses: Vec<usize> = (0..hashes.len()).filter(|&i| found[i].is_none()).collect();
        let mut vectors = vec![0f32; hashes.len() * dim];
        let mut failed = Vec::new();
        if !misses.is_empty() {
            let sub = select(inputs, &misses);
            let out = model.embed(&sub, on_call).await?;
            for (k, &i) in misses.iter().enumerate() {
                vectors[i * dim..(i + 1) * dim]
                    .copy_from_slice(&out.vectors[k * dim..(k + 1) * dim]);
            }
            failed.extend(
                out.failed
                    .into_iter()
                    .map(|(k, kind, m)| (misses[k], kind, m)),
            );
        }
        let mut used = 0;
        for (i, f) in found.into_iter().enumerate() {
            match f {
                Some(Ok(v)) => {
                    vectors[i * dim..(i + 1) * dim].copy_from_slice(&v);
                    used += 1;
                }
                Some(Err((kind, msg))) => failed.push((i, kind, msg)),
                None => {}
            }
        }
        on_call(used);
        self.count(|s| s.results_used += used as u64);
        failed.sort_by_key(|f| f.0);
        Ok(StepOutput { vectors, failed })
    }

    /// The outcome of record `id` from the jobs' results (loading them in order as the second
    /// pass moves on), or `None` when no job holds it.
    async fn take(&self, id: &str) -> Result<Option<RecordOutcome>> {
        let reach = self.reach.load(std::sync::atomic::Ordering::Relaxed);
        let mut w = self.window.lock().await;
        loop {
            if let Some(l) = w.loaded.iter_mut().find(|l| l.records.contains_key(id)) {
                let (outcome, taken) = l.records.get_mut(id).expect("found");
                if !*taken {
                    *taken = true;
                    l.taken += 1;
                }
                let (outcome, seq) = (outcome.clone(), l.seq);
                w.newest_taken = w.newest_taken.max(seq);
                // Done with: a job whose every record was taken, and one further behind the
                // newest job in use than the rows in flight reach (rows whose record it holds
                // were dead-lettered before the step).
                let newest = w.newest_taken;
                w.loaded
                    .retain(|l| l.taken < l.records.len() && l.seq + reach >= newest);
                return Ok(Some(outcome));
            }
            // Not in a loaded job: look further ahead — the second pass takes the records of
            // all the rows in flight at once, so one may be as far ahead as they reach — up to
            // that many jobs no record was taken from (and LOOKAHEAD more); past that the input
            // is no job's (the rest below the minimum, inputs the pre-flight refused, images).
            let untouched = w.loaded.iter().filter(|l| l.taken == 0).count();
            if untouched >= reach + LOOKAHEAD {
                return Ok(None);
            }
            let Some(next) = self.next_job(&mut w.next) else {
                return Ok(None);
            };
            let mut loaded = self.load(next).await?;
            loaded.seq = w.next;
            w.loaded.push_back(loaded);
        }
    }

    /// How many of this model's inputs the second pass works on at once (at most): how far
    /// back in the jobs they may still take records.
    pub fn set_records_in_flight(&self, records: usize) {
        // Jobs that closed at the size cap (images) hold fewer records: the reach is counted in
        // the smallest (but the last, the rest).
        let jobs = self.jobs.lock().expect("jobs");
        let sizes: Vec<usize> = jobs
            .iter()
            .filter(|j| j.ledger.is_some())
            .map(|j| j.records)
            .collect();
        drop(jobs);
        let full = &sizes[..sizes.len().saturating_sub(1)];
        let per_job = full
            .iter()
            .copied()
            .min()
            .unwrap_or(usize::MAX)
            .min(self.cfg.records_per_job)
            .max(1);
        let jobs = records.div_ceil(per_job);
        self.reach
            .store(jobs + 1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The next job of the run with results (or failures) to give, from index `*next` on.
    fn next_job(&self, next: &mut usize) -> Option<(S3Uri, Option<JobRecord>, JobEnd)> {
        let jobs = self.jobs.lock().expect("jobs");
        while *next < jobs.len() {
            let j = &jobs[*next];
            *next += 1;
            if let (Some(record), Some(end)) = (&j.ledger, &j.end) {
                return Some((j.input.clone(), Some(record.clone()), end.clone()));
            }
        }
        None
    }

    /// A job's records: their vectors or errors (done), or its failure for each (ended, timed
    /// out).
    async fn load(
        &self,
        (input, record, end): (S3Uri, Option<JobRecord>, JobEnd),
    ) -> Result<Loaded> {
        let record = record.expect("jobs with an end were submitted");
        let arn = record.arn.clone().unwrap_or_default();
        let records = match end {
            // Results that cannot be read (moved `batch_s3_uri`, a lifecycle rule, a cut file)
            // fail the job's rows, not the run.
            JobEnd::Done => match self.read_results(&record).await {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("batch job {arn}: {e:#}");
                    self.failed_records(&input, FailureKind::JobResults, &msg)
                        .await?
                }
            },
            JobEnd::Ended(msg) => {
                self.failed_records(&input, FailureKind::BatchJobFailed, &msg)
                    .await?
            }
            JobEnd::TimedOut => {
                let msg = format!(
                    "batch job {arn} was still running after {:.1} h (job_timeout_hours); it keeps running and the next run picks its results up",
                    self.cfg.timeout.as_secs_f64() / 3600.0
                );
                self.failed_records(&input, FailureKind::JobTimeout, &msg)
                    .await?
            }
        };
        Ok(Loaded {
            records: records.into_iter().map(|(k, v)| (k, (v, false))).collect(),
            taken: 0,
            seq: 0,
        })
    }

    /// Every record of a job's input file, failed with `msg`.
    async fn failed_records(
        &self,
        input: &S3Uri,
        kind: FailureKind,
        msg: &str,
    ) -> Result<Vec<(String, RecordOutcome)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Id {
            record_id: String,
        }
        let body = self.s3.get(input).await?;
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let id: Id = serde_json::from_slice(l)
                    .with_context(|| format!("a record of {input} is not JSON"))?;
                Ok((id.record_id, Err((kind, msg.to_string()))))
            })
            .collect()
    }

    /// A finished job's output files, parsed with the family's response reader.
    async fn read_results(&self, record: &JobRecord) -> Result<Vec<(String, RecordOutcome)>> {
        let folder = self
            .output_folder(record)
            .ok_or_else(|| anyhow!("the ledger's job {} has no ARN", record.key))?;
        let keys = self.s3.list(&folder).await?;
        let mut all = Vec::new();
        for key in keys
            .iter()
            .filter(|k| k.ends_with(".out") && !k.ends_with("manifest.json.out"))
        {
            let uri = S3Uri {
                bucket: folder.bucket.clone(),
                key: key.clone(),
            };
            let body = self.s3.get(&uri).await?;
            let (spec, params) = (self.info.spec, self.info.params.clone());
            // As the on-demand route does: the client normalises unless the service did.
            let normalize = self.info.normalize && !spec.service_normalizes;
            let parsed =
                crate::util::cpu(move || parse_output(spec, &params, normalize, &body)).await?;
            let parsed = parsed.with_context(|| format!("cannot read the batch results {uri}"))?;
            let errors = parsed.iter().filter(|(_, r)| r.is_err()).count() as u64;
            self.count(|s| s.record_errors += errors);
            all.extend(parsed);
        }
        if all.is_empty() {
            anyhow::bail!(
                "batch job {} left no results in {folder}",
                record.arn.as_deref().unwrap_or("?")
            );
        }
        Ok(all)
    }
}
