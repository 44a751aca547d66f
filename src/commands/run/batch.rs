//! The first pass of a run with batch models (`invoke = "batch"`): the source is read and
//! prepared as the run will (the same skips of unchanged rows and stored ids), each batch
//! model's new inputs become records of its jobs, and the run waits for the jobs before its
//! second, normal pass writes the table from their results.

use super::embed::*;
use super::pump::*;
use super::*;

pub(super) async fn submit_and_wait(ctx: &RunContext<'_>) -> Result<(), Stop> {
    let (mut rx, reader) = read_source(ctx)?;
    // Rows whose id came earlier are dead-lettered by the second pass: never paid for here.
    let seen = std::sync::Mutex::new(
        matches!(ctx.mode, WriteMode::Incremental | WriteMode::Append).then(HashSet::new),
    );
    let mut seq = 0;
    while let Some(item) = rx.recv().await {
        let sb = item?;
        let repeated = repeated_ids(&sb, &seen);
        collect_records(ctx, &sb, &repeated, seq).await?;
        seq += 1;
    }
    reader.await.context("source reader panicked")?;
    for route in ctx.batch.values() {
        route.finish().await?;
        // The second pass works on this many source batches at once.
        route.set_batches_in_flight(batches_in_flight(ctx.settings, ctx.models));
    }
    let started = Instant::now();
    futures::future::try_join_all(ctx.batch.values().map(|r| r.wait())).await?;
    tracing::info!(
        "batch jobs ended after {:.1} s of waiting",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One source batch's records (`seq`: its place in the source): the inputs the second pass
/// would send to each batch model.
async fn collect_records(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    repeated: &[usize],
    seq: usize,
) -> Result<()> {
    if sb.batch.num_rows() == 0 {
        return Ok(());
    }
    let prepared = match ctx.chunks {
        // The inputs the normal pass would send: chunks of new and changed documents.
        Some(stage) => {
            super::chunked::chunk_rows(ctx, stage, sb, repeated)
                .await?
                .prepared
        }
        None => prepare_rows(ctx, sb, repeated).await?,
    };
    for (step, p) in ctx.pipeline.steps.iter().zip(&prepared) {
        if let Some(route) = ctx.batch.get(&step.model_index) {
            route.add(&p.inputs, &p.hashes, seq).await?;
        }
    }
    Ok(())
}

/// A source batch's rows prepared as [`embed_batch`] prepares them: repeated ids, stored ids
/// (append) and unchanged rows (incremental) taken out.
async fn prepare_rows(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    repeated: &[usize],
) -> Result<Vec<Prepared>> {
    let n = sb.batch.num_rows();
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
    let incremental = ctx.existing.filter(|_| ctx.mode == WriteMode::Incremental);
    if let (Some(existing), Some(first)) = (incremental, prepared.first()) {
        let hashes: Vec<&[String]> = prepared.iter().map(|p| p.hashes.as_slice()).collect();
        let unchanged = unchanged_rows(existing, &sb.ids, &first.rows, &hashes, n).await?;
        for p in &mut prepared {
            retain_rows(p, |row| !unchanged[row]);
        }
    }
    Ok(prepared)
}
