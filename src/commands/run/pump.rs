//! The run's main loop: source batches in, prepared and embedded concurrently, rows out, a
//! signal or the service-failure rule taken between batches.

use super::*;
use super::{chunked::*, embed::*, media::*};

/// An overwrite that would leave a table that has rows empty is refused unless asked for: a
/// source that came up empty (a header-only CSV, a wrong glob) must not erase an index.
pub(super) async fn refuse_empty_overwrite(
    conn: &Database,
    table: &str,
    mode: WriteMode,
    checked: &Checked,
    counters: &Counters,
    opts: &RunOptions,
) -> Result<()> {
    if mode != WriteMode::Overwrite
        || counters.segments > 0
        || checked.existing.is_none()
        || opts.allow_empty
    {
        return Ok(());
    }
    let rows = sink_table::row_count(conn, table).await?;
    if rows > 0 {
        bail!(
            "refusing to replace table `{table}` ({rows} rows) with an empty one: this run read {} rows and wrote none, so nothing was committed\n  help: check the source (an empty file, a glob that matched nothing new); to empty the table on purpose, run again with --allow-empty",
            counters.read
        );
    }
    Ok(())
}
/// What one source batch became.
pub(super) struct BatchOutput {
    /// Rows read (incl. rows the reader could not decode).
    pub(super) read: u64,
    /// Rows to write.
    pub(super) batch: Option<RecordBatch>,
    pub(super) dead: Vec<DeadLetter>,
    /// Model inputs embedded for it (progress bookkeeping).
    pub(super) inputs: u64,
    /// Source rows written (fewer than the batch's rows when they became segments).
    pub(super) rows_written: u64,
    /// Rows left alone: unchanged since the table was written.
    pub(super) skipped: u64,
    /// A read failure may have hidden later rows (their ids are unknown).
    pub(super) hides_rows: bool,
    /// Table rows to delete once this batch's rows are committed (chunks a changed document no
    /// longer has).
    pub(super) deletes: Vec<String>,
}

impl BatchOutput {
    /// A batch's output before any embedding: its rows read, its unreadable rows dead-lettered.
    pub(super) fn new(sb: &SourceBatch, run_id: &str) -> Self {
        Self {
            read: sb.batch.num_rows() as u64 + sb.failures.len() as u64,
            hides_rows: sb.hidden_elsewhere || sb.failures.iter().any(|f| f.hides_later_rows),
            batch: None,
            dead: sb
                .failures
                .iter()
                .map(|f| DeadLetter {
                    run_id: run_id.to_string(),
                    id: f.id.clone(),
                    source: sb.file.to_string(),
                    row: f.row,
                    step: READ_STEP.into(),
                    kind: f.kind,
                    message: f.message.clone(),
                })
                .collect(),
            inputs: 0,
            rows_written: 0,
            skipped: 0,
            deletes: Vec::new(),
        }
    }
}

/// Source batches worked on at once: enough to keep every model's calls in flight full while
/// finished batches are written, few enough that memory stays small.
pub(super) fn batches_in_flight(settings: &Settings, models: &Models) -> usize {
    let rows = settings.source.batch_rows.max(1);
    let want = models
        .iter()
        .map(|m| m.info.concurrency * m.info.batch_size)
        .max()
        .unwrap_or(1);
    (2 * want).div_ceil(rows).saturating_add(1).clamp(2, 16)
}

/// What every batch of a run shares.
pub(super) struct RunContext<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) settings: &'a Settings,
    pub(super) checked: &'a Checked,
    pub(super) models: &'a Models,
    pub(super) media: Option<&'a AsyncRoute>,
    /// Batch inference routes (`invoke = "batch"`), by model index.
    pub(super) batch: &'a BTreeMap<usize, BatchRoute>,
    /// The table as the run found it: stored hashes (incremental) or ids (append).
    pub(super) existing: Option<&'a Existing>,
    /// `[chunk]`: rows are split into chunk rows before the steps.
    pub(super) chunks: Option<&'a Arc<ChunkStage>>,
    pub(super) mode: WriteMode,
    pub(super) progress: &'a Progress,
    pub(super) run_id: &'a str,
    /// The worker of a sharded run this process is.
    pub(super) shard: Option<&'a super::shard::ShardContext>,
}

/// Streams the source through the steps into the output until it ends, fails, or a signal
/// comes; a signal is taken between batches, so a commit in progress always finishes (and is
/// counted).
pub(super) async fn pump(
    ctx: &RunContext<'_>,
    output: &mut Output,
    failures: &mut FailureWriter,
    counters: &mut Counters,
) -> Result<(), Stop> {
    let mut signal = std::pin::pin!(stop_signal());
    if !ctx.batch.is_empty() {
        tokio::select! {
            biased;
            sig = signal.as_mut() => return Err(Stop::Signal(sig)),
            r = super::batch::submit_and_wait(ctx) => r?,
        }
    }
    // Ids seen so far are checked as each batch is taken, before it is embedded (in source
    // order, though batches are embedded several at once): a repeated id is never paid for.
    let seen = std::sync::Mutex::new(counters.seen.take());
    let result = pump_until(ctx, output, failures, counters, &seen, &mut signal).await;
    counters.seen = seen.into_inner().expect("seen lock");
    result
}

