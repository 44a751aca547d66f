//! `embedpipe run`: source → per-step inputs → model calls → LanceDB, with dead letters.
//!
//! Stages are joined by bounded channels: a blocking reader thread produces batches, the async
//! task prepares inputs (on rayon) and awaits model calls, and the sink task streams rows into
//! one LanceDB commit.

use crate::config::{Cleanup, Pipeline, WriteMode};
use crate::dispatch::Models;
use crate::jobs::AsyncRoute;
use crate::plan::{self, Prepared};
use crate::report::{Progress, Summary};
use crate::sink::failures::{DeadLetter, FailureWriter};
use crate::sink::incremental::{delete_missing, unchanged_rows, Existing, Upserter};
use crate::sink::lancedb::{self as lance_sink, Writer};
use crate::sink::runlog::{self, RunRecord};
use crate::sink::SegmentColumns;
use crate::sources::{self, SourceBatch};
use crate::validate::{self, Checked};
use anyhow::{anyhow, Context, Result};
use arrow::array::RecordBatch;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar / progress log lines.
    pub progress: bool,
    /// How models are reached (`--emulator`).
    pub overrides: crate::dispatch::Overrides,
    /// Embed every row again and rewrite the table (`--reindex`): allowed to change the
    /// vector space of an existing table.
    pub reindex: bool,
}

/// Where a run stopped.
#[derive(Debug)]
pub enum RunError {
    /// Before any model call: invalid pipeline, input, sink or missing model. Nothing written.
    Setup(anyhow::Error),
    /// During the run. Nothing committed.
    Failed(anyhow::Error),
    /// Interrupted (Ctrl-C). Nothing committed.
    Interrupted,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Setup(e) | RunError::Failed(e) => write!(f, "{e:#}"),
            RunError::Interrupted => write!(f, "interrupted; nothing was committed to the table"),
        }
    }
}

/// Runs CPU work on the rayon pool and awaits it.
pub(crate) async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| anyhow!("worker thread panicked"))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn new_run_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:08x}",
        t.as_secs(),
        (t.subsec_nanos() ^ std::process::id().rotate_left(16))
    )
}

struct Counters {
    read: u64,
    written: u64,
    /// Table rows of media pipelines (one per segment).
    segments: u64,
    /// Rows unchanged since the table was written (incremental).
    skipped: u64,
    /// Ids read so far (incremental: duplicates, cleanup).
    seen: Option<HashSet<String>>,
    /// Every row read had an id (else cleanup would not know what to keep).
    ids_complete: bool,
}

/// Where output rows go.
enum Output {
    /// One streaming commit (create, overwrite, append).
    Stream(Writer),
    /// Upserts by id in chunks (incremental).
    Upsert(Upserter),
}

impl Output {
    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Output::Stream(w) => w.send(batch).await,
            Output::Upsert(u) => u.push(batch).await,
        }
    }
}

/// Runs the pipeline, and records the run in the table's run log (unless it never started).
pub async fn run(pipeline: Arc<Pipeline>, opts: RunOptions) -> Result<Summary, RunError> {
    let started_micros = now_micros();
    let run_id = new_run_id();
    let result = run_inner(pipeline.clone(), opts, run_id.clone()).await;
    let pipeline_hash = hex::encode(&blake3::hash(pipeline.text.as_bytes()).as_bytes()[..16]);
    let record = match &result {
        Ok(s) => Some(RunRecord::from_summary(
            s,
            pipeline_hash,
            started_micros,
            now_micros(),
        )),
        Err(RunError::Setup(_)) => None,
        Err(e) => Some(RunRecord {
            run_id,
            pipeline_hash,
            pipeline: pipeline.path.display().to_string(),
            mode: pipeline.write_mode().as_str().to_string(),
            status: match e {
                RunError::Interrupted => "interrupted",
                _ => "failed",
            }
            .into(),
            started_at_micros: started_micros,
            ended_at_micros: now_micros(),
            rows_read: 0,
            rows_written: 0,
            rows_skipped: 0,
            rows_failed: 0,
            rows_deleted: 0,
            calls: 0,
            input_tokens: 0,
            images: 0,
            media_seconds: 0.0,
            cost_usd: 0.0,
            failures: "{}".into(),
            error: Some(e.to_string()),
        }),
    };
    if let (Some(r), Ok(target)) = (record, lance_sink::target(&pipeline)) {
        if let Err(e) = runlog::append(&target, &r).await {
            tracing::warn!("the run could not be recorded in the run log: {e:#}");
        }
    }
    result
}

