//! `embedpipe run`: source → per-step inputs → model calls → LanceDB, with dead letters.
//!
//! Stages are joined by bounded channels: a blocking reader thread produces batches, the async
//! task prepares inputs (on rayon) and awaits model calls, and the sink task streams rows into
//! one LanceDB commit.
//!
//! The failure rule: a row whose *input* is bad (empty, too long, not an image, refused by the
//! model's validation) is dead-lettered and the run goes on. A row that failed because of the
//! *service* (network, timeouts, 5xx and throttling past their retries, unknown operation) says
//! nothing about the data: once more than `max_service_failures` rows failed so, the run stops
//! without committing (an outage must never empty a table).

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
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::RecordBatch;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
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
    /// Let an overwrite replace a non-empty table with an empty one (`--allow-empty`).
    pub allow_empty: bool,
}

/// The signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what containers and schedulers send).
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Where a run stopped.
#[derive(Debug)]
pub enum RunError {
    /// Before any model call: invalid pipeline, input, sink or missing model. Nothing written.
    Setup(anyhow::Error),
    /// During the run; the summary says what it did (calls, cost, rows committed).
    Failed(anyhow::Error, Box<Summary>),
    /// Interrupted by a signal; the summary says what it did.
    Interrupted(Signal, Box<Summary>),
}

