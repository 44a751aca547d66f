//! One source batch of a chunked pipeline (`[chunk]`): rows split into chunk rows, chunks the
//! table already holds for the same document reused (no call, even when their place moved),
//! chunks a changed document lost deleted, and every document written whole or not at all.

use super::embed::*;
use super::pump::*;
use super::*;
use crate::prepare::chunked::{match_stored, ChunkStage};
use std::collections::HashMap;

/// The step name chunking failures are reported under.
pub(super) const CHUNK_STEP: &str = "chunk";

/// Embeds one source batch of a chunked pipeline. Counts are per document (a source row):
/// written when all its chunks are, skipped when the table holds every chunk unchanged, failed
/// (one dead letter naming its failed chunks) when any chunk fails — then none is written, so
/// the table keeps the document as it was.
pub(super) async fn embed_chunked_batch(
    ctx: &RunContext<'_>,
    stage: &Arc<ChunkStage>,
    sb: &SourceBatch,
    repeated: &[usize],
    seq: usize,
) -> Result<BatchOutput> {
    let run_id = ctx.run_id;
    if sb.batch.num_rows() == 0 {
        return Ok(BatchOutput::new(sb, run_id));
    }
    let ChunkedRows {
        mut out,
        csb,
        parent,
        dropped,
        mut state,
        prepared,
        reused,
        mut stale,
    } = chunk_rows(ctx, stage, sb, repeated).await?;
    let n = csb.batch.num_rows();
    let per_step = call_steps(ctx, seq, prepared, reused, &mut state, &mut out).await?;
    // A document is written whole or not at all.
    let docs = sb.batch.num_rows();
    let mut failed: Vec<Vec<(usize, RowFailure)>> = vec![Vec::new(); docs];
    let mut changed = vec![false; docs];
    let mut chunks_of = vec![0usize; docs];
    for (k, s) in state.iter().enumerate() {
        let d = parent[k] as usize;
        chunks_of[d] += 1;
        match s {
            RowState::Failed(f) if !dropped[d] => failed[d].push((k, f.clone())),
            RowState::Ok => changed[d] = true,
            _ => {}
        }
    }
    for (d, fails) in failed.iter().enumerate() {
        if let Some(failure) = document_failure(&csb, fails, chunks_of[d]) {
            out.dead.push(dead_letter(sb, run_id, Some(d), failure));
        }
    }
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&k| {
            let d = parent[k as usize] as usize;
            state[k as usize].is_ok() && failed[d].is_empty()
        })
        .collect();
    for d in 0..docs {
        if dropped[d] || !failed[d].is_empty() || chunks_of[d] == 0 {
            continue;
        }
        let gone = stale.remove(&(d as u32)).unwrap_or_default();
        if changed[d] || !gone.is_empty() {
            out.rows_written += 1;
        } else {
            out.skipped += 1;
        }
        out.deletes.extend(gone);
    }
    out.batch = assemble_rows(ctx, &csb, per_step, keep).await?;
    Ok(out)
}

/// A chunked source batch up to its calls: its documents split into chunk rows, prepared;
/// chunks the table holds unchanged (incremental) marked so, reused vectors taken out of the
/// calls, and the siblings of a failed chunk spared. The first pass of a batch run
/// ([`super::batch`]) sends the inputs left to jobs, the normal pass to its calls.
pub(super) struct ChunkedRows {
    /// Dead letters so far (repeated ids, documents that failed to split).
    pub(super) out: BatchOutput,
    pub(super) csb: SourceBatch,
    /// Each chunk row's document (its row in the source batch).
    pub(super) parent: Vec<u32>,
    /// Documents that make no chunks (repeated ids, failed splits).
    pub(super) dropped: Vec<bool>,
    pub(super) state: Vec<RowState>,
    pub(super) prepared: Vec<Prepared>,
    pub(super) reused: Vec<Vec<crate::prepare::chunked::Reused>>,
    /// Chunks a changed document lost, per document.
    pub(super) stale: HashMap<u32, Vec<String>>,
}

