//! One source batch through its embed steps: prepare, skip what the table has, call the
//! models, assemble the output rows and the dead letters.

use super::pump::*;
use super::*;

/// Where a row of a batch stands as it goes through the steps.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RowState {
    /// Nothing went wrong so far: it is embedded and written.
    Ok,
    /// Its first failure, which its dead letter reports (later ones are ignored).
    Failed(RowFailure),
    /// Incremental: every step hashes as the table has it, so the row is left alone — no
    /// call, no write, never a dead letter (counted as skipped).
    Unchanged,
}

impl RowState {
    pub(super) fn is_ok(&self) -> bool {
        matches!(self, RowState::Ok)
    }

    /// Records `failure` unless the row already failed (or is left alone).
    pub(super) fn fail(&mut self, failure: RowFailure) {
        if self.is_ok() {
            *self = RowState::Failed(failure);
        }
    }
}

/// Embeds one source batch through every step: the rows to write and the dead letters.
/// `repeated`: rows whose id came earlier in the source (append, incremental), dead-lettered
/// here, before any call. `seq`: the batch's place in the source.
pub(super) async fn embed_batch(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    repeated: &[usize],
    seq: usize,
) -> Result<BatchOutput> {
    let n = sb.batch.num_rows();
    let mut out = BatchOutput::new(sb, ctx.run_id);
    if n == 0 {
        return Ok(out);
    }
    let mut state: Vec<RowState> = vec![RowState::Ok; n];
    for &row in repeated {
        state[row] = RowState::Failed(repeated_id(sb, row));
    }
    let mut prepared = prepare_steps(ctx, sb, &mut state).await?;
    if let (WriteMode::Append, Some(existing)) = (ctx.mode, ctx.existing) {
        refuse_stored_ids(
            existing,
            sb,
            &ctx.checked.target.table,
            &mut state,
            &mut prepared,
        )
        .await?;
    }
    // Incremental: rows whose every step hashes as stored are left alone (no call, no write).
    let incremental = ctx.existing.filter(|_| ctx.mode == WriteMode::Incremental);
    if let (Some(existing), Some(first)) = (incremental, prepared.first()) {
        let hashes: Vec<&[String]> = prepared.iter().map(|p| p.hashes.as_slice()).collect();
        let unchanged = unchanged_rows(existing, &sb.ids, &first.rows, &hashes, n).await?;
        out.skipped = unchanged.iter().filter(|u| **u).count() as u64;
        for p in &mut prepared {
            retain_rows(p, |row| !unchanged[row]);
        }
        for (row, u) in unchanged.into_iter().enumerate() {
            if u {
                state[row] = RowState::Unchanged;
            }
        }
    }
    let no_reuse = vec![Vec::new(); prepared.len()];
    let per_step = call_steps(ctx, seq, prepared, no_reuse, &mut state, &mut out).await?;
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&i| state[i as usize].is_ok())
        .collect();
    for (i, s) in state.into_iter().enumerate() {
        if let RowState::Failed(failure) = s {
            out.dead.push(dead_letter(sb, ctx.run_id, Some(i), failure));
        }
    }
    out.rows_written = keep.len() as u64;
    out.batch = assemble_rows(ctx, sb, per_step, keep).await?;
    Ok(out)
}

/// Every step's inputs for the rows of `sb` (on rayon); a row without an input for some step
/// fails there and is sent to no model.
pub(super) async fn prepare_steps(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    state: &mut [RowState],
) -> Result<Vec<Prepared>> {
    let mut prepared: Vec<Prepared> = Vec::with_capacity(ctx.pipeline.steps.len());
    for step in &ctx.pipeline.steps {
        let input = step.input.clone();
        let fingerprint = ctx.models.get(step.model_index).info.fingerprint.clone();
        let batch = sb.batch.clone();
        let mut p = cpu(move || prepare::prepare(&input, &fingerprint, &batch)).await??;
        for (row, kind, msg) in p.failures.drain(..) {
            state[row].fail(RowFailure::new(&step.name, kind, msg));
        }
        prepared.push(p);
    }
    for p in &mut prepared {
        retain_rows(p, |row| state[row].is_ok());
    }
    Ok(prepared)
}

pub(super) use crate::prepare::chunked::Reused;