impl RunError {
    /// What the run did before it stopped (none when it stopped during setup).
    pub fn summary(&self) -> Option<&Summary> {
        match self {
            RunError::Setup(_) => None,
            RunError::Failed(_, s) | RunError::Interrupted(_, s) => Some(s),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Setup(e) | RunError::Failed(e, _) => write!(f, "{e:#}"),
            RunError::Interrupted(sig, _) => write!(f, "interrupted ({})", sig.name()),
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

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Interrupt,
                _ = term.recv() => Signal::Terminate,
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    Signal::Interrupt
}

/// Failures that say the service (or the way to it) failed, not the row's input: the retryable
/// classes past their retries, what stops InvokeModel at once but async jobs only per row
/// (access, credentials, unknown model), and the media route's own staging in S3 and ledger.
fn is_service_failure(kind: &str) -> bool {
    use crate::providers::bedrock::ErrorClass;
    ErrorClass::SERVICE_LEVEL
        .iter()
        .chain(&[
            ErrorClass::AccessDenied,
            ErrorClass::Credentials,
            ErrorClass::NotFound,
        ])
        .any(|c| c.as_str() == kind)
        || matches!(kind, "staging_failed" | "ledger")
}

struct Counters {
    read: u64,
    written: u64,
    /// Table rows of media pipelines (one per segment).
    segments: u64,
    /// Rows unchanged since the table was written (incremental).
    skipped: u64,
    /// Ids read so far (incremental and append: duplicates, cleanup).
    seen: Option<HashSet<String>>,
    /// Every row read had an id (else cleanup would not know what to keep).
    ids_complete: bool,
    /// Ids of rows that could not be read (incremental cleanup keeps their table rows: they
    /// are still in the source).
    unreadable_ids: HashSet<String>,
    /// Rows dead-lettered because of the service, by kind, and the first such message.
    service_failures: BTreeMap<String, u64>,
    first_service_error: Option<String>,
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
    let result = run_inner(pipeline.clone(), opts, run_id).await;
    let pipeline_hash = hex::encode(&blake3::hash(pipeline.text.as_bytes()).as_bytes()[..16]);
    let summary = match &result {
        Ok(s) => Some(s),
        Err(e) => e.summary(),
    };
    let record =
        summary.map(|s| RunRecord::from_summary(s, pipeline_hash, started_micros, now_micros()));
    if let (Some(r), Ok(target)) = (record, lance_sink::target(&pipeline)) {
        if let Err(e) = runlog::append(&target, &r).await {
            tracing::warn!("the run could not be recorded in the run log: {e:#}");
        }
    }
    result
}

/// Everything a run set up before its first model call.
struct Setup {
    checked: Checked,
    mode: WriteMode,
    models: Models,
    failures_path: std::path::PathBuf,
    conn: lance_sink::Connection,
}

async fn set_up(pipeline: &Arc<Pipeline>, opts: &RunOptions) -> Result<Setup> {
    let checked = validate::check_run(pipeline, opts.reindex).await?;
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
            .map_err(|e| anyhow!("model loader panicked: {e}"))??
    };
    let failures_path = lance_sink::failures_path(pipeline, &checked.target);
    let conn = lance_sink::connect(&checked.target).await?;
    Ok(Setup {
        checked,
        mode,
        models,
        failures_path,
        conn,
    })
}

async fn run_inner(
    pipeline: Arc<Pipeline>,
    opts: RunOptions,
    run_id: String,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let Setup {
        checked,
        mode,
        models,
        failures_path,
        conn,
    } = set_up(&pipeline, &opts).await.map_err(RunError::Setup)?;
    let mut failures = FailureWriter::start(&failures_path).map_err(RunError::Setup)?;
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
    let table_name = &checked.target.table;
    // Append adds new ids only: ids already in the table are looked up before any call.
    let (mut output, existing) = match mode {
        WriteMode::Incremental => {
            let upserter = Upserter::new(
                conn.clone(),
                table_name,
                checked.layout.schema.clone(),
                pipeline.commit_rows(),
            )
            .await
            .map_err(RunError::Setup)?;
            let existing = match &checked.existing {
                Some(_) => Some(
                    Existing::open(&conn, table_name, &pipeline)
                        .await
                        .map_err(RunError::Setup)?,
                ),
                None => None,
            };
            (Output::Upsert(upserter), existing)
        }
        _ => {
            let writer = Writer::start(
                conn.clone(),
                &checked.target,
                mode,
                checked.layout.schema.clone(),
                checked.existing.is_some(),
            )
            .await
            .map_err(RunError::Setup)?;
            let existing = match (&checked.existing, mode) {
                (Some(_), WriteMode::Append) => Some(
                    Existing::open_ids(&conn, table_name)
                        .await
                        .map_err(RunError::Setup)?,
                ),
                _ => None,
            };
            (Output::Stream(writer), existing)
        }
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
        // `--reindex` of an incremental table rewrites it: its ids must stay unique too.
        seen: (matches!(mode, WriteMode::Incremental | WriteMode::Append)
            || pipeline.write_mode() == WriteMode::Incremental)
            .then(HashSet::new),
        ids_complete: true,
        unreadable_ids: HashSet::new(),
        service_failures: BTreeMap::new(),
        first_service_error: None,
    };
    let ctx = RunContext {
        pipeline: &pipeline,
        checked: &checked,
        models: &models,
        media: media.as_ref(),
        existing: existing.as_ref(),
        mode,
        progress: &progress,
        run_id: &run_id,
    };
    let outcome = tokio::select! {
        r = pump(&ctx, &mut output, &mut failures, &mut counters) => r,
        () = model_lines => unreachable!("the progress ticker never ends"),
    };
    progress.finish();

    // Commit what the run made, unless it stopped.
    let mut deleted = 0;
    let mut commits = 0;
    let mut rows_committed = 0;
    let committed: Result<(), Stop> = match (outcome, output) {
        (Ok(()), Output::Stream(writer)) => {
            match refuse_empty_overwrite(&conn, table_name, mode, &checked, &counters, &opts).await
            {
                Err(e) => {
                    let _ = writer.abort().await;
                    Err(Stop::Failed(e))
                }
                Ok(()) => match writer.finish().await {
                    Ok(()) => {
                        rows_committed = counters.segments;
                        Ok(())
                    }
                    Err(e) => Err(Stop::Failed(e)),
                },
            }
        }
        (Ok(()), Output::Upsert(mut upserter)) => {
            let flushed = upserter.flush().await;
            commits = upserter.commits;
            rows_committed = upserter.rows_committed;
            match flushed {
                Err(e) => Err(Stop::Failed(e)),
                Ok(()) => {
                    // Rows gone from the source, once all of it was read.
                    match (pipeline.cleanup(), &counters.seen) {
                        (Cleanup::Full, Some(_)) if !counters.ids_complete => {
                            tracing::warn!("cleanup skipped: some rows could not be read, so their ids are unknown and their table rows might be deleted by mistake");
                            Ok(())
                        }
                        (Cleanup::Full, Some(seen))
                            if checked.existing.is_some() || commits > 0 =>
                        {
                            let unreadable = &counters.unreadable_ids;
                            let keep = |id: &str| seen.contains(id) || unreadable.contains(id);
                            match delete_missing(&conn, table_name, keep).await {
                                Ok(n) => {
                                    deleted = n;
                                    Ok(())
                                }
                                Err(e) => Err(Stop::Failed(e)),
                            }
                        }
                        _ => Ok(()),
                    }
                }
            }
        }
        (Err(e), Output::Stream(writer)) => Err(match (writer.abort().await, e) {
            (Some(write_error), Stop::Failed(_)) => Stop::Failed(write_error),
            (_, e) => e,
        }),
        (Err(e), Output::Upsert(upserter)) => {
            // Chunks committed so far stay: a new run skips them.
            commits = upserter.commits;
            rows_committed = upserter.rows_committed;
            Err(e)
        }
    };
    // Index maintenance; its failure (or a signal while it runs) costs speed, not data: the
    // rows are committed, and the next run maintains the table.
    let maintenance = match &committed {
        Ok(()) => tokio::select! {
            m = crate::sink::maintain::maintain(&pipeline, &checked.target) => match m {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("table maintenance failed (the rows are committed): {e:#}");
                    None
                }
            },
            sig = stop_signal() => {
                tracing::warn!("{}: table maintenance stopped (the rows are committed; the next run maintains the table)", sig.name());
                None
            }
        },
        Err(_) => None,
    };
    let failed = failures.count();
    let by_kind = failures.by_kind().clone();
    let failures_file = match &committed {
        Ok(()) => {
            if let Err(e) = failures.commit() {
                tracing::warn!("{e:#}");
            }
            (failed > 0).then(|| failures_path.display().to_string())
        }
        // An incremental run that committed chunks before it stopped changed the table: its
        // dead letters so far describe that version.
        Err(_) if rows_committed > 0 => {
            if let Err(e) = failures.commit() {
                tracing::warn!("{e:#}");
            }
            (failed > 0).then(|| failures_path.display().to_string())
        }
        Err(_) => {
            failures.discard();
            None
        }
    };
    let wall = started.elapsed();
    let (status, error) = match &committed {
        Ok(()) if failed > 0 => ("rows_failed", None),
        Ok(()) => ("ok", None),
        Err(Stop::Failed(e)) => (
            "failed",
            Some(crate::sink::failures::scrub_internal_paths(&format!(
                "{e:#}"
            ))),
        ),
        Err(Stop::Signal(sig)) => ("interrupted", Some(format!("interrupted ({})", sig.name()))),
    };
    let summary = Summary {
        run_id: run_id.clone(),
        status: status.into(),
        error,
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
        rows_committed,
        failures_by_kind: by_kind,
        failures_file,
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
    };
    match committed {
        Ok(()) => Ok(summary),
        Err(Stop::Failed(e)) => Err(RunError::Failed(e, Box::new(summary))),
        Err(Stop::Signal(sig)) => Err(RunError::Interrupted(sig, Box::new(summary))),
    }
}

