//! The end of a run: commit what it made (or not), maintain the table, settle the dead
//! letters and sum up.

use super::pump::*;
use super::*;
use crate::util::Location;

/// The async route (video/audio, with its job ledger next to the table), where rows go, and
/// the ids the table has (append and incremental).
pub(super) async fn open_outputs(
    pipeline: &Pipeline,
    settings: &Settings,
    checked: &Checked,
    models: &Models,
    conn: &Database,
    mode: WriteMode,
    shard: Option<&super::shard::ShardContext>,
) -> Result<(Option<AsyncRoute>, Output, Option<Existing>)> {
    // Video/audio: the async route, with its job ledger next to the table.
    let media = match pipeline
        .steps
        .iter()
        .find(|s| matches!(s.input, crate::config::StepInput::Media(..)))
    {
        Some(step) => {
            let ledger = crate::jobs::ledger::Ledger::open(
                &checked.target.jobs_location(),
                checked.stores.as_ref(),
            )
            .await?;
            let route =
                AsyncRoute::connect(models.get(step.model_index).info.clone(), Arc::new(ledger))
                    .await?;
            Some(route)
        }
        None => None,
    };
    let table_name = &checked.target.table;
    // Append adds new ids only: ids already in the table are looked up before any call.
    let (output, existing) = match (mode, shard) {
        (WriteMode::Incremental, Some(s)) => {
            let staging = s.stage.staged_rows_target(s.shard.index);
            let stage_conn = sink_table::connect(&staging).await?;
            // Each run of the shard replaces its staged rows.
            let writer = Writer::start(
                stage_conn,
                &staging,
                WriteMode::Overwrite,
                checked.layout.schema.clone(),
                false,
            )
            .await?;
            let existing = match &checked.existing {
                Some(_) => Some(Existing::open(conn, table_name, &settings.sink.vectors).await?),
                None => None,
            };
            let output = Output::StagedRows {
                writer,
                deletes: Vec::new(),
            };
            (output, existing)
        }
        (_, Some(_)) => {
            let writer = StagedWriter::start(&checked.target, mode, checked.layout.schema.clone());
            let existing = match (&checked.existing, mode) {
                (Some(_), WriteMode::Append) => Some(Existing::open_ids(conn, table_name).await?),
                _ => None,
            };
            (Output::Staged(writer), existing)
        }
        (WriteMode::Incremental, None) => {
            let upserter = Upserter::new(
                conn.clone(),
                table_name,
                checked.layout.schema.clone(),
                settings.sink.commit_rows,
            )
            .await?;
            let existing = match &checked.existing {
                Some(_) => Some(Existing::open(conn, table_name, &settings.sink.vectors).await?),
                None => None,
            };
            (Output::Upsert(upserter), existing)
        }
        (_, None) => {
            let writer = Writer::start(
                conn.clone(),
                &checked.target,
                mode,
                checked.layout.schema.clone(),
                checked.existing.is_some(),
            )
            .await?;
            let existing = match (&checked.existing, mode) {
                (Some(_), WriteMode::Append) => Some(Existing::open_ids(conn, table_name).await?),
                _ => None,
            };
            (Output::Stream(writer), existing)
        }
    };
    Ok((media, output, existing))
}

/// The batch inference routes of the models with `invoke = "batch"`, with the job ledger next
/// to the table.
pub(super) async fn open_batch_routes(
    pipeline: &Pipeline,
    checked: &Checked,
    models: &Models,
    shard: Option<&super::shard::ShardContext>,
) -> Result<BTreeMap<usize, BatchRoute>> {
    let mut routes = BTreeMap::new();
    let mut ledger = None;
    for step in &pipeline.steps {
        let info = &models.get(step.model_index).info;
        if info.batch.is_none() || routes.contains_key(&step.model_index) {
            continue;
        }
        if ledger.is_none() {
            let l = crate::jobs::ledger::Ledger::open(
                &checked.target.jobs_location(),
                checked.stores.as_ref(),
            )
            .await?;
            ledger = Some(Arc::new(l));
        }
        let l = ledger.clone().expect("opened");
        routes.insert(
            step.model_index,
            BatchRoute::connect(info.clone(), l, shard.map(|s| s.shard.to_string())).await?,
        );
    }
    Ok(routes)
}