async fn run_inner(
    pipeline: Arc<Pipeline>,
    opts: RunOptions,
    run_id: String,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let checked = validate::check_run(&pipeline, opts.reindex)
        .await
        .map_err(RunError::Setup)?;
    let mode = if opts.reindex {
        WriteMode::Overwrite
    } else {
        pipeline.write_mode()
    };
    let models = {
        let p = pipeline.clone();
        let o = opts.overrides.clone();
        tokio::task::spawn_blocking(move || Models::load(&p, &o))
            .await
            .map_err(|e| RunError::Setup(anyhow!("model loader panicked: {e}")))?
            .map_err(RunError::Setup)?
    };
    let failures_path = lance_sink::failures_path(&pipeline, &checked.target);
    let mut failures = FailureWriter::start(&failures_path).map_err(RunError::Setup)?;
    let conn = lance_sink::connect(&checked.target)
        .await
        .map_err(RunError::Setup)?;
    let (mut output, existing) = if mode == WriteMode::Incremental {
        let upserter = Upserter::new(
            conn.clone(),
            &checked.target.table,
            checked.layout.schema.clone(),
            pipeline.commit_rows(),
        )
        .await
        .map_err(RunError::Setup)?;
        let existing = match &checked.existing {
            Some(_) => Some(
                Existing::open(&conn, &checked.target.table, &pipeline)
                    .await
                    .map_err(RunError::Setup)?,
            ),
            None => None,
        };
        (Output::Upsert(upserter), existing)
    } else {
        let writer = Writer::start(
            conn.clone(),
            &checked.target,
            mode,
            checked.layout.schema.clone(),
            checked.existing.is_some(),
        )
        .await
        .map_err(RunError::Setup)?;
        (Output::Stream(writer), None)
    };

    // Video/audio: the async route, with its job ledger next to the table.
    let media = match pipeline
        .steps
        .iter()
        .find(|s| matches!(s.input, crate::config::StepInput::Media(..)))
    {
        Some(step) => {
            let ledger = crate::jobs::ledger::Ledger::open(&lance_sink::jobs_path(&checked.target))
                .map_err(RunError::Setup)?;
            let route = AsyncRoute::connect(
                models.get(step.model_index).info.clone(),
                Arc::new(ledger),
                crate::dispatch::retry::RetryPolicy::default(),
            )
            .await
            .map_err(RunError::Setup)?;
            Some(route)
        }
        None => None,
    };
    let remote: Vec<&crate::dispatch::ModelHandle> = models
        .iter()
        .filter(|m| m.info.spec.provider != crate::config::Provider::Local)
        .collect();
    let progress = Progress::new(
        checked.source.total_rows(),
        pipeline.steps.len(),
        opts.progress,
        &remote
            .iter()
            .map(|m| m.info.name.clone())
            .collect::<Vec<_>>(),
    );
    let model_lines = async {
        if !opts.progress || remote.is_empty() {
            return std::future::pending::<()>().await;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let lines: Vec<_> = remote
                .iter()
                .map(|m| (m.stats(), m.concurrency_now()))
                .collect();
            progress.models(&lines);
        }
    };
    let mut counters = Counters {
        read: 0,
        written: 0,
        segments: 0,
        skipped: 0,
        seen: (mode == WriteMode::Incremental).then(HashSet::new),
        ids_complete: true,
    };
    let outcome = tokio::select! {
        r = pump(&pipeline, &checked, &models, media.as_ref(), existing.as_ref(), &mut output, &mut failures, &mut counters, &progress, &run_id) => r.map_err(RunError::Failed),
        _ = tokio::signal::ctrl_c() => Err(RunError::Interrupted),
        () = model_lines => unreachable!("the progress ticker never ends"),
    };
    progress.finish();
    let mut deleted = 0;
    let mut commits = 0;
    match (outcome, output) {
        (Ok(()), Output::Stream(writer)) => writer.finish().await.map_err(RunError::Failed)?,
        (Ok(()), Output::Upsert(mut upserter)) => {
            upserter.flush().await.map_err(RunError::Failed)?;
            commits = upserter.commits;
            // Rows gone from the source, once all of it was read.
            if let (Cleanup::Full, Some(seen)) = (pipeline.cleanup(), &counters.seen) {
                if !counters.ids_complete {
                    tracing::warn!("cleanup skipped: some rows could not be read, so their ids are unknown and their table rows might be deleted by mistake");
                } else if checked.existing.is_some() || commits > 0 {
                    deleted = delete_missing(&conn, &checked.target.table, |id| seen.contains(id))
                        .await
                        .map_err(RunError::Failed)?;
                }
            }
        }
        (Err(e), Output::Stream(writer)) => {
            let e = match (writer.abort().await, e) {
                (Some(write_error), RunError::Failed(_)) => RunError::Failed(write_error),
                (_, e) => e,
            };
            let _ = failures.finish();
            return Err(e);
        }
        (Err(e), Output::Upsert(_)) => {
            // Chunks committed so far stay: a new run skips them.
            let _ = failures.finish();
            return Err(e);
        }
    }
    // Index maintenance; its failure costs speed, not data: the rows are committed.
    let maintenance = match crate::sink::maintain::maintain(&pipeline, &checked.target).await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("table maintenance failed (the rows are committed): {e:#}");
            None
        }
    };
    let failed = failures.count();
    let by_kind = failures.by_kind().clone();
    failures.finish().map_err(RunError::Failed)?;
    let wall = started.elapsed();
    Ok(Summary {
        run_id,
        pipeline: pipeline.path.display().to_string(),
        table: checked.target.table.clone(),
        uri: checked.target.uri.clone(),
        mode: if opts.reindex {
            format!("{} (reindex)", pipeline.write_mode().as_str())
        } else {
            mode.as_str().to_string()
        },
        rows_read: counters.read,
        rows_written: counters.written,
        rows_skipped: counters.skipped,
        rows_deleted: deleted,
        commits,
        rows_failed: failed,
        failures_by_kind: by_kind,
        failures_file: (failed > 0).then(|| failures_path.display().to_string()),
        models: models
            .iter()
            .map(|m| {
                let mut s = m.stats();
                // Async jobs bill media seconds to their model.
                if let Some(route) = media.as_ref().filter(|r| r.model_name() == m.info.name) {
                    let j = route.stats();
                    let tokens = j.text_chars.div_ceil(4);
                    s.usage.video_seconds += j.video_seconds;
                    s.usage.audio_seconds += j.audio_seconds;
                    s.usage.input_tokens += tokens;
                    s.usage.tokens_estimated |= tokens > 0;
                    s.inputs += j.completed;
                    s.cost_usd += j.video_seconds * m.info.prices.per_video_second
                        + j.audio_seconds * m.info.prices.per_audio_second
                        + tokens as f64 / 1000.0 * m.info.prices.per_1k_tokens;
                }
                s
            })
            .collect(),
        segments_written: counters.segments,
        maintenance,
        jobs: media.as_ref().map(|m| m.stats()),
        wall_time: wall,
        rows_per_second: counters.written as f64 / wall.as_secs_f64().max(1e-9),
    })
}