/// See [`ChunkedRows`]; `sb` holds at least one row.
pub(super) async fn chunk_rows(
    ctx: &RunContext<'_>,
    stage: &Arc<ChunkStage>,
    sb: &SourceBatch,
    repeated: &[usize],
) -> Result<ChunkedRows> {
    let run_id = ctx.run_id;
    let mut out = BatchOutput::new(sb, run_id);
    for &row in repeated {
        out.dead
            .push(dead_letter(sb, run_id, Some(row), repeated_id(sb, row)));
    }
    let expanded = {
        let (stage, batch, ids) = (stage.clone(), sb.batch.clone(), sb.ids.clone());
        cpu(move || stage.expand(&batch, &ids)).await??
    };
    // Rows that failed to split, and repeated ids, make no chunks.
    let mut dropped = vec![false; sb.batch.num_rows()];
    for &row in repeated {
        dropped[row] = true;
    }
    for (row, kind, msg) in &expanded.failures {
        if !dropped[*row] {
            dropped[*row] = true;
            let failure = RowFailure::new(CHUNK_STEP, *kind, msg.clone());
            out.dead.push(dead_letter(sb, run_id, Some(*row), failure));
        }
    }
    let (csb, parent) = expanded.into_rows(sb);
    let mut state: Vec<RowState> = parent
        .iter()
        .map(|&p| match dropped[p as usize] {
            // A repeated id's dead letter is written above, once per document.
            true => RowState::Failed(RowFailure::read(FailureKind::DuplicateId, String::new())),
            false => RowState::Ok,
        })
        .collect();
    let mut prepared = prepare_steps(ctx, &csb, &mut state).await?;
    if let (WriteMode::Append, Some(existing)) = (ctx.mode, ctx.existing) {
        refuse_stored_ids(
            existing,
            &csb,
            &ctx.checked.target.table,
            &mut state,
            &mut prepared,
        )
        .await?;
    }
    let mut reused = vec![Vec::new(); prepared.len()];
    let mut stale: HashMap<u32, Vec<String>> = HashMap::new();
    let incremental = ctx.existing.filter(|_| ctx.mode == WriteMode::Incremental);
    if let Some(existing) = incremental {
        let docs: Vec<&str> = {
            let mut d: Vec<&str> = Vec::new();
            for (k, &p) in parent.iter().enumerate() {
                if state[k].is_ok() && d.last() != Some(&sb.ids.value(p as usize)) {
                    d.push(sb.ids.value(p as usize));
                }
            }
            d
        };
        let place = stage.place_columns();
        let stored = existing.chunks(&docs, &place).await?;
        let ok: Vec<bool> = state.iter().map(RowState::is_ok).collect();
        let found = match_stored(
            &csb.batch, &csb.ids, &parent, &sb.ids, &prepared, &stored, &place, &ok,
        );
        for (s, u) in state.iter_mut().zip(&found.unchanged) {
            if *u {
                *s = RowState::Unchanged;
            }
        }
        for p in &mut prepared {
            retain_rows(p, |row| state[row].is_ok());
        }
        reused = found.reused;
        // Reused vectors need no call: take those rows out of the step's inputs.
        for (p, r) in prepared.iter_mut().zip(&reused) {
            if !r.is_empty() {
                let rows: std::collections::HashSet<usize> = r.iter().map(|x| x.0).collect();
                retain_rows(p, |row| !rows.contains(&row));
            }
        }
        stale = found.stale;
    }
    // A document is written whole or not at all: once a chunk failed (refused by append,
    // no input), its siblings are not paid for.
    let mut doomed = vec![false; sb.batch.num_rows()];
    for (k, s) in state.iter().enumerate() {
        if matches!(s, RowState::Failed(_)) {
            doomed[parent[k] as usize] = true;
        }
    }
    if doomed.iter().any(|d| *d) {
        let spare = |row: usize| !doomed[parent[row] as usize];
        for p in &mut prepared {
            retain_rows(p, spare);
        }
        for r in &mut reused {
            r.retain(|x| spare(x.0));
        }
    }
    Ok(ChunkedRows {
        out,
        csb,
        parent,
        dropped,
        state,
        prepared,
        reused,
        stale,
    })
}

/// One dead letter for a document whose chunks failed: the first failure's step and kind, and
/// which chunks failed why.
fn document_failure(
    csb: &SourceBatch,
    fails: &[(usize, RowFailure)],
    chunks: usize,
) -> Option<RowFailure> {
    let (_, first) = fails.first()?;
    let starts = csb.batch.column_by_name("start_char");
    let ends = csb.batch.column_by_name("end_char");
    let span = |k: usize| -> String {
        match (starts, ends) {
            (Some(s), Some(e)) => format!(
                " (characters {}..{})",
                arrow::util::display::array_value_to_string(s, k).unwrap_or_default(),
                arrow::util::display::array_value_to_string(e, k).unwrap_or_default()
            ),
            _ => String::new(),
        }
    };
    let shown: Vec<String> = fails
        .iter()
        .take(3)
        .map(|(k, f)| {
            let index = csb.ids.value(*k).rsplit_once('#').map_or("?", |(_, i)| i);
            format!("chunk {index}{}: {}", span(*k), f.message)
        })
        .collect();
    let more = match fails.len() > 3 {
        true => format!("; and {} more", fails.len() - 3),
        false => String::new(),
    };
    Some(RowFailure::new(
        &first.step,
        first.kind,
        format!(
            "{} of {chunks} chunks failed, so none of the document was written: {}{more}",
            fails.len(),
            shown.join("; ")
        ),
    ))
}