/// Calls every step's model for the inputs of rows still ok (all steps at once: steps sharing a
/// model fill the same calls), failing rows whose input failed. `reused[s]` (rows in order) are
/// step `s`'s vectors known without a call; they join the step's output in row order.
pub(super) async fn call_steps(
    ctx: &RunContext<'_>,
    seq: usize,
    mut prepared: Vec<Prepared>,
    reused: Vec<Vec<Reused>>,
    state: &mut [RowState],
    out: &mut BatchOutput,
) -> Result<Vec<(Prepared, Vec<f32>)>> {
    let (pipeline, models, progress) = (ctx.pipeline, ctx.models, ctx.progress);
    for p in &mut prepared {
        retain_rows(p, |row| state[row].is_ok());
    }
    let embedded = AtomicU64::new(0);
    let on_call = |k: usize| {
        embedded.fetch_add(k as u64, Ordering::Relaxed);
        progress.inputs_done(k);
    };
    let outputs = futures::future::try_join_all(pipeline.steps.iter().zip(&prepared).map(
        |(step, p)| async {
            let model = models.get(step.model_index);
            match ctx.batch.get(&step.model_index) {
                Some(route) => {
                    route
                        .embed(model, &p.inputs, &p.hashes, seq, &on_call)
                        .await
                }
                None => model.embed(&p.inputs, &on_call).await,
            }
        },
    ))
    .await?;
    let mut per_step: Vec<(Prepared, Vec<f32>)> = Vec::with_capacity(pipeline.steps.len());
    for (((step, p), step_out), reused) in
        pipeline.steps.iter().zip(prepared).zip(outputs).zip(reused)
    {
        for (pos, kind, msg) in step_out.failed {
            state[p.rows[pos]].fail(RowFailure::new(&step.name, kind, msg));
        }
        let dim = models.get(step.model_index).info.dimension;
        per_step.push(merge_reused(p, step_out.vectors, reused, dim));
    }
    out.inputs = embedded.load(Ordering::Relaxed);
    Ok(per_step)
}