/// What one source batch became.
struct BatchOutput {
    /// Rows read (incl. rows the reader could not decode).
    read: u64,
    /// Rows to write.
    batch: Option<RecordBatch>,
    dead: Vec<DeadLetter>,
    /// Model inputs embedded for it (progress bookkeeping).
    inputs: u64,
    /// Source rows written (fewer than the batch's rows when they became segments).
    rows_written: u64,
    /// Rows left alone: unchanged since the table was written.
    skipped: u64,
    /// Source row of each output row.
    keep: Vec<u32>,
    /// Ids of every row of the batch, its file and row numbers (for dead letters).
    ids: Arc<arrow::array::StringArray>,
    source: Arc<str>,
    row_numbers: Vec<u64>,
}

impl BatchOutput {
    /// A batch's output before any embedding: its rows read, its unreadable rows dead-lettered.
    fn new(sb: &SourceBatch, run_id: &str) -> Self {
        Self {
            read: sb.batch.num_rows() as u64 + sb.failures.len() as u64,
            batch: None,
            dead: sb
                .failures
                .iter()
                .map(|f| DeadLetter {
                    run_id: run_id.to_string(),
                    id: f.id.clone(),
                    source: sb.file.to_string(),
                    row: f.row,
                    step: "read".into(),
                    kind: f.kind.into(),
                    message: f.message.clone(),
                })
                .collect(),
            inputs: 0,
            rows_written: 0,
            skipped: 0,
            keep: Vec::new(),
            ids: sb.ids.clone(),
            source: sb.file.clone(),
            row_numbers: sb.rows.clone(),
        }
    }
}

