//! `embedpipe plan`: what a run would do, without calling any model — rows to embed, skip and
//! delete, and per model the inputs, estimated tokens, images, calls, time at the configured
//! quotas and cost. Reads the source and (incremental runs) the table's content hashes.

use crate::config::{Cleanup, Pipeline, StepInput, WriteMode};
use crate::dispatch::ModelInfo;
use crate::models::{self, Family, Input};
use crate::sink::incremental::{missing_ids, unchanged_rows, Existing};
use crate::sink::lancedb as lance_sink;
use crate::sources::{self, SourceBatch};
use anyhow::{Context, Result};
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
    pub models: Vec<ModelEstimate>,
    pub cost_usd: f64,
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
    pub cost_usd: f64,
}

/// Plans a run of `pipeline` (`reindex`: every row is embedded again).
pub async fn estimate(pipeline: &Pipeline, reindex: bool) -> Result<Estimate> {
    let checked = crate::validate::check_run(pipeline, reindex).await?;
    let infos = ModelInfo::all(pipeline);
    let incremental = pipeline.write_mode() == WriteMode::Incremental && !reindex;
    let conn = match &checked.existing {
        Some(_) => Some(lance_sink::connect(&checked.target).await?),
        None => None,
    };
    let existing = match (&conn, incremental) {
        (Some(conn), true) => Some(Existing::open(conn, &checked.target.table, pipeline).await?),
        _ => None,
    };
    let mut est = Estimate {
        pipeline: pipeline.path.display().to_string(),
        table: checked.target.table.clone(),
        mode: if reindex {
            format!("{} (reindex)", pipeline.write_mode().as_str())
        } else {
            pipeline.write_mode().as_str().to_string()
        },
        models: infos
            .iter()
            .map(|m| ModelEstimate {
                model: m.name.clone(),
                model_id: m.spec.id.to_string(),
                calls_exact: m.batch_size == 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let cleanup = incremental && pipeline.cleanup() == Cleanup::Full;
    let mut seen: HashSet<String> = HashSet::new();
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
    while let Some(sb) = rx.recv().await {
        let sb = sb?;
        plan_batch(pipeline, &infos, existing.as_ref(), &sb, &mut est).await?;
        if cleanup {
            use arrow::array::Array;
            seen.extend((0..sb.ids.len()).map(|i| sb.ids.value(i).to_string()));
            seen.extend(sb.failures.iter().filter_map(|f| f.id.clone()));
        }
    }
    reader.await.context("source reader panicked")?;
    if let (true, Some(conn)) = (cleanup, &conn) {
        est.rows_to_delete = missing_ids(conn, &checked.target.table, |id| seen.contains(id))
            .await?
            .len() as u64;
    }
    let cfgs: Vec<_> = (0..infos.len()).map(|i| pipeline.model(i)).collect();
    for ((m, info), cfg) in est.models.iter_mut().zip(&infos).zip(cfgs) {
        if !m.calls_exact {
            m.calls = m.inputs.div_ceil(info.batch_size as u64);
        } else {
            m.calls = m.inputs;
        }
        let rpm = cfg
            .requests_per_minute
            .as_ref()
            .map(|r| *r.get_ref() as f64);
        let tpm = cfg.tokens_per_minute.as_ref().map(|r| *r.get_ref() as f64);
        m.minutes_at_quota = match (rpm, tpm) {
            (None, None) => None,
            (r, t) => Some(
                r.map_or(0.0, |r| m.calls as f64 / r)
                    .max(t.map_or(0.0, |t| m.input_tokens as f64 / t)),
            ),
        };
        let p = info.prices;
        m.cost_usd = m.input_tokens as f64 / 1000.0 * p.per_1k_tokens
            + m.images as f64 * p.per_image
            + m.queries as f64 * p.per_query;
    }
    est.cost_usd = est.models.iter().map(|m| m.cost_usd).sum();
    Ok(est)
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
    infos: &[ModelInfo],
    existing: Option<&Existing>,
    sb: &SourceBatch,
    est: &mut Estimate,
) -> Result<()> {
    let n = sb.batch.num_rows();
    est.rows_read += n as u64 + sb.failures.len() as u64;
    est.rows_rejected += sb.failures.len() as u64;
    let mut bad = vec![false; n];
    let mut prepared = Vec::with_capacity(pipeline.steps.len());
    for step in &pipeline.steps {
        let p = super::prepare(&step.input, &infos[step.model_index].fingerprint, &sb.batch)?;
        for (row, _, _) in &p.failures {
            bad[*row] = true;
        }
        prepared.push(p);
    }
    let keep: Vec<usize> = (0..n).filter(|&r| !bad[r]).collect();
    let mut unchanged = vec![false; n];
    if let Some(existing) = existing {
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
        unchanged = unchanged_rows(existing, &sb.ids, &keep, &refs, n).await?;
    }
    // Pre-flight decodes images: CPU work that must not stall the runtime's other tasks.
    let rejected = blocking(|| {
        let mut rejected = vec![false; n];
        for (step, p) in pipeline.steps.iter().zip(&prepared) {
            let info = &infos[step.model_index];
            let m = &mut est.models[step.model_index];
            // Counts one input; `true` when the run would refuse it before sending.
            let mut count = |row: usize, input: Input<'_>| -> bool {
                if bad[row] || unchanged[row] {
                    return false;
                }
                // Inputs the run would refuse before sending (cut texts are still sent).
                if info.spec.provider == crate::config::Provider::Bedrock
                    && models::preflight(info.spec, &info.params, &input).is_err()
                {
                    return true;
                }
                m.inputs += 1;
                if let Some(t) = input.text() {
                    m.input_tokens += models::estimate_tokens(t);
                    if matches!(info.spec.family, Family::Marengo27 | Family::Marengo30) {
                        m.queries += 1;
                    }
                }
                if input.image().is_some() {
                    m.images += 1;
                }
                false
            };
            match (&step.input, &p.inputs) {
                (_, super::Inputs::Text(texts)) => {
                    for (&row, t) in p.rows.iter().zip(texts) {
                        rejected[row] |= count(row, Input::Text(t));
                    }
                }
                (_, super::Inputs::Image(images)) => {
                    for (&row, b) in p.rows.iter().zip(images) {
                        match models::ImageFormat::detect(b) {
                            Some(format) => {
                                rejected[row] |=
                                    count(row, Input::Image(models::Image { bytes: b, format }))
                            }
                            None => rejected[row] = true,
                        }
                    }
                }
                (_, super::Inputs::TextImage(pairs)) => {
                    for (&row, (t, b)) in p.rows.iter().zip(pairs) {
                        match models::ImageFormat::detect(b) {
                            Some(format) => {
                                rejected[row] |= count(
                                    row,
                                    Input::TextImage(t, models::Image { bytes: b, format }),
                                )
                            }
                            None => rejected[row] = true,
                        }
                    }
                }
                (StepInput::Media(..), super::Inputs::Media(media)) => {
                    for &row in p.rows.iter().take(media.len()) {
                        if !bad[row] && !unchanged[row] {
                            m.media_files += 1;
                        }
                    }
                }
                (_, super::Inputs::Media(_)) => {}
            }
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
