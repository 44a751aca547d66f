//! `embedpipe run`: source → per-step inputs → model calls → LanceDB, with dead letters.
//!
//! Stages are joined by bounded channels: a blocking reader thread produces batches, the async
//! task prepares inputs (on rayon) and awaits model calls, and the sink task streams rows into
//! one LanceDB commit.

use crate::config::Pipeline;
use crate::dispatch::Models;
use crate::plan::{self, Prepared};
use crate::report::{Progress, Summary};
use crate::sink::failures::{DeadLetter, FailureWriter};
use crate::sink::lancedb::{self as lance_sink, Writer};
use crate::sources::{self, SourceBatch};
use crate::validate::{self, Checked};
use anyhow::{anyhow, Context, Result};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar / progress log lines.
    pub progress: bool,
    /// How models are reached (`--emulator`).
    pub overrides: crate::dispatch::Overrides,
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
}

/// Runs the pipeline.
pub async fn run(pipeline: Arc<Pipeline>, opts: RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let checked = validate::check(&pipeline).await.map_err(RunError::Setup)?;
    let models = {
        let p = pipeline.clone();
        let o = opts.overrides.clone();
        tokio::task::spawn_blocking(move || Models::load(&p, &o))
            .await
            .map_err(|e| RunError::Setup(anyhow!("model loader panicked: {e}")))?
            .map_err(RunError::Setup)?
    };
    let run_id = new_run_id();
    let failures_path = lance_sink::failures_path(&pipeline, &checked.target);
    let mut failures = FailureWriter::start(&failures_path).map_err(RunError::Setup)?;
    let conn = lance_sink::connect(&checked.target)
        .await
        .map_err(RunError::Setup)?;
    let writer = Writer::start(
        conn,
        &checked.target,
        pipeline.write_mode(),
        checked.layout.schema.clone(),
        checked.existing.is_some(),
    )
    .await
    .map_err(RunError::Setup)?;

    let progress = Progress::new(
        checked.source.total_rows(),
        pipeline.steps.len(),
        opts.progress,
    );
    let mut counters = Counters {
        read: 0,
        written: 0,
    };
    let outcome = tokio::select! {
        r = pump(&pipeline, &checked, &models, &writer, &mut failures, &mut counters, &progress, &run_id) => r.map_err(RunError::Failed),
        _ = tokio::signal::ctrl_c() => Err(RunError::Interrupted),
    };
    progress.finish();
    match outcome {
        Ok(()) => writer.finish().await.map_err(RunError::Failed)?,
        Err(e) => {
            let e = match (writer.abort().await, e) {
                (Some(write_error), RunError::Failed(_)) => RunError::Failed(write_error),
                (_, e) => e,
            };
            let _ = failures.finish();
            return Err(e);
        }
    }
    let failed = failures.count();
    let by_kind = failures.by_kind().clone();
    failures.finish().map_err(RunError::Failed)?;
    let wall = started.elapsed();
    Ok(Summary {
        run_id,
        pipeline: pipeline.path.display().to_string(),
        table: checked.target.table.clone(),
        uri: checked.target.uri.clone(),
        mode: pipeline.write_mode().as_str().to_string(),
        rows_read: counters.read,
        rows_written: counters.written,
        rows_skipped: 0,
        rows_failed: failed,
        failures_by_kind: by_kind,
        failures_file: (failed > 0).then(|| failures_path.display().to_string()),
        models: models.iter().map(|m| m.stats()).collect(),
        wall_time: wall,
        rows_per_second: counters.written as f64 / wall.as_secs_f64().max(1e-9),
    })
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    pipeline: &Arc<Pipeline>,
    checked: &Checked,
    models: &Models,
    writer: &Writer,
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<SourceBatch>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        for item in iter {
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    while let Some(item) = rx.recv().await {
        let sb = item?;
        let n = sb.batch.num_rows() as u64 + sb.failures.len() as u64;
        counters.read += n;
        for f in &sb.failures {
            failures.write(&DeadLetter {
                run_id: run_id.to_string(),
                id: f.id.clone(),
                source: f.file.to_string(),
                row: f.row,
                step: "read".into(),
                kind: f.kind.into(),
                message: f.message.clone(),
            })?;
        }
        let written = embed_batch(
            pipeline, checked, models, writer, failures, &sb, run_id, progress,
        )
        .await?;
        counters.written += written;
        progress.batch_done(n);
    }
    reader.await.context("source reader panicked")?;
    Ok(())
}

/// Embeds one source batch through every step and sends the rows that made it to the sink.
#[allow(clippy::too_many_arguments)]
async fn embed_batch(
    pipeline: &Pipeline,
    checked: &Checked,
    models: &Models,
    writer: &Writer,
    failures: &mut FailureWriter,
    sb: &SourceBatch,
    run_id: &str,
    progress: &Progress,
) -> Result<u64> {
    let n = sb.batch.num_rows();
    if n == 0 {
        return Ok(0);
    }
    // First failure of each row, if any.
    let mut failed: Vec<Option<(String, String, String)>> = vec![None; n];
    let mut per_step: Vec<(Prepared, Vec<f32>)> = Vec::with_capacity(pipeline.steps.len());
    for step in &pipeline.steps {
        let model = models.get(step.model_index);
        let input = step.input.clone();
        let fingerprint = model.info.fingerprint.clone();
        let batch = sb.batch.clone();
        let mut prepared = cpu(move || plan::prepare(&input, &fingerprint, &batch)).await??;
        for (row, kind, msg) in prepared.failures.drain(..) {
            failed[row].get_or_insert((step.name.clone(), kind.to_string(), msg));
        }
        // Rows that already failed an earlier step are not sent again.
        retain_rows(&mut prepared, |row| failed[row].is_none());
        let out = model
            .embed(&prepared.inputs, &|n| progress.inputs_done(n))
            .await?;
        for (pos, kind, msg) in out.failed {
            failed[prepared.rows[pos]].get_or_insert((step.name.clone(), kind, msg));
        }
        per_step.push((prepared, out.vectors));
    }
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&i| failed[i as usize].is_none())
        .collect();
    for (i, f) in failed.into_iter().enumerate() {
        if let Some((step, kind, message)) = f {
            failures.write(&DeadLetter {
                run_id: run_id.to_string(),
                id: Some(sb.ids.value(i).to_string()),
                source: sb.file.to_string(),
                row: Some(sb.rows[i]).filter(|&r| r > 0),
                step,
                kind,
                message,
            })?;
        }
    }
    if keep.is_empty() {
        return Ok(0);
    }
    // Gathering vectors and building the Arrow batch is CPU work: do it on rayon.
    let dims: Vec<usize> = pipeline
        .steps
        .iter()
        .map(|s| models.get(s.model_index).info.dimension)
        .collect();
    let layout = checked.layout.clone();
    let (batch, ids) = (sb.batch.clone(), sb.ids.clone());
    let out = cpu(move || {
        let mut vectors = Vec::with_capacity(per_step.len());
        let mut hashes = Vec::with_capacity(per_step.len());
        for (dim, (prepared, vecs)) in dims.into_iter().zip(per_step) {
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
        layout.assemble(&batch, &ids, &keep, vectors, hashes, now_micros())
    })
    .await??;
    let rows = out.num_rows() as u64;
    writer.send(out).await?;
    Ok(rows)
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
    }
}