/// What committing the run's output did.
pub(super) struct Committed {
    pub(super) result: Result<(), Stop>,
    pub(super) deleted: u64,
    /// Chunks changed documents no longer have (chunked incremental runs).
    pub(super) stale_deleted: u64,
    pub(super) commits: u64,
    pub(super) rows_committed: u64,
    /// A shard's staged part, for the commit.
    pub(super) staged: Option<super::shard::Staged>,
}

/// Commits what the run made, unless it stopped; an incremental run deletes the rows gone from
/// the source once all of it was read.
#[allow(clippy::too_many_arguments)]
pub(super) async fn commit(
    outcome: Result<(), Stop>,
    output: Output,
    conn: &Database,
    mode: WriteMode,
    checked: &Checked,
    counters: &Counters,
    opts: &RunOptions,
    settings: &Settings,
    shard: Option<crate::util::Shard>,
) -> Committed {
    let table_name = &checked.target.table;
    let mut staged = None;
    let mut deleted = 0;
    let mut stale_deleted = 0;
    let mut commits = 0;
    let mut rows_committed = 0;
    let result: Result<(), Stop> = match (outcome, output) {
        (Ok(()), Output::Staged(writer)) => match writer.finish(&checked.layout.schema).await {
            Ok(fragments) => {
                staged = Some(super::shard::Staged::Fragments(fragments));
                Ok(())
            }
            Err(e) => Err(Stop::Failed(e)),
        },
        (
            Ok(()),
            Output::StagedRows {
                writer,
                mut deletes,
            },
        ) => {
            let shard = shard.expect("staged rows belong to a shard");
            let gone = match writer.finish().await {
                Err(e) => Err(e),
                Ok(()) => shard_gone_ids(conn, checked, settings, counters, shard).await,
            };
            match gone {
                Ok(gone) => {
                    deleted = gone.len() as u64;
                    deletes.extend(gone);
                    staged = Some(super::shard::Staged::Rows {
                        table: format!("shard-{}", shard.index),
                        rows: counters.segments,
                        deletes,
                    });
                    Ok(())
                }
                Err(e) => Err(Stop::Failed(e)),
            }
        }
        (Err(e), Output::Staged(writer)) => {
            writer.abort().await;
            Err(e)
        }
        (Err(e), Output::StagedRows { writer, .. }) => Err(match (writer.abort().await, e) {
            (Some(write_error), Stop::Failed(_)) => Stop::Failed(write_error),
            (_, e) => e,
        }),
        (Ok(()), Output::Stream(writer)) => {
            match refuse_empty_overwrite(conn, table_name, mode, checked, counters, opts).await {
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
            stale_deleted = upserter.rows_deleted;
            match flushed {
                Err(e) => Err(Stop::Failed(e)),
                Ok(()) => {
                    // Rows gone from the source, once all of it was read.
                    match (settings.sink.cleanup, &counters.seen) {
                        (Cleanup::Full, Some(_)) if !counters.ids_complete => {
                            tracing::warn!("cleanup skipped: some rows could not be read, so their ids are unknown and their table rows might be deleted by mistake");
                            Ok(())
                        }
                        (Cleanup::Full, Some(seen))
                            if checked.existing.is_some() || commits > 0 =>
                        {
                            let unreadable = &counters.unreadable_ids;
                            // A chunk row stays while its document is in the source.
                            let chunked = settings.chunk.is_some();
                            let keep = |id: &str| {
                                let id = match chunked {
                                    true => crate::util::columns::chunk_doc_id(id),
                                    false => id,
                                };
                                seen.contains(id) || unreadable.contains(id)
                            };
                            match delete_missing(conn, table_name, keep).await {
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
            stale_deleted = upserter.rows_deleted;
            Err(e)
        }
    };
    Committed {
        result,
        deleted,
        stale_deleted,
        commits,
        rows_committed,
        staged,
    }
}

/// `cleanup = "full"` in a shard of an incremental run: the table rows of this shard's ids
/// (by the same hash that split the source) that its part of the source no longer has.
async fn shard_gone_ids(
    conn: &Database,
    checked: &Checked,
    settings: &Settings,
    counters: &Counters,
    shard: crate::util::Shard,
) -> Result<Vec<String>> {
    let (Cleanup::Full, Some(seen), Some(_)) =
        (settings.sink.cleanup, &counters.seen, &checked.existing)
    else {
        return Ok(Vec::new());
    };
    if !counters.ids_complete {
        tracing::warn!("cleanup skipped: some rows could not be read, so their ids are unknown and their table rows might be deleted by mistake");
        return Ok(Vec::new());
    }
    let chunked = settings.chunk.is_some();
    let unreadable = &counters.unreadable_ids;
    let keep = |id: &str| {
        let id = match chunked {
            true => crate::util::columns::chunk_doc_id(id),
            false => id,
        };
        !shard.owns(id) || seen.contains(id) || unreadable.contains(id)
    };
    crate::sink::incremental::missing_ids(conn, &checked.target.table, keep).await
}

/// The dead letters are kept with the table version they describe: committed with the rows,
/// or discarded with a run that committed nothing.
pub(super) async fn settle_failures(
    failures: FailureWriter,
    committed: &Result<(), Stop>,
    rows_committed: u64,
    failures_path: &Location,
) -> Option<String> {
    let failed = failures.count();
    // An incremental run that committed chunks before it stopped changed the table: its dead
    // letters so far describe that version.
    if committed.is_ok() || rows_committed > 0 {
        if let Err(e) = failures.commit().await {
            tracing::warn!("{e:#}");
        }
        (failed > 0).then(|| failures_path.to_string())
    } else {
        failures.discard().await;
        None
    }
}

/// Per-model counters; async jobs bill media seconds (and long text) to their model.
pub(super) fn model_stats(
    models: &Models,
    media: Option<&AsyncRoute>,
) -> Vec<crate::dispatch::ModelStats> {
    models
        .iter()
        .map(|m| {
            let mut s = m.stats();
            // Async jobs bill media seconds to their model.
            if let Some(route) = media.as_ref().filter(|r| r.model_name() == m.info.name) {
                let j = route.stats();
                let tokens = j.text_chars.div_ceil(4);
                let billed = embedpipe_wire::Usage {
                    input_tokens: tokens,
                    tokens_estimated: tokens > 0,
                    video_seconds: j.video_seconds,
                    audio_seconds: j.audio_seconds,
                    ..Default::default()
                };
                s.usage.add(&billed);
                s.inputs += j.completed;
                s.cost_usd += billed.cost(&m.info.prices);
            }
            s
        })
        .collect()
}

/// Runs the pump with the progress display (and, for remote models, a line per model).
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump_with_progress(
    pipeline: &Pipeline,
    settings: &Settings,
    checked: &Checked,
    models: &Models,
    media: Option<&AsyncRoute>,
    batch: &BTreeMap<usize, BatchRoute>,
    existing: Option<&Existing>,
    chunks: Option<&Arc<ChunkStage>>,
    mode: WriteMode,
    opts: &RunOptions,
    run_id: &str,
    shard: Option<&super::shard::ShardContext>,
    output: &mut Output,
    failures: &mut FailureWriter,
) -> (Result<(), Stop>, Counters) {
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
            || settings.sink.mode == WriteMode::Incremental)
            .then(HashSet::new),
        ids_complete: true,
        unreadable_ids: HashSet::new(),
        service_failures: BTreeMap::new(),
        first_service_error: None,
    };
    let ctx = RunContext {
        pipeline,
        settings,
        checked,
        models,
        media,
        batch,
        existing,
        chunks,
        mode,
        progress: &progress,
        run_id,
        shard,
    };
    let outcome = tokio::select! {
        r = pump(&ctx, output, failures, &mut counters) => r,
        () = model_lines => unreachable!("the progress ticker never ends"),
    };
    progress.finish();
    (outcome, counters)
}

/// Index maintenance after a commit; its failure (or a signal while it runs) costs speed, not
/// data: the rows are committed, and the next run maintains the table.
pub(super) async fn maintain_after_commit(
    settings: &Settings,
    committed: &Result<(), Stop>,
) -> Option<crate::sink::maintain::Maintenance> {
    match committed {
        Ok(()) => tokio::select! {
            m = crate::sink::maintain::maintain(&settings.sink) => match m {
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
    }
}