/// Source batches worked on at once: enough to keep every model's calls in flight full while
/// finished batches are written, few enough that memory stays small.
fn batches_in_flight(pipeline: &Pipeline, models: &Models) -> usize {
    let rows = pipeline.batch_rows().max(1);
    let want = models
        .iter()
        .map(|m| m.info.concurrency * m.info.batch_size)
        .max()
        .unwrap_or(1);
    (2 * want).div_ceil(rows).saturating_add(1).clamp(2, 16)
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    pipeline: &Arc<Pipeline>,
    checked: &Checked,
    models: &Models,
    media: Option<&AsyncRoute>,
    existing: Option<&Existing>,
    output: &mut Output,
    failures: &mut FailureWriter,
    counters: &mut Counters,
    progress: &Progress,
    run_id: &str,
) -> Result<()> {
    let iter = sources::open(
        pipeline,
        &checked.source,
        &checked.read_columns,
        checked.id_column.clone(),
    )?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SourceBatch>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        for item in iter {
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    let batches = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    // Several batches in flight; results come back in source order.
    let mut results = std::pin::pin!(batches
        .map(|item| async move {
            let sb = item?;
            match media {
                Some(route) => embed_media_batch(pipeline, checked, route, &sb, run_id).await,
                None => {
                    embed_batch(pipeline, checked, models, existing, &sb, run_id, progress).await
                }
            }
        })
        .buffered(batches_in_flight(pipeline, models)));
    while let Some(out) = results.next().await {
        let mut out = out?;
        tracing::trace!(rows = out.read, "batch embedded");
        counters.read += out.read;
        counters.skipped += out.skipped;
        if let Some(seen) = &mut counters.seen {
            counters.ids_complete &= out.dead.iter().all(|d| d.id.is_some());
            drop_duplicates(&mut out, seen, run_id)?;
        }
        for d in &out.dead {
            failures.write(d)?;
        }
        counters.written += out.rows_written;
        if let Some(batch) = out.batch {
            counters.segments += batch.num_rows() as u64;
            output.send(batch).await?;
            tracing::trace!("batch sent to the writer");
        }
        progress.batch_done(out.read, out.inputs);
    }
    reader.await.context("source reader panicked")?;
    Ok(())
}

/// Embeds one source batch through every step: the rows to write and the dead letters.
async fn embed_batch(
    pipeline: &Pipeline,
    checked: &Checked,
    models: &Models,
    existing: Option<&Existing>,
    sb: &SourceBatch,
    run_id: &str,
    progress: &Progress,
) -> Result<BatchOutput> {
    let n = sb.batch.num_rows();
    let mut out = BatchOutput::new(sb, run_id);
    if n == 0 {
        return Ok(out);
    }
    let embedded = AtomicU64::new(0);
    let on_call = |k: usize| {
        embedded.fetch_add(k as u64, Ordering::Relaxed);
        progress.inputs_done(k);
    };
    // First failure of each row, if any.
    let mut failed: Vec<Option<(String, String, String)>> = vec![None; n];
    let mut prepared: Vec<Prepared> = Vec::with_capacity(pipeline.steps.len());
    for step in &pipeline.steps {
        let input = step.input.clone();
        let fingerprint = models.get(step.model_index).info.fingerprint.clone();
        let batch = sb.batch.clone();
        let mut p = cpu(move || plan::prepare(&input, &fingerprint, &batch)).await??;
        for (row, kind, msg) in p.failures.drain(..) {
            failed[row].get_or_insert((step.name.clone(), kind.to_string(), msg));
        }
        prepared.push(p);
    }
    // A row without an input for some step is not sent to any model.
    for p in &mut prepared {
        retain_rows(p, |row| failed[row].is_none());
    }
    // Incremental: rows whose every step hashes as stored are left alone (no call, no write).
    if let (Some(existing), Some(first)) = (existing, prepared.first()) {
        let hashes: Vec<&[String]> = prepared.iter().map(|p| p.hashes.as_slice()).collect();
        let unchanged = unchanged_rows(existing, &sb.ids, &first.rows, &hashes, n).await?;
        out.skipped = unchanged.iter().filter(|u| **u).count() as u64;
        for p in &mut prepared {
            retain_rows(p, |row| !unchanged[row]);
        }
        for (row, u) in unchanged.into_iter().enumerate() {
            if u {
                failed[row] = Some((String::new(), SKIPPED.into(), String::new()));
            }
        }
    }
    // All steps at once: steps sharing a model fill the same calls.
    let outputs = futures::future::try_join_all(
        pipeline
            .steps
            .iter()
            .zip(&prepared)
            .map(|(step, p)| models.get(step.model_index).embed(&p.inputs, &on_call)),
    )
    .await?;
    let mut per_step: Vec<(Prepared, Vec<f32>)> = Vec::with_capacity(pipeline.steps.len());
    for ((step, p), step_out) in pipeline.steps.iter().zip(prepared).zip(outputs) {
        for (pos, kind, msg) in step_out.failed {
            failed[p.rows[pos]].get_or_insert((step.name.clone(), kind, msg));
        }
        per_step.push((p, step_out.vectors));
    }
    out.inputs = embedded.load(Ordering::Relaxed);
    tracing::trace!(rows = n, "steps done");
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&i| failed[i as usize].is_none())
        .collect();
    for (i, f) in failed.into_iter().enumerate() {
        if let Some((step, kind, message)) = f.filter(|f| f.1 != SKIPPED) {
            out.dead
                .push(dead_letter(sb, run_id, Some(i), &step, &kind, message));
        }
    }
    if keep.is_empty() {
        return Ok(out);
    }
    out.rows_written = keep.len() as u64;
    out.keep = keep.clone();
    // Gathering vectors and building the Arrow batch is CPU work: do it on rayon.
    let dims: Vec<usize> = pipeline
        .steps
        .iter()
        .map(|s| models.get(s.model_index).info.dimension)
        .collect();
    let layout = checked.layout.clone();
    let (batch, ids) = (sb.batch.clone(), sb.ids.clone());
    let assembled = cpu(move || {
        let mut vectors = Vec::with_capacity(per_step.len());
        let mut hashes = Vec::with_capacity(per_step.len());
        for (dim, (prepared, vecs)) in dims.into_iter().zip(per_step) {
            // The usual case, every row kept and embedded by this step: its vectors are
            // already in row order (a megabyte or more per batch not copied again).
            let all = prepared.rows.len() == keep.len()
                && prepared
                    .rows
                    .iter()
                    .zip(&keep)
                    .all(|(&r, &k)| r == k as usize);
            if all {
                vectors.push(vecs);
                hashes.push(prepared.hashes);
                continue;
            }
            let mut v = Vec::with_capacity(keep.len() * dim);
            let mut h = Vec::with_capacity(keep.len());
            let mut pos = 0;
            for &row in &keep {
                while prepared.rows[pos] != row as usize {
                    pos += 1;
                }
                v.extend_from_slice(&vecs[pos * dim..(pos + 1) * dim]);
                h.push(prepared.hashes[pos].clone());
            }
            vectors.push(v);
            hashes.push(h);
        }
        layout.assemble(&batch, &ids, &keep, vectors, hashes, None, now_micros())
    })
    .await??;
    out.batch = Some(assembled);
    Ok(out)
}

