//! `embedpipe search`: embed a query with a step's model and find the nearest rows.

use crate::config::{Pipeline, Step, StepInput};
use crate::dispatch::ModelHandle;
use crate::prepare::Inputs;
use crate::sink::search::{self as table_search, Hybrid, Nearest, QueryError};
use anyhow::{bail, Result};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    pub query: String,
    pub k: usize,
    /// Embed step (by name) whose vector column to search; default the first text step.
    pub step: Option<String>,
    /// Columns to show; default `id` plus the metadata columns.
    pub columns: Option<Vec<String>>,
    /// How the model is reached (`--emulator`).
    pub overrides: crate::resolve::Overrides,
    /// SQL predicate on the table's columns (`year > 2020 AND lang = 'en'`).
    pub filter: Option<String>,
    /// Vector + full-text search, fused (needs `fts_column` in [sink]).
    pub hybrid: bool,
    /// Chunked tables: at most this many hits per document (`--per-doc 1`: the best chunk of
    /// each document).
    pub per_doc: Option<usize>,
}

/// Candidates fetched per wanted hit when hits are limited per document; grown while too few
/// documents come back.
const PER_DOC_OVERSAMPLE: usize = 8;
/// The most candidates a `--per-doc` search looks at.
const PER_DOC_MAX_CANDIDATES: usize = 100_000;

/// One result row.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub rank: usize,
    pub id: String,
    /// Cosine distance (0 = same direction, 2 = opposite); NaN in hybrid results.
    pub distance: f32,
    /// Hybrid search: the fused relevance score (higher is better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance: Option<f32>,
    /// The shown columns, as JSON values.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A search that cannot run as asked (exit 2): a bad argument, filter or missing table, found
/// before any model call.
#[derive(Debug)]
pub struct InvalidSearch(pub String);

impl std::fmt::Display for InvalidSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSearch {}

fn invalid(message: impl Into<String>) -> anyhow::Error {
    InvalidSearch(message.into()).into()
}

/// A filter is one SQL predicate: a `;` outside quotes would end it, and the SQL parser would
/// silently drop whatever follows.
fn check_filter(filter: &str) -> Result<()> {
    let mut quote = None;
    for c in filter.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                return Err(invalid(format!(
                    "the filter `{filter}` holds more than one statement (`;`); give one SQL predicate, e.g. \"topic = 'geology' AND year > 2020\""
                )))
            }
            _ => {}
        }
    }
    if filter.trim().is_empty() {
        return Err(invalid(
            "the filter is empty; leave out --filter to search every row",
        ));
    }
    Ok(())
}

/// The step named `name`, else the first step that embeds text.
fn pick_step<'a>(pipeline: &'a Pipeline, name: Option<&str>) -> Result<&'a Step> {
    match name {
        Some(name) => pipeline
            .steps
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
                invalid(format!(
                    "no embed step named `{name}`; steps: {}",
                    names.join(", ")
                ))
            }),
        None => pipeline
            .steps
            .iter()
            .find(|s| !matches!(s.input, StepInput::Image(_)))
            .ok_or_else(|| {
                invalid("this pipeline has no text embed step to search with a text query")
            }),
    }
}

pub async fn search(pipeline: Arc<Pipeline>, opts: SearchOptions) -> Result<Vec<Hit>> {
    if opts.k == 0 {
        return Err(invalid("-k must be at least 1"));
    }
    if opts.query.trim().is_empty() {
        return Err(invalid("the query is empty; give the text to search for"));
    }
    if let Some(f) = &opts.filter {
        check_filter(f)?;
    }
    if opts.per_doc == Some(0) {
        return Err(invalid("--per-doc must be at least 1"));
    }
    let step = pick_step(&pipeline, opts.step.as_deref())?.clone();
    let storage = crate::resolve::StorageSettings::resolve(&pipeline, &opts.overrides)?;
    let target = crate::resolve::sink::target(&pipeline, &storage)?;
    let Some(table) = table_search::open(&target).await? else {
        return Err(invalid(format!(
            "table `{}` not found in {}; run `embedpipe run {}` first",
            target.table,
            target.uri,
            pipeline.path.display()
        )));
    };
    let schema = table.schema().clone();
    if schema.field_with_name(&step.vector).is_err() {
        return Err(invalid(format!(
            "table `{}` has no vector column `{}`; was it written by this pipeline?",
            target.table, step.vector
        )));
    }
    let mut settings =
        crate::resolve::ModelSettings::resolve(&pipeline, step.model_index, &opts.overrides);
    // Asymmetric models embed queries differently from documents. Set before loading: the
    // loaded model's caller builds every request from its own copy of the settings.
    settings.params = settings.params.for_query(settings.spec);
    let model = tokio::task::spawn_blocking(move || ModelHandle::load(settings, None)).await??;
    if let Some(their) = schema
        .field_with_name(&step.vector)?
        .metadata()
        .get(crate::sink::FIELD_MODEL_ID)
    {
        if their != model.info.model_id() {
            bail!("column `{}` holds vectors from {their}, but the pipeline's model is {}; re-run the pipeline", step.vector, model.info.model_id());
        }
    }
    let out = model
        .embed(&Inputs::Text(vec![opts.query.clone()]), &|_| {})
        .await?;
    if let Some((_, _, msg)) = out.failed.first() {
        bail!("embedding the query failed: {msg}");
    }
    let columns: Vec<String> = match &opts.columns {
        Some(c) => c.clone(),
        None => schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != "id" && !crate::sink::RESERVED_COLUMNS.contains(&n.as_str()))
            .filter(|n| {
                !pipeline
                    .steps
                    .iter()
                    .any(|s| crate::sink::step_columns(&s.vector).contains(n))
            })
            .collect(),
    };
    for c in &columns {
        if schema.field_with_name(c).is_err() {
            return Err(invalid(format!(
                "table `{}` has no column `{c}`",
                target.table
            )));
        }
    }
    let doc_id = crate::util::columns::CHUNK_DOC_ID;
    if opts.per_doc.is_some() && schema.field_with_name(doc_id).is_err() {
        return Err(invalid(format!(
            "--per-doc needs a chunked table (one with a `{doc_id}` column); table `{}` has one row per source row already",
            target.table
        )));
    }
    let mut select = vec!["id".to_string()];
    select.extend(columns.iter().cloned());
    if opts.per_doc.is_some() && !select.iter().any(|c| c == doc_id) {
        select.push(doc_id.to_string());
    }
    let fts_column = pipeline
        .sink()
        .fts_column
        .as_ref()
        .map(|c| c.get_ref().clone());
    let mut limit = match opts.per_doc {
        Some(n) => opts
            .k
            .saturating_mul(n)
            .saturating_mul(PER_DOC_OVERSAMPLE)
            .min(PER_DOC_MAX_CANDIDATES),
        None => opts.k,
    };
    loop {
        let query = Nearest {
            column: &step.vector,
            vector: out.vectors.clone(),
            k: limit,
            select: select.clone(),
            filter: opts.filter.as_deref(),
            hybrid: opts.hybrid.then(|| Hybrid {
                text: &opts.query,
                fts_column: fts_column.as_deref(),
            }),
        };
        let batches = nearest(&table, query, &opts).await?;
        let got: usize = batches.iter().map(|b| b.num_rows()).sum();
        let hits = rank(&batches, &select[1..], opts.hybrid)?;
        let Some(per_doc) = opts.per_doc else {
            return Ok(hits);
        };
        let (hits, docs) = best_per_doc(hits, per_doc, opts.k, &columns);
        // Too few documents among the candidates, and more candidates exist: look further.
        if docs >= opts.k || got < limit || limit >= PER_DOC_MAX_CANDIDATES {
            return Ok(hits);
        }
        limit = limit.saturating_mul(4).min(PER_DOC_MAX_CANDIDATES);
    }
}