/// Rows of `sb` whose id came earlier in the source (marking this batch's ids as seen).
pub(super) fn repeated_ids(
    sb: &SourceBatch,
    seen: &std::sync::Mutex<Option<HashSet<String>>>,
) -> Vec<usize> {
    let mut seen = seen.lock().expect("seen lock");
    let Some(seen) = seen.as_mut() else {
        return Vec::new();
    };
    (0..sb.batch.num_rows())
        .filter(|&i| !seen.insert(sb.ids.value(i).to_string()))
        .collect()
}

/// Opens the run's source (this shard's part) and reads it on a blocking thread: its batches
/// arrive on the receiver (two ahead at most); the reader ends at the first error.
pub(super) fn read_source(
    ctx: &RunContext<'_>,
) -> Result<(
    tokio::sync::mpsc::Receiver<Result<SourceBatch>>,
    tokio::task::JoinHandle<()>,
)> {
    let checked = ctx.checked;
    // Incremental and append runs split by id: the duplicate-id check and cleanup stay
    // within one shard.
    let iter = sources::open_for_run(
        &ctx.settings.source,
        &checked.source,
        &checked.read_columns,
        checked.id_column.clone(),
        checked.stores.as_ref(),
        ctx.shard.map_or(crate::util::Shard::WHOLE, |s| s.shard),
        matches!(ctx.mode, WriteMode::Incremental | WriteMode::Append),
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
    Ok((rx, reader))
}

pub(super) async fn pump_until(
    ctx: &RunContext<'_>,
    output: &mut Output,
    failures: &mut FailureWriter,
    counters: &mut Counters,
    seen: &std::sync::Mutex<Option<HashSet<String>>>,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = Signal>>,
) -> Result<(), Stop> {
    let (rx, reader) = read_source(ctx)?;
    let batches = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let max_service_failures = ctx.settings.sink.max_service_failures;
    // Several batches in flight; results come back in source order.
    // `seq`: the batch's place in the source, which the batch routes' second pass goes by.
    let mut results = std::pin::pin!(batches
        .enumerate()
        .map(|(seq, item): (usize, Result<SourceBatch>)| {
            let repeated = item
                .as_ref()
                .map_or_else(|_| Vec::new(), |sb| repeated_ids(sb, seen));
            async move {
                let sb = item?;
                match (ctx.media, ctx.chunks) {
                    (Some(route), _) => embed_media_batch(ctx, route, &sb, &repeated).await,
                    (None, Some(stage)) => {
                        embed_chunked_batch(ctx, stage, &sb, &repeated, seq).await
                    }
                    (None, None) => embed_batch(ctx, &sb, &repeated, seq).await,
                }
            }
        })
        .buffered(batches_in_flight(ctx.settings, ctx.models)));
    loop {
        let next = tokio::select! {
            biased;
            sig = signal.as_mut() => return Err(Stop::Signal(sig)),
            next = results.next() => next,
        };
        let Some(out) = next else { break };
        let out = out?;
        tracing::trace!(rows = out.read, "batch embedded");
        counters.read += out.read;
        counters.skipped += out.skipped;
        if matches!(ctx.mode, WriteMode::Incremental | WriteMode::Append) {
            counters.ids_complete &= !out.hides_rows && out.dead.iter().all(|d| d.id.is_some());
            if ctx.mode == WriteMode::Incremental {
                let unreadable = out
                    .dead
                    .iter()
                    .filter(|d| d.step == READ_STEP && d.kind != FailureKind::DuplicateId);
                counters
                    .unreadable_ids
                    .extend(unreadable.filter_map(|d| d.id.clone()));
            }
        }
        for d in &out.dead {
            if d.kind.is_service_level() {
                *counters
                    .service_failures
                    .entry(d.kind.as_str().to_string())
                    .or_default() += 1;
                counters
                    .first_service_error
                    .get_or_insert_with(|| crate::sink::failures::cap_message(&d.message));
            }
            failures.write(d)?;
        }
        let service_failed: u64 = counters.service_failures.values().sum();
        if service_failed > max_service_failures {
            return Err(Stop::Failed(anyhow!(
                "{}",
                service_failure_message(counters, ctx.mode, max_service_failures)
            )));
        }
        counters.written += out.rows_written;
        // Stale chunks are queued first: the flush that commits this batch's rows deletes
        // them right after.
        if !out.deletes.is_empty() {
            output.delete_after(out.deletes);
        }
        if let Some(batch) = out.batch {
            counters.segments += batch.num_rows() as u64;
            output.send(batch).await?;
            tracing::trace!("batch sent to the writer");
        }
        ctx.progress.batch_done(out.read, out.inputs);
        if let Some(shard) = ctx.shard {
            shard.tick(counters, ctx.models, ctx.batch).await;
        }
    }
    reader.await.context("source reader panicked")?;
    Ok(())
}

/// Why a run stopped for failures of the service, and what to do.
pub(super) fn service_failure_message(counters: &Counters, mode: WriteMode, max: u64) -> String {
    let kinds: Vec<String> = counters
        .service_failures
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    let kept = if mode == WriteMode::Incremental {
        "chunks committed before stay, and the next run embeds the rest"
    } else {
        "nothing was committed; the table is as it was"
    };
    format!(
        "stopped: {} rows failed because of the service, not their data ({}), more than max_service_failures = {max}; {kept}\n  first error: {}\n  help: check the endpoint, region, network and quotas, then run again; to commit despite such failures, raise `max_service_failures` in [sink]",
        counters.service_failures.values().sum::<u64>(),
        kinds.join(", "),
        counters.first_service_error.as_deref().unwrap_or("?"),
    )
}
