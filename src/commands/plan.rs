//! Layer 8, commands: `plan` — what a run would do, without calling any model: rows to embed,
//! skip and delete, and per model the inputs, estimated tokens, images, calls, time at the
//! configured quotas and cost. Reads the source and (incremental runs) the table's content
//! hashes.

use crate::config::{Cleanup, Pipeline, StepInput, WriteMode};
use crate::prepare::chunked::ChunkStage;
use crate::prepare::image_check::check_image;
use crate::prepare::{Inputs, Prepared};
use crate::resolve::{ModelSettings, Overrides, SinkSettings};
use crate::sink::incremental::{missing_ids, unchanged_rows, Existing};
use crate::sink::table as sink_table;
use crate::sources::{self, SourceBatch};
use anyhow::{Context, Result};
use embedpipe_wire::{Image, ImageFormat, Input, Parsed};
use serde::Serialize;
use std::collections::HashSet;

/// The plan of one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Estimate {
    pub pipeline: String,
    pub table: String,
    pub mode: String,
    pub rows_read: u64,
    /// Rows that would be embedded and written.
    pub rows_to_embed: u64,
    /// Rows the table holds unchanged (incremental).
    pub rows_to_skip: u64,
    /// Rows that would be dead-lettered before any call (unreadable, empty or over-long input).
    pub rows_rejected: u64,
    /// Table rows gone from the source that `cleanup = "full"` would delete.
    pub rows_to_delete: u64,
    /// `plan --shards N`: the source rows each shard would read (unreadable ones included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_shard: Option<Vec<u64>>,
    /// Chunked pipelines (`[chunk]`): what becomes of the chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkEstimate>,
    pub models: Vec<ModelEstimate>,
    pub cost_usd: f64,
}

/// The chunks of a chunked pipeline's documents.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ChunkEstimate {
    /// Chunks the documents split into.
    pub chunks: u64,
    /// Chunks whose text is new: model calls.
    pub to_embed: u64,
    /// Chunks whose text the table holds for the same document elsewhere: written again with
    /// their stored vectors, no call.
    pub to_reuse: u64,
    /// Chunks the table holds as they are.
    pub unchanged: u64,
    /// Stored chunks changed documents no longer have.
    pub to_delete: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ModelEstimate {
    pub model: String,
    pub model_id: String,
    pub inputs: u64,
    /// Client-side estimate (≈ 4 characters per token).
    pub input_tokens: u64,
    pub images: u64,
    /// Marengo bills text inputs per query.
    pub queries: u64,
    /// Video/audio files (async jobs).
    pub media_files: u64,
    /// InvokeModel calls: exact for one-input-per-call models, a lower bound for batching ones.
    pub calls: u64,
    pub calls_exact: bool,
    /// Minutes the calls take at the configured requests/tokens per minute, if any are set.
    pub minutes_at_quota: Option<f64>,
    /// At the batch price for a batch model (`invoke = "batch"`), else on-demand.
    pub cost_usd: f64,
    /// A batch model's jobs, and what the same inputs cost on-demand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchEstimate>,
}

/// How a batch model's inputs split into jobs (`records_per_job`; a rest below
/// `min_records_per_job` goes on-demand).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct BatchEstimate {
    pub jobs: u64,
    pub records_in_jobs: u64,
    pub records_on_demand: u64,
    pub on_demand_cost_usd: f64,
}

/// Plans a run of `pipeline` (`reindex`: every row is embedded again).
pub async fn estimate(
    pipeline: &Pipeline,
    reindex: bool,
    overrides: &Overrides,
) -> Result<Estimate> {
    estimate_sharded(pipeline, reindex, overrides, None).await
}

