//! The second pass of a batch run: each input's vector from the jobs' results, joined by
//! `recordId`, holding the results of the jobs whose span of source batches the batches in
//! flight are in; the rest on-demand.

use super::results::{parse_output, record_ids, select};
use super::*;

/// Bytes of a results file parsed at once.
const RESULTS_PIECE: usize = 8 << 20;

/// Loaded results: the jobs holding records of the source batches in flight.
#[derive(Default)]
pub(super) struct Window {
    /// The run's jobs with results (or failures) to give, by their first source batch.
    order: Option<Vec<usize>>,
    /// How many of `order` were loaded (or passed over).
    next: usize,
    loaded: Vec<Loaded>,
    /// The newest source batch the second pass has asked about.
    newest: usize,
}

/// A job of the run that ended: what the second pass reads of it.
struct EndedJob {
    input: S3Uri,
    record: JobRecord,
    end: JobEnd,
    /// See [`RunJob::span`].
    span: (usize, usize),
}

struct Loaded {
    records: HashMap<String, RecordOutcome>,
    /// Its last source batch (see [`RunJob::span`]).
    last: usize,
}

impl BatchRoute {
    /// Second pass: each input's vector from the job results, the rest (no job holds it)
    /// on-demand through `model`.
    pub async fn embed(
        &self,
        model: &ModelHandle,
        inputs: &Inputs,
        hashes: &[String],
        seq: usize,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let dim = self.info.dimension;
        let mut found: Vec<Option<RecordOutcome>> = Vec::with_capacity(hashes.len());
        for h in hashes {
            found.push(self.take(h, seq).await?);
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

    /// The outcome of record `id` for source batch `seq` from the jobs' results, or `None`
    /// when no job holds it. Every job whose span reaches `seq` is loaded (in the order of
    /// their first batch); jobs that end before every batch still in flight are dropped.
    async fn take(&self, id: &str, seq: usize) -> Result<Option<RecordOutcome>> {
        let in_flight = self
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let mut w = self.window.lock().await;
        if w.order.is_none() {
            w.order = Some(self.job_order());
        }
        w.newest = w.newest.max(seq);
        // The batches in flight are the newest and at most `in_flight - 1` before it.
        let newest = w.newest;
        let needed = |last: usize| last + in_flight > newest;
        w.loaded.retain(|l| needed(l.last));
        loop {
            let order = w.order.as_ref().expect("set above");
            let Some(&i) = order.get(w.next) else {
                break;
            };
            let Some(job) = self.job_with_results(i) else {
                w.next += 1;
                continue;
            };
            let span = job.span;
            if span.0 > seq {
                break;
            }
            w.next += 1;
            if needed(span.1) {
                let records = self.load(job).await?;
                w.loaded.push(Loaded {
                    records,
                    last: span.1,
                });
            }
        }
        Ok(w.loaded.iter().find_map(|l| l.records.get(id).cloned()))
    }

    /// The second pass works on this many source batches at once.
    pub fn set_batches_in_flight(&self, batches: usize) {
        self.in_flight
            .store(batches, std::sync::atomic::Ordering::Relaxed);
    }

    /// Indexes of the run's jobs, by their first source batch.
    fn job_order(&self) -> Vec<usize> {
        let jobs = self.jobs.lock().expect("jobs");
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&i| jobs[i].span.0);
        order
    }

    /// Job `i`, if it has results (or failures) to give.
    fn job_with_results(&self, i: usize) -> Option<EndedJob> {
        let jobs = self.jobs.lock().expect("jobs");
        let j = &jobs[i];
        match (&j.ledger, &j.end) {
            (Some(record), Some(end)) => Some(EndedJob {
                input: j.input.clone(),
                record: record.clone(),
                end: end.clone(),
                span: j.span,
            }),
            _ => None,
        }
    }

    /// A job's records: their vectors or errors (done), or its failure for each (ended, timed
    /// out).
    async fn load(&self, job: EndedJob) -> Result<HashMap<String, RecordOutcome>> {
        let EndedJob {
            input, record, end, ..
        } = job;
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
        Ok(records.into_iter().collect())
    }

    /// Every record of a job's input file, failed with `msg`.
    async fn failed_records(
        &self,
        input: &S3Uri,
        kind: FailureKind,
        msg: &str,
    ) -> Result<Vec<(String, RecordOutcome)>> {
        let ids = self.input_ids(input).await?;
        Ok(ids
            .into_iter()
            .map(|id| (id, Err((kind, msg.to_string()))))
            .collect())
    }

    /// The `recordId`s of a job's input file, read in pieces (records with images are large).
    pub(super) async fn input_ids(&self, input: &S3Uri) -> Result<Vec<String>> {
        let mut lines = self.s3.get_lines(input, RESULTS_PIECE).await?;
        let (mut ids, mut first_line) = (Vec::new(), 0);
        while let Some(piece) = lines.next_piece().await? {
            ids.extend(
                record_ids(&piece, first_line)
                    .with_context(|| format!("cannot read the batch records {input}"))?,
            );
            first_line += piece.iter().filter(|b| **b == b'\n').count();
        }
        Ok(ids)
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
            // As the on-demand route does: the client normalises unless the service did.
            let (spec, params) = (self.info.spec, self.info.params.clone());
            let normalize = self.info.normalize && !spec.service_normalizes;
            // Read in pieces (the file is several times its vectors' size as JSON), each
            // parsed on rayon.
            let mut lines = self.s3.get_lines(&uri, RESULTS_PIECE).await?;
            let mut first_line = 0;
            while let Some(piece) = lines.next_piece().await? {
                let params = params.clone();
                let n = piece.iter().filter(|b| **b == b'\n').count();
                let parsed = crate::util::cpu(move || {
                    parse_output(spec, &params, normalize, &piece, first_line)
                })
                .await?
                .with_context(|| format!("cannot read the batch results {uri}"))?;
                first_line += n;
                let errors = parsed.iter().filter(|(_, r)| r.is_err()).count() as u64;
                self.count(|s| s.record_errors += errors);
                all.extend(parsed);
            }
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
