//! One source batch of a media step: async jobs per input, one output row per segment.

use super::*;
use super::{embed::*, pump::*};

/// Embeds one source batch of a media pipeline: each row's file becomes an async job, and each
/// segment of its result a table row.
pub(super) async fn embed_media_batch(
    ctx: &RunContext<'_>,
    route: &AsyncRoute,
    sb: &SourceBatch,
    repeated: &[usize],
) -> Result<BatchOutput> {
    let (pipeline, checked, run_id) = (ctx.pipeline, ctx.checked, ctx.run_id);
    let n = sb.batch.num_rows();
    let step = &pipeline.steps[0];
    let mut out = BatchOutput::new(sb, run_id);
    if n == 0 {
        return Ok(out);
    }
    let fingerprint = route.fingerprint().to_string();
    let (input, batch) = (step.input.clone(), sb.batch.clone());
    let mut prepared = cpu(move || prepare::prepare(&input, &fingerprint, &batch)).await??;
    for &row in repeated {
        out.dead
            .push(dead_letter(sb, run_id, Some(row), repeated_id(sb, row)));
    }
    if !repeated.is_empty() {
        prepared
            .failures
            .retain(|(row, _, _)| !repeated.contains(row));
        retain_rows(&mut prepared, |row| !repeated.contains(&row));
    }
    for (row, kind, msg) in &prepared.failures {
        let failure = RowFailure::new(&step.name, *kind, msg.clone());
        out.dead.push(dead_letter(sb, run_id, Some(*row), failure));
    }
    let prepare::Inputs::Media(inputs) = &prepared.inputs else {
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
                    seg.modality.push(s.modality(modality).as_str().into());
                    seg.embedding_option.push(s.kind);
                }
            }
            Err((kind, msg)) => {
                let failure = RowFailure::new(&step.name, kind, msg);
                out.dead.push(dead_letter(sb, run_id, Some(row), failure))
            }
        }
    }
    if keep.is_empty() {
        return Ok(out);
    }
    let layout = checked.layout.clone();
    let (batch, ids) = (sb.batch.clone(), sb.ids.clone());
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