/// [`estimate`], also counting the rows each of `shards` workers would read.
pub async fn estimate_sharded(
    pipeline: &Pipeline,
    reindex: bool,
    overrides: &Overrides,
    shards: Option<u32>,
) -> Result<Estimate> {
    let checked = crate::commands::validate::check_run(pipeline, reindex, overrides).await?;
    let sink = checked.settings.sink.clone();
    let infos = &checked.models;
    let incremental = sink.mode == WriteMode::Incremental && !reindex;
    let conn = match &checked.existing {
        Some(_) => Some(sink_table::connect(&checked.target).await?),
        None => None,
    };
    let existing = match (&conn, incremental) {
        (Some(conn), true) => {
            Some(Existing::open(conn, &checked.target.table, &sink.vectors).await?)
        }
        _ => None,
    };
    let mut est = empty_estimate(pipeline, &checked.target.table, &sink, infos, reindex);
    let stage = chunk_stage(&checked)?;
    // Incremental and append runs split by id (shards never touch the same rows, and the
    // duplicate-id check stays within one); the others by files.
    let by_id = incremental || (!reindex && sink.mode == WriteMode::Append);
    let shard_map = match shards {
        Some(n) => Some(sources::ShardMap::new(&checked.source, n, by_id)?),
        None => None,
    };
    let mut per_shard = vec![0u64; shards.unwrap_or(0) as usize];
    if stage.is_some() {
        est.chunks = Some(ChunkEstimate::default());
    }
    let cleanup = incremental && sink.cleanup == Cleanup::Full;
    let mut seen: HashSet<String> = HashSet::new();
    let iter = sources::open(
        &checked.settings.source,
        &checked.source,
        &checked.read_columns,
        checked.id_column.clone(),
        checked.stores.as_ref(),
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
    while let Some(sb) = rx.recv().await {
        let sb = sb?;
        if let Some(map) = &shard_map {
            use arrow::array::Array;
            for i in 0..sb.ids.len() {
                let s = map.shard_of(&sb.file, Some(sb.rows[i]), Some(sb.ids.value(i)));
                per_shard[s as usize] += 1;
            }
            for f in &sb.failures {
                per_shard[map.shard_of(&f.file, f.row, f.id.as_deref()) as usize] += 1;
            }
        }
        match &stage {
            Some(stage) => {
                plan_chunked_batch(pipeline, infos, existing.as_ref(), stage, &sb, &mut est).await?
            }
            None => plan_batch(pipeline, infos, existing.as_ref(), &sb, &mut est).await?,
        }
        if cleanup {
            use arrow::array::Array;
            seen.extend((0..sb.ids.len()).map(|i| sb.ids.value(i).to_string()));
            seen.extend(sb.failures.iter().filter_map(|f| f.id.clone()));
        }
    }
    reader.await.context("source reader panicked")?;
    if let (true, Some(conn)) = (cleanup, &conn) {
        let chunked = stage.is_some();
        let keep = |id: &str| match chunked {
            true => seen.contains(crate::util::columns::chunk_doc_id(id)),
            false => seen.contains(id),
        };
        est.rows_to_delete = missing_ids(conn, &checked.target.table, keep).await?.len() as u64;
    }
    for (m, info) in est.models.iter_mut().zip(infos) {
        finish_model(m, info);
    }
    est.cost_usd = est.models.iter().map(|m| m.cost_usd).sum();
    if shards.is_some() {
        est.rows_per_shard = Some(per_shard);
    }
    Ok(est)
}

/// The plan before any row is read: what is planned, and a zeroed count per model.
fn empty_estimate(
    pipeline: &Pipeline,
    table: &str,
    sink: &SinkSettings,
    infos: &[ModelSettings],
    reindex: bool,
) -> Estimate {
    Estimate {
        pipeline: pipeline.path.display().to_string(),
        table: table.to_string(),
        mode: if reindex {
            format!("{} (reindex)", sink.mode.as_str())
        } else {
            sink.mode.as_str().to_string()
        },
        models: infos
            .iter()
            .map(|m| ModelEstimate {
                model: m.name.clone(),
                model_id: m.model_id().to_string(),
                calls_exact: m.batch_size == 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Turns a model's counted inputs into calls, minutes at its configured rates, and cost.
fn finish_model(m: &mut ModelEstimate, info: &ModelSettings) {
    if !m.calls_exact {
        m.calls = m.inputs.div_ceil(info.batch_size as u64);
    } else {
        m.calls = m.inputs;
    }
    let rpm = info.rates.requests_per_minute.map(|r| r as f64);
    let tpm = info.rates.tokens_per_minute.map(|r| r as f64);
    m.minutes_at_quota = match (rpm, tpm) {
        (None, None) => None,
        (r, t) => Some(
            r.map_or(0.0, |r| m.calls as f64 / r)
                .max(t.map_or(0.0, |t| m.input_tokens as f64 / t)),
        ),
    };
    let cost = |p: &embedpipe_wire::Prices| {
        m.input_tokens as f64 / 1000.0 * p.per_1k_tokens
            + m.images as f64 * p.per_image
            + m.queries as f64 * p.per_query
    };
    m.cost_usd = cost(&info.prices);
    if let Some(b) = &info.batch {
        let (jobs, in_jobs) = split_into_jobs(m.inputs, b.records_per_job, b.min_records_per_job);
        let share = if m.inputs == 0 {
            0.0
        } else {
            in_jobs as f64 / m.inputs as f64
        };
        m.batch = Some(BatchEstimate {
            jobs,
            records_in_jobs: in_jobs,
            records_on_demand: m.inputs - in_jobs,
            on_demand_cost_usd: m.cost_usd,
        });
        // The inputs' cost split as their records are (tokens spread evenly).
        m.cost_usd = share * cost(&b.prices) + (1.0 - share) * m.cost_usd;
    }
}

/// Jobs of at most `per_job` records, and the records they hold: the rest after the full jobs
/// is a job of its own unless it is below `min` (then it goes on-demand).
fn split_into_jobs(inputs: u64, per_job: usize, min: usize) -> (u64, u64) {
    let (per_job, min) = (per_job.max(1) as u64, min as u64);
    let (full, rest) = (inputs / per_job, inputs % per_job);
    if rest >= min.max(1) {
        (full + 1, inputs)
    } else {
        (full, inputs - rest)
    }
}

/// Runs CPU-heavy work on the current thread, telling a multi-threaded runtime so (its other
/// tasks move to other threads meanwhile).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Counts one source batch the way a run would treat it.
async fn plan_batch(
    pipeline: &Pipeline,
    infos: &[ModelSettings],
    existing: Option<&Existing>,
    sb: &SourceBatch,
    est: &mut Estimate,
) -> Result<()> {
    let n = sb.batch.num_rows();
    est.rows_read += n as u64 + sb.failures.len() as u64;
    est.rows_rejected += sb.failures.len() as u64;
    let (prepared, bad) = prepare_steps(pipeline, infos, sb)?;
    let unchanged = match existing {
        Some(existing) => unchanged_in_table(existing, sb, &prepared, &bad).await?,
        None => vec![false; n],
    };
    // Pre-flight decodes images: CPU work that must not stall the runtime's other tasks.
    let rejected = blocking(|| {
        let mut rejected = vec![false; n];
        for (step, p) in pipeline.steps.iter().zip(&prepared) {
            let info = &infos[step.model_index];
            let m = &mut est.models[step.model_index];
            count_step(&step.input, p, info, m, &bad, &unchanged, &mut rejected);
        }
        rejected
    });
    for row in 0..n {
        if bad[row] || rejected[row] {
            est.rows_rejected += 1;
        } else if unchanged[row] {
            est.rows_to_skip += 1;
        } else {
            est.rows_to_embed += 1;
        }
    }
    Ok(())
}

/// The chunk stage a run would use, its local models' tokenizers loaded (not their weights).
fn chunk_stage(checked: &crate::commands::validate::Checked) -> Result<Option<ChunkStage>> {
    let settings = &checked.settings;
    let (Some(chunk), Some(keep)) = (&settings.chunk, &checked.chunk_keep) else {
        return Ok(None);
    };
    let mut counters = std::collections::HashMap::new();
    for &i in &chunk.models {
        let m = &settings.models[i];
        if m.spec.provider == crate::config::Provider::Local {
            let counter = blocking(|| crate::engines::local::load_token_counter(m))
                .with_context(|| format!("model `{}`: its tokenizer counts chunk sizes", m.name))?;
            counters.insert(i, counter);
        }
    }
    let limits =
        crate::prepare::chunked::limits(chunk, &settings.models, |i| counters.get(&i).cloned());
    Ok(Some(ChunkStage::new(
        chunk,
        limits,
        &checked.source.schema,
        keep.clone(),
    )?))
}

/// Counts one source batch of a chunked pipeline: its documents split as a run would, each
/// chunk to embed, reuse (its text is stored for the same document) or leave, stale chunks.
async fn plan_chunked_batch(
    pipeline: &Pipeline,
    infos: &[ModelSettings],
    existing: Option<&Existing>,
    stage: &ChunkStage,
    sb: &SourceBatch,
    est: &mut Estimate,
) -> Result<()> {
    let docs = sb.batch.num_rows();
    est.rows_read += docs as u64 + sb.failures.len() as u64;
    est.rows_rejected += sb.failures.len() as u64;
    let expanded = blocking(|| stage.expand(&sb.batch, &sb.ids))?;
    let mut doc_bad = vec![false; docs];
    for (row, _, _) in &expanded.failures {
        doc_bad[*row] = true;
    }
    let (csb, parent) = expanded.into_rows(sb);
    let n = csb.batch.num_rows();
    let (prepared, bad) = prepare_steps(pipeline, infos, &csb)?;
    let reuse = match existing {
        Some(existing) => {
            let mut ids: Vec<&str> = parent.iter().map(|&p| sb.ids.value(p as usize)).collect();
            ids.dedup();
            let place = stage.place_columns();
            let stored = existing.chunks(&ids, &place).await?;
            let ok: Vec<bool> = bad.iter().map(|b| !b).collect();
            Some(crate::prepare::chunked::match_stored(
                &csb.batch, &csb.ids, &parent, &sb.ids, &prepared, &stored, &place, &ok,
            ))
        }
        None => None,
    };
    let unchanged = reuse
        .as_ref()
        .map_or_else(|| vec![false; n], |r| r.unchanged.clone());
    // Per step, rows whose vector is reused: not counted as inputs to embed.
    let reused_rows: Vec<std::collections::HashSet<usize>> = match &reuse {
        Some(r) => r
            .reused
            .iter()
            .map(|v| v.iter().map(|x| x.0).collect())
            .collect(),
        None => vec![Default::default(); prepared.len()],
    };
    let rejected = blocking(|| {
        let mut rejected = vec![false; n];
        for ((step, p), reused) in pipeline.steps.iter().zip(&prepared).zip(&reused_rows) {
            let info = &infos[step.model_index];
            let m = &mut est.models[step.model_index];
            let skip: Vec<bool> = (0..n)
                .map(|r| unchanged[r] || reused.contains(&r))
                .collect();
            count_step(&step.input, p, info, m, &bad, &skip, &mut rejected);
        }
        rejected
    });
    let c = est.chunks.get_or_insert_with(Default::default);
    let mut doc_state = vec![(false, false, 0u64); docs]; // (rejected, changed, chunks)
    for k in 0..n {
        let d = parent[k] as usize;
        doc_state[d].2 += 1;
        c.chunks += 1;
        if bad[k] || rejected[k] {
            doc_state[d].0 = true;
        } else if unchanged[k] {
            c.unchanged += 1;
        } else {
            doc_state[d].1 = true;
            if reused_rows.iter().all(|r| r.contains(&k)) && !reused_rows.is_empty() {
                c.to_reuse += 1;
            } else {
                c.to_embed += 1;
            }
        }
    }
    let stale = reuse.map(|r| r.stale).unwrap_or_default();
    for (d, (rejected, changed, chunks)) in doc_state.into_iter().enumerate() {
        let gone = stale.get(&(d as u32)).map_or(0, |g| g.len() as u64);
        if doc_bad[d] || rejected || chunks == 0 {
            est.rows_rejected += 1;
            continue;
        }
        c.to_delete += gone;
        if changed || gone > 0 {
            est.rows_to_embed += 1;
        } else {
            est.rows_to_skip += 1;
        }
    }
    Ok(())
}

/// Prepares every step's inputs as a run would; `bad` marks the rows some step has no usable
/// input for (a run dead-letters them).
fn prepare_steps(
    pipeline: &Pipeline,
    infos: &[ModelSettings],
    sb: &SourceBatch,
) -> Result<(Vec<Prepared>, Vec<bool>)> {
    let mut bad = vec![false; sb.batch.num_rows()];
    let mut prepared = Vec::with_capacity(pipeline.steps.len());
    for step in &pipeline.steps {
        let p =
            crate::prepare::prepare(&step.input, &infos[step.model_index].fingerprint, &sb.batch)?;
        for (row, _, _) in &p.failures {
            bad[*row] = true;
        }
        prepared.push(p);
    }
    Ok((prepared, bad))
}

/// Which rows the table already holds with the same content hashes (incremental runs skip them).
async fn unchanged_in_table(
    existing: &Existing,
    sb: &SourceBatch,
    prepared: &[Prepared],
    bad: &[bool],
) -> Result<Vec<bool>> {
    let n = sb.batch.num_rows();
    let keep: Vec<usize> = (0..n).filter(|&r| !bad[r]).collect();
    // Hashes of the rows every step has an input for, in step order.
    let hashes: Vec<Vec<String>> = prepared
        .iter()
        .map(|p| {
            p.rows
                .iter()
                .zip(&p.hashes)
                .filter(|(r, _)| !bad[**r])
                .map(|(_, h)| h.clone())
                .collect()
        })
        .collect();
    let refs: Vec<&[String]> = hashes.iter().map(Vec::as_slice).collect();
    unchanged_rows(existing, &sb.ids, &keep, &refs, n).await
}

/// Counts one step's inputs of the rows to embed towards its model; marks in `rejected` the
/// rows the run would refuse before sending.
fn count_step(
    step_input: &StepInput,
    p: &Prepared,
    info: &ModelSettings,
    m: &mut ModelEstimate,
    bad: &[bool],
    unchanged: &[bool],
    rejected: &mut [bool],
) {
    // Counts one input; `true` when the run would refuse it before sending.
    let mut count = |row: usize, input: Input<'_>| -> bool {
        if bad[row] || unchanged[row] {
            return false;
        }
        count_input(info, m, input)
    };
    match (step_input, &p.inputs) {
        (_, Inputs::Text(texts)) => {
            for (&row, t) in p.rows.iter().zip(texts) {
                rejected[row] |= count(row, Input::Text(t));
            }
        }
        (_, Inputs::Image(images)) => {
            for (&row, b) in p.rows.iter().zip(images) {
                match ImageFormat::detect(b) {
                    Some(format) => {
                        rejected[row] |= count(row, Input::Image(Image { bytes: b, format }))
                    }
                    None => rejected[row] = true,
                }
            }
        }
        (_, Inputs::TextImage(pairs)) => {
            for (&row, (t, b)) in p.rows.iter().zip(pairs) {
                match ImageFormat::detect(b) {
                    Some(format) => {
                        rejected[row] |= count(row, Input::TextImage(t, Image { bytes: b, format }))
                    }
                    None => rejected[row] = true,
                }
            }
        }
        (StepInput::Media(..), Inputs::Media(media)) => {
            for &row in p.rows.iter().take(media.len()) {
                if !bad[row] && !unchanged[row] {
                    m.media_files += 1;
                }
            }
        }
        (_, Inputs::Media(_)) => {}
    }
}

/// Counts one input of a row to embed: its tokens (or query) and image; `true` when the run would
/// refuse it before sending (cut texts are still sent).
fn count_input(info: &ModelSettings, m: &mut ModelEstimate, input: Input<'_>) -> bool {
    if info.spec.provider != crate::config::Provider::Local
        && embedpipe_wire::preflight(info.spec, &info.params, &input, check_image).is_err()
    {
        return true;
    }
    m.inputs += 1;
    if let Some(t) = input.text() {
        // The family's billing of one text (tokens; Marengo: a query).
        let u = embedpipe_wire::usage(
            info.spec,
            &[Input::Text(t)],
            &Parsed::default(),
            &embedpipe_wire::unknown_pixels,
        );
        m.input_tokens += u.input_tokens;
        m.queries += u.queries;
    }
    if input.image().is_some() {
        m.images += 1;
    }
    false
}

#[cfg(test)]
mod batch_tests {
    use super::split_into_jobs;

    #[test]
    fn a_rest_below_the_minimum_is_no_job() {
        assert_eq!(split_into_jobs(1050, 500, 100), (2, 1000));
        assert_eq!(split_into_jobs(1000, 400, 100), (3, 1000));
        assert_eq!(split_into_jobs(60, 500, 100), (0, 0));
        assert_eq!(split_into_jobs(0, 500, 100), (0, 0));
    }
}