/// Dead letters of one source batch, with where each row came from.
fn dead_letter(
    sb: &SourceBatch,
    run_id: &str,
    row: Option<usize>,
    step: &str,
    kind: &str,
    message: String,
) -> DeadLetter {
    DeadLetter {
        run_id: run_id.to_string(),
        id: row.map(|i| sb.ids.value(i).to_string()),
        source: sb.file.to_string(),
        row: row.map(|i| sb.rows[i]).filter(|&r| r > 0),
        step: step.to_string(),
        kind: kind.to_string(),
        message,
    }
}

/// Embeds one source batch of a media pipeline: each row's file becomes an async job, and each
/// segment of its result a table row.
async fn embed_media_batch(
    pipeline: &Pipeline,
    checked: &Checked,
    route: &AsyncRoute,
    sb: &SourceBatch,
    run_id: &str,
) -> Result<BatchOutput> {
    let n = sb.batch.num_rows();
    let step = &pipeline.steps[0];
    let mut out = BatchOutput::new(sb, run_id);
    if n == 0 {
        return Ok(out);
    }
    let fingerprint = route.fingerprint().to_string();
    let (input, batch) = (step.input.clone(), sb.batch.clone());
    let prepared = cpu(move || plan::prepare(&input, &fingerprint, &batch)).await??;
    for (row, kind, msg) in &prepared.failures {
        out.dead.push(dead_letter(
            sb,
            run_id,
            Some(*row),
            &step.name,
            kind,
            msg.clone(),
        ));
    }
    let plan::Inputs::Media(inputs) = &prepared.inputs else {
        anyhow::bail!("a media step prepared non-media inputs");
    };
    let base_dir = std::path::Path::new(&*sb.file)
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let outcomes = route.embed(inputs, base_dir).await;
    out.inputs = inputs.len() as u64;
    let dim = route.dimension();
    let mut keep = Vec::new();
    let mut vectors = Vec::new();
    let mut hashes = Vec::new();
    let mut seg = SegmentColumns::default();
    for (pos, outcome) in outcomes.into_iter().enumerate() {
        let row = prepared.rows[pos];
        match outcome {
            Ok((modality, segments)) => {
                out.rows_written += 1;
                for s in segments {
                    debug_assert_eq!(s.vector.len(), dim);
                    keep.push(row as u32);
                    vectors.extend_from_slice(&s.vector);
                    hashes.push(prepared.hashes[pos].clone());
                    seg.index.push(s.index);
                    seg.start_sec.push(s.start_sec);
                    seg.end_sec.push(s.end_sec);
                    seg.start_char.push(s.start_char);
                    seg.end_char.push(s.end_char);
                    seg.modality.push(segment_modality(modality, &s.kind));
                    seg.embedding_option.push(s.kind);
                }
            }
            Err((kind, msg)) => {
                out.dead
                    .push(dead_letter(sb, run_id, Some(row), &step.name, &kind, msg))
            }
        }
    }
    if keep.is_empty() {
        return Ok(out);
    }
    let layout = checked.layout.clone();
    let (batch, ids) = (sb.batch.clone(), sb.ids.clone());
    out.keep = keep.clone();
    out.batch = Some(
        cpu(move || {
            layout.assemble(
                &batch,
                &ids,
                &keep,
                vec![vectors],
                vec![hashes],
                Some(seg),
                now_micros(),
            )
        })
        .await??,
    );
    Ok(out)
}