/// At most `per_doc` hits of each document, best first, for the best `k` documents (ranks
/// renumbered); also how many documents the hits covered. `doc_id` is dropped from the shown
/// fields unless asked for.
fn best_per_doc(hits: Vec<Hit>, per_doc: usize, k: usize, shown: &[String]) -> (Vec<Hit>, usize) {
    let doc_id = crate::util::columns::CHUNK_DOC_ID;
    let mut taken: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::new();
    for mut h in hits {
        let doc = match h.fields.get(doc_id) {
            Some(serde_json::Value::String(d)) => d.clone(),
            _ => crate::util::columns::chunk_doc_id(&h.id).to_string(),
        };
        if !shown.iter().any(|c| c == doc_id) {
            h.fields.remove(doc_id);
        }
        match taken.get(&doc) {
            Some(&n) if n >= per_doc => continue,
            None if taken.len() >= k => continue,
            _ => {}
        }
        *taken.entry(doc).or_default() += 1;
        out.push(h);
    }
    for (i, h) in out.iter_mut().enumerate() {
        h.rank = i + 1;
    }
    let docs = taken.len();
    (out, docs)
}

/// Runs one query, turning the database's refusals into messages about the user's input.
async fn nearest(
    table: &table_search::SearchTable,
    query: Nearest<'_>,
    opts: &SearchOptions,
) -> Result<Vec<RecordBatch>> {
    table.nearest(query).await.map_err(|e| match e {
        QueryError::NoFullTextIndex => invalid("hybrid search needs a full-text index: set `fts_column = \"<text column>\"` in [sink] and run the pipeline"),
        QueryError::Rejected(e) => match &opts.filter {
            Some(f) => invalid(format!(
                "the filter `{f}` cannot be applied: {}",
                crate::sink::failures::scrub_internal_paths(&e)
            )),
            None => anyhow::anyhow!("search failed: {e}"),
        },
        QueryError::Failed(e) => e,
    })
}

/// The hits of a search's result rows, best first: by fused relevance for a hybrid search,
/// else by distance.
fn rank(batches: &[RecordBatch], columns: &[String], hybrid: bool) -> Result<Vec<Hit>> {
    let mut hits = Vec::new();
    for b in batches {
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::ArrayWriter::new(&mut buf);
            w.write(b)?;
            w.finish()?;
        }
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = if buf.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(&buf)?
        };
        for mut row in rows {
            let id = match row.remove("id") {
                Some(serde_json::Value::String(s)) => s,
                other => other.map(|v| v.to_string()).unwrap_or_default(),
            };
            let relevance = row
                .remove("_relevance_score")
                .and_then(|v| v.as_f64())
                .map(|v| v as f32);
            let distance = row
                .remove("_distance")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN) as f32;
            row.remove("_score");
            let fields = columns
                .iter()
                .map(|c| (c.clone(), row.remove(c).unwrap_or(serde_json::Value::Null)))
                .collect();
            hits.push(Hit {
                rank: 0,
                id,
                distance,
                relevance,
                fields,
            });
        }
    }
    if hybrid {
        hits.sort_by(|a, b| {
            b.relevance
                .unwrap_or(0.0)
                .total_cmp(&a.relevance.unwrap_or(0.0))
        });
    } else {
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    }
    for (i, h) in hits.iter_mut().enumerate() {
        h.rank = i + 1;
    }
    Ok(hits)
}