/// Why the pump stopped early.
enum Stop {
    Failed(anyhow::Error),
    Signal(Signal),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

/// An overwrite that would leave a table that has rows empty is refused unless asked for: a
/// source that came up empty (a header-only CSV, a wrong glob) must not erase an index.
async fn refuse_empty_overwrite(
    conn: &lance_sink::Connection,
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
    let rows = lance_sink::row_count(conn, table).await?;
    if rows > 0 {
        bail!(
            "refusing to replace table `{table}` ({rows} rows) with an empty one: this run read {} rows and wrote none, so nothing was committed\n  help: check the source (an empty file, a glob that matched nothing new); to empty the table on purpose, run again with --allow-empty",
            counters.read
        );
    }
    Ok(())
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
    /// A read failure may have hidden later rows (their ids are unknown).
    hides_rows: bool,
}

impl BatchOutput {
    /// A batch's output before any embedding: its rows read, its unreadable rows dead-lettered.
    fn new(sb: &SourceBatch, run_id: &str) -> Self {
        Self {
            read: sb.batch.num_rows() as u64 + sb.failures.len() as u64,
            hides_rows: sb.failures.iter().any(|f| f.hides_later_rows),
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

/// What every batch of a run shares.
struct RunContext<'a> {
    pipeline: &'a Arc<Pipeline>,
    checked: &'a Checked,
    models: &'a Models,
    media: Option<&'a AsyncRoute>,
    /// The table as the run found it: stored hashes (incremental) or ids (append).
    existing: Option<&'a Existing>,
    mode: WriteMode,
    progress: &'a Progress,
    run_id: &'a str,
}

/// Streams the source through the steps into the output until it ends, fails, or a signal
/// comes; a signal is taken between batches, so a commit in progress always finishes (and is
/// counted).
async fn pump(
    ctx: &RunContext<'_>,
    output: &mut Output,
    failures: &mut FailureWriter,
    counters: &mut Counters,
) -> Result<(), Stop> {
    let mut signal = std::pin::pin!(stop_signal());
    // Ids seen so far are checked as each batch is taken, before it is embedded (in source
    // order, though batches are embedded several at once): a repeated id is never paid for.
    let seen = std::sync::Mutex::new(counters.seen.take());
    let result = pump_until(ctx, output, failures, counters, &seen, &mut signal).await;
    counters.seen = seen.into_inner().expect("seen lock");
    result
}

/// Rows of `sb` whose id came earlier in the source (marking this batch's ids as seen).
fn repeated_ids(sb: &SourceBatch, seen: &std::sync::Mutex<Option<HashSet<String>>>) -> Vec<usize> {
    let mut seen = seen.lock().expect("seen lock");
    let Some(seen) = seen.as_mut() else {
        return Vec::new();
    };
    (0..sb.batch.num_rows())
        .filter(|&i| !seen.insert(sb.ids.value(i).to_string()))
        .collect()
}

async fn pump_until(
    ctx: &RunContext<'_>,
    output: &mut Output,
    failures: &mut FailureWriter,
    counters: &mut Counters,
    seen: &std::sync::Mutex<Option<HashSet<String>>>,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = Signal>>,
) -> Result<(), Stop> {
    let (pipeline, checked) = (ctx.pipeline, ctx.checked);
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
    let max_service_failures = pipeline.max_service_failures();
    // Several batches in flight; results come back in source order.
    let mut results = std::pin::pin!(batches
        .map(|item: Result<SourceBatch>| {
            let repeated = item
                .as_ref()
                .map_or_else(|_| Vec::new(), |sb| repeated_ids(sb, seen));
            async move {
                let sb = item?;
                match ctx.media {
                    Some(route) => embed_media_batch(ctx, route, &sb, &repeated).await,
                    None => embed_batch(ctx, &sb, &repeated).await,
                }
            }
        })
        .buffered(batches_in_flight(pipeline, ctx.models)));
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
                    .filter(|d| d.step == "read" && d.kind != DUPLICATE_ID);
                counters
                    .unreadable_ids
                    .extend(unreadable.filter_map(|d| d.id.clone()));
            }
        }
        for d in &out.dead {
            if is_service_failure(&d.kind) {
                *counters.service_failures.entry(d.kind.clone()).or_default() += 1;
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
        if let Some(batch) = out.batch {
            counters.segments += batch.num_rows() as u64;
            output.send(batch).await?;
            tracing::trace!("batch sent to the writer");
        }
        ctx.progress.batch_done(out.read, out.inputs);
    }
    reader.await.context("source reader panicked")?;
    Ok(())
}

/// Why a run stopped for failures of the service, and what to do.
fn service_failure_message(counters: &Counters, mode: WriteMode, max: u64) -> String {
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

/// Embeds one source batch through every step: the rows to write and the dead letters.
/// `repeated`: rows whose id came earlier in the source (append, incremental), dead-lettered
/// here, before any call.
async fn embed_batch(
    ctx: &RunContext<'_>,
    sb: &SourceBatch,
    repeated: &[usize],
) -> Result<BatchOutput> {
    let (pipeline, checked, models, run_id, progress) = (
        ctx.pipeline,
        ctx.checked,
        ctx.models,
        ctx.run_id,
        ctx.progress,
    );
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
    for &row in repeated {
        failed[row] = Some(repeated_id(sb, row));
    }
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
    // Append: ids already in the table are refused before any call (append adds new rows; an
    // update by id is what incremental mode is for).
    if let (WriteMode::Append, Some(existing)) = (ctx.mode, ctx.existing) {
        let wanted: Vec<&str> = (0..n)
            .filter(|&r| failed[r].is_none())
            .map(|r| sb.ids.value(r))
            .collect();
        let stored = existing.hashes(&wanted).await?;
        for (row, f) in failed.iter_mut().enumerate() {
            let id = sb.ids.value(row);
            if f.is_none() && stored.contains_key(id) {
                *f = Some((
                    "read".into(),
                    DUPLICATE_ID.into(),
                    format!("id `{id}` is already in table `{}`; append adds new ids only (mode = \"incremental\" updates rows by id)", checked.target.table),
                ));
            }
        }
        for p in &mut prepared {
            retain_rows(p, |row| failed[row].is_none());
        }
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
    let mut prepared = cpu(move || plan::prepare(&input, &fingerprint, &batch)).await??;
    for &row in repeated {
        let (step, kind, message) = repeated_id(sb, row);
        out.dead
            .push(dead_letter(sb, run_id, Some(row), &step, &kind, message));
    }
    if !repeated.is_empty() {
        prepared
            .failures
            .retain(|(row, _, _)| !repeated.contains(row));
        retain_rows(&mut prepared, |row| !repeated.contains(&row));
    }
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

/// The dead-letter kind of a row whose id the table or the source already has.
const DUPLICATE_ID: &str = "duplicate_id";

/// Incremental runs upsert by id and appends add new ids: a row whose id came earlier in the
/// source is dead-lettered (the first one wins) as `(step, kind, message)`.
fn repeated_id(sb: &SourceBatch, row: usize) -> (String, String, String) {
    (
        "read".into(),
        DUPLICATE_ID.into(),
        format!(
            "id `{}` appeared earlier in the source; the first row with it is kept",
            sb.ids.value(row)
        ),
    )
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
