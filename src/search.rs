//! `embedpipe search`: embed a query with a step's model and find the nearest rows.

use crate::config::{Pipeline, StepInput};
use crate::dispatch::ModelHandle;
use crate::plan::Inputs;
use crate::sink::lancedb as lance_sink;
use anyhow::{bail, Context, Result};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::DistanceType;
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
    pub overrides: crate::dispatch::Overrides,
    /// SQL predicate on the table's columns (`year > 2020 AND lang = 'en'`).
    pub filter: Option<String>,
    /// Vector + full-text search, fused (needs `fts_column` in [sink]).
    pub hybrid: bool,
}

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
    let step = match &opts.step {
        Some(name) => pipeline
            .steps
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
                invalid(format!(
                    "no embed step named `{name}`; steps: {}",
                    names.join(", ")
                ))
            })?,
        None => pipeline
            .steps
            .iter()
            .find(|s| !matches!(s.input, StepInput::Image(_)))
            .ok_or_else(|| {
                invalid("this pipeline has no text embed step to search with a text query")
            })?,
    }
    .clone();
    let target = lance_sink::target(&pipeline)?;
    let missing = || {
        invalid(format!(
            "table `{}` not found in {}; run `embedpipe run {}` first",
            target.table,
            target.uri,
            pipeline.path.display()
        ))
    };
    if target.local_dir.as_ref().is_some_and(|d| !d.exists()) {
        return Err(missing());
    }
    let conn = lance_sink::connect(&target).await?;
    if !conn.table_names().execute().await?.contains(&target.table) {
        return Err(missing());
    }
    let table = conn
        .open_table(&target.table)
        .execute()
        .await
        .with_context(|| format!("cannot open table `{}`", target.table))?;
    let schema = table.schema().await?;
    if schema.field_with_name(&step.vector).is_err() {
        return Err(invalid(format!(
            "table `{}` has no vector column `{}`; was it written by this pipeline?",
            target.table, step.vector
        )));
    }
    let mut model = {
        let p = pipeline.clone();
        let index = step.model_index;
        let o = opts.overrides.clone();
        tokio::task::spawn_blocking(move || ModelHandle::load(&p, index, &o, None)).await??
    };
    // Asymmetric models embed queries differently from documents.
    model.info.params = model.info.params.for_query(model.info.spec);
    if let Some(their) = schema
        .field_with_name(&step.vector)?
        .metadata()
        .get(crate::sink::FIELD_MODEL_ID)
    {
        if their != model.info.spec.id {
            bail!("column `{}` holds vectors from {their}, but the pipeline's model is {}; re-run the pipeline", step.vector, model.info.spec.id);
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
    let mut select = vec!["id".to_string()];
    select.extend(columns.iter().cloned());
    let mut q = table
        .vector_search(out.vectors)?
        .column(&step.vector)
        .distance_type(DistanceType::Cosine)
        .limit(opts.k)
        .select(Select::Columns(select));
    if let Some(f) = &opts.filter {
        q = q.only_if(f);
    }
    let stream = if opts.hybrid {
        let fts = pipeline
            .sink()
            .fts_column
            .as_ref()
            .map(|c| c.get_ref().clone());
        let has_fts = match &fts {
            Some(c) => table
                .list_indices()
                .await?
                .iter()
                .any(|i| i.columns.contains(c)),
            None => false,
        };
        if !has_fts {
            return Err(invalid("hybrid search needs a full-text index: set `fts_column = \"<text column>\"` in [sink] and run the pipeline"));
        }
        q.full_text_search(lance_index::scalar::FullTextSearchQuery::new(
            opts.query.clone(),
        ))
        .execute_hybrid(Default::default())
        .await
    } else {
        q.execute().await
    };
    let batches: Vec<RecordBatch> = stream
        .map_err(|e| match &opts.filter {
            Some(f) => invalid(format!(
                "the filter `{f}` cannot be applied: {}",
                crate::sink::failures::scrub_internal_paths(&e.to_string())
            )),
            None => anyhow::anyhow!("search failed: {e}"),
        })?
        .try_collect()
        .await?;
    let mut hits = Vec::new();
    for b in &batches {
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
    if opts.hybrid {
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