/// What a segment's vector embeds: the audio track of a video is `audio`.
fn segment_modality(input: crate::models::Modality, kind: &str) -> String {
    if kind == "audio" || kind == "transcription" {
        "audio".into()
    } else {
        input.as_str().into()
    }
}

/// Marks rows an incremental run leaves alone (never a dead letter).
const SKIPPED: &str = "\0skipped";

/// Incremental runs upsert by id: a row whose id came earlier in the source is dead-lettered
/// (the first one wins) and dropped from the output.
fn drop_duplicates(out: &mut BatchOutput, seen: &mut HashSet<String>, run_id: &str) -> Result<()> {
    use arrow::array::Array;
    let mut dup_rows = HashSet::new();
    for i in 0..out.ids.len() {
        if !seen.insert(out.ids.value(i).to_string()) {
            dup_rows.insert(i as u32);
        }
    }
    if dup_rows.is_empty() {
        return Ok(());
    }
    let Some(batch) = out.batch.take() else {
        return Ok(());
    };
    let mask: arrow::array::BooleanArray = out
        .keep
        .iter()
        .map(|r| Some(!dup_rows.contains(r)))
        .collect();
    let mut dropped = HashSet::new();
    for r in &out.keep {
        if dup_rows.contains(r) && dropped.insert(*r) {
            out.rows_written -= 1;
            out.dead.push(DeadLetter {
                run_id: run_id.to_string(),
                id: Some(out.ids.value(*r as usize).to_string()),
                source: out.source.to_string(),
                row: Some(out.row_numbers[*r as usize]).filter(|&n| n > 0),
                step: "read".into(),
                kind: "duplicate_id".into(),
                message: format!(
                    "id `{}` appeared earlier in the source; incremental runs keep the first",
                    out.ids.value(*r as usize)
                ),
            });
        }
    }
    let filtered = arrow::compute::filter_record_batch(&batch, &mask)?;
    out.keep.retain(|r| !dup_rows.contains(r));
    if filtered.num_rows() > 0 {
        out.batch = Some(filtered);
    }
    Ok(())
}

/// Keeps only the prepared inputs whose row passes `keep`.
fn retain_rows(p: &mut Prepared, keep: impl Fn(usize) -> bool) {
    if p.rows.iter().all(|&r| keep(r)) {
        return;
    }
    let mask: Vec<bool> = p.rows.iter().map(|&r| keep(r)).collect();
    let mut it = mask.iter();
    p.rows.retain(|_| *it.next().expect("same length"));
    let mut it = mask.iter();
    p.hashes.retain(|_| *it.next().expect("same length"));
    match &mut p.inputs {
        plan::Inputs::Text(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        plan::Inputs::Image(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        plan::Inputs::TextImage(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        plan::Inputs::Media(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
    }
}