/// A step's called rows and its reused ones, in row order (their vectors likewise).
fn merge_reused(
    mut p: Prepared,
    vectors: Vec<f32>,
    reused: Vec<Reused>,
    dim: usize,
) -> (Prepared, Vec<f32>) {
    if reused.is_empty() {
        return (p, vectors);
    }
    let total = p.rows.len() + reused.len();
    let mut rows = Vec::with_capacity(total);
    let mut hashes = Vec::with_capacity(total);
    let mut merged = Vec::with_capacity(total * dim);
    let called_hashes = std::mem::take(&mut p.hashes);
    let mut called = p.rows.iter().zip(called_hashes).enumerate().peekable();
    let mut reused = reused.into_iter().peekable();
    loop {
        let take_called = match (called.peek(), reused.peek()) {
            (Some((_, (r, _))), Some((q, _, _))) => **r < *q,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_called {
            let (pos, (&row, hash)) = called.next().expect("peeked");
            rows.push(row);
            hashes.push(hash);
            merged.extend_from_slice(&vectors[pos * dim..(pos + 1) * dim]);
        } else {
            let (row, hash, v) = reused.next().expect("peeked");
            rows.push(row);
            hashes.push(hash);
            merged.extend_from_slice(&v);
        }
    }
    p.rows = rows;
    p.hashes = hashes;
    (p, merged)
}

/// The output rows `keep` of `sb` with every step's vectors and hashes (built on rayon).
pub(super) async fn assemble_rows(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    per_step: Vec<(Prepared, Vec<f32>)>,
    keep: Vec<u32>,
) -> Result<Option<RecordBatch>> {
    if keep.is_empty() {
        return Ok(None);
    }
    let dims: Vec<usize> = ctx
        .pipeline
        .steps
        .iter()
        .map(|s| ctx.models.get(s.model_index).info.dimension)
        .collect();
    let layout = ctx.checked.layout.clone();
    let (batch, ids) = (sb.batch.clone(), sb.ids.clone());
    let assembled = cpu(move || {
        let (vectors, hashes) = gather(dims, per_step, &keep);
        layout.assemble(&batch, &ids, &keep, vectors, hashes, None, now_micros())
    })
    .await??;
    Ok(Some(assembled))
}

/// The dead letter of a row of one source batch (`row`: its index in the batch), with where
/// it came from.
pub(super) fn dead_letter(
    sb: &SourceBatch,
    run_id: &str,
    row: Option<usize>,
    failure: RowFailure,
) -> DeadLetter {
    let RowFailure {
        step,
        kind,
        message,
    } = failure;
    DeadLetter {
        run_id: run_id.to_string(),
        id: row.map(|i| sb.ids.value(i).to_string()),
        source: sb.file.to_string(),
        row: row.map(|i| sb.rows[i]).filter(|&r| r > 0),
        step,
        kind,
        message,
    }
}

/// Incremental runs upsert by id and appends add new ids: a row whose id came earlier in the
/// source is dead-lettered (the first one wins).
pub(super) fn repeated_id(sb: &SourceBatch, row: usize) -> RowFailure {
    RowFailure::read(
        FailureKind::DuplicateId,
        format!(
            "id `{}` appeared earlier in the source; the first row with it is kept",
            sb.ids.value(row)
        ),
    )
}

/// Keeps only the prepared inputs whose row passes `keep`.
pub(super) fn retain_rows(p: &mut Prepared, keep: impl Fn(usize) -> bool) {
    if p.rows.iter().all(|&r| keep(r)) {
        return;
    }
    let mask: Vec<bool> = p.rows.iter().map(|&r| keep(r)).collect();
    let mut it = mask.iter();
    p.rows.retain(|_| *it.next().expect("same length"));
    let mut it = mask.iter();
    p.hashes.retain(|_| *it.next().expect("same length"));
    match &mut p.inputs {
        prepare::Inputs::Text(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        prepare::Inputs::Image(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        prepare::Inputs::TextImage(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
        prepare::Inputs::Media(t) => {
            let mut it = mask.iter();
            t.retain(|_| *it.next().expect("same length"));
        }
    }
}

/// Append: ids already in the table are refused before any call (append adds new rows; an
/// update by id is what incremental mode is for).
pub(super) async fn refuse_stored_ids(
    existing: &Existing,
    sb: &SourceBatch,
    table: &str,
    state: &mut [RowState],
    prepared: &mut [Prepared],
) -> Result<()> {
    let n = sb.batch.num_rows();
    let wanted: Vec<&str> = (0..n)
        .filter(|&r| state[r].is_ok())
        .map(|r| sb.ids.value(r))
        .collect();
    let stored = existing.hashes(&wanted).await?;
    for (row, s) in state.iter_mut().enumerate() {
        let id = sb.ids.value(row);
        if s.is_ok() && stored.contains_key(id) {
            s.fail(RowFailure::read(
                FailureKind::DuplicateId,
                format!("id `{id}` is already in table `{}`; append adds new ids only (mode = \"incremental\" updates rows by id)", table),
            ));
        }
    }
    for p in prepared.iter_mut() {
        retain_rows(p, |row| state[row].is_ok());
    }
    Ok(())
}

/// Each step's vectors and hashes of the kept rows, in row order.
pub(super) fn gather(
    dims: Vec<usize>,
    per_step: Vec<(Prepared, Vec<f32>)>,
    keep: &[u32],
) -> (Vec<Vec<f32>>, Vec<Vec<String>>) {
    let mut vectors = Vec::with_capacity(per_step.len());
    let mut hashes = Vec::with_capacity(per_step.len());
    for (dim, (prepared, vecs)) in dims.into_iter().zip(per_step) {
        // The usual case, every row kept and embedded by this step: its vectors are
        // already in row order (a megabyte or more per batch not copied again).
        let all = prepared.rows.len() == keep.len()
            && prepared
                .rows
                .iter()
                .zip(keep)
                .all(|(&r, &k)| r == k as usize);
        if all {
            vectors.push(vecs);
            hashes.push(prepared.hashes);
            continue;
        }
        let mut v = Vec::with_capacity(keep.len() * dim);
        let mut h = Vec::with_capacity(keep.len());
        let mut pos = 0;
        for &row in keep {
            while prepared.rows[pos] != row as usize {
                pos += 1;
            }
            v.extend_from_slice(&vecs[pos * dim..(pos + 1) * dim]);
            h.push(prepared.hashes[pos].clone());
        }
        vectors.push(v);
        hashes.push(h);
    }
    (vectors, hashes)
}
