//! Run history: one row per run in the LanceDB table `<table>_runs` next to the data — when,
//! which pipeline (hash of its file), what happened (counts, units, cost, failures).

use super::table::connect;
use crate::resolve::Target;
use anyhow::{Context, Result};
use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, RecordBatchIterator, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::TryStreamExt;
use lancedb::query::ExecutableQuery;
use serde::Serialize;
use std::sync::Arc;

pub fn table_name(target: &Target) -> String {
    format!("{}{}", target.table, super::RUN_LOG_SUFFIX)
}

/// One run, as recorded (the report layer makes it from the run's summary).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    /// BLAKE3 of the pipeline file's text (which runs used the same pipeline).
    pub pipeline_hash: String,
    pub pipeline: String,
    pub mode: String,
    /// `ok`, `rows_failed`, `failed` or `interrupted`.
    pub status: String,
    pub started_at_micros: i64,
    pub ended_at_micros: i64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_skipped: u64,
    pub rows_failed: u64,
    pub rows_deleted: u64,
    pub calls: u64,
    pub input_tokens: u64,
    pub images: u64,
    pub media_seconds: f64,
    pub cost_usd: f64,
    /// Failures by kind, as JSON.
    pub failures: String,
    pub error: Option<String>,
    /// Old table versions retention removed after the run (and their bytes).
    pub versions_removed: u64,
    pub bytes_removed: u64,
}

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("run_id"),
        s("pipeline_hash"),
        s("pipeline"),
        s("mode"),
        s("status"),
        Field::new("started_at", ts.clone(), false),
        Field::new("ended_at", ts, false),
        u("rows_read"),
        u("rows_written"),
        u("rows_skipped"),
        u("rows_failed"),
        u("rows_deleted"),
        u("calls"),
        u("input_tokens"),
        u("images"),
        Field::new("media_seconds", DataType::Float64, false),
        Field::new("cost_usd", DataType::Float64, false),
        s("failures"),
        Field::new("error", DataType::Utf8, true),
        Field::new("versions_removed", DataType::UInt64, true),
        Field::new("bytes_removed", DataType::UInt64, true),
    ]))
}

/// Columns added after the first run logs were written: older logs get them (as nulls) before
/// the first record that has them.
const ADDED_COLUMNS: [&str; 2] = ["versions_removed", "bytes_removed"];

/// Appends `r` to the run log of `target` (creating it).
pub async fn append(target: &Target, r: &RunRecord) -> Result<()> {
    let str1 = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let u1 = |v: u64| Arc::new(UInt64Array::from(vec![v])) as ArrayRef;
    let ts = |v: i64| {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            str1(&r.run_id),
            str1(&r.pipeline_hash),
            str1(&r.pipeline),
            str1(&r.mode),
            str1(&r.status),
            ts(r.started_at_micros),
            ts(r.ended_at_micros),
            u1(r.rows_read),
            u1(r.rows_written),
            u1(r.rows_skipped),
            u1(r.rows_failed),
            u1(r.rows_deleted),
            u1(r.calls),
            u1(r.input_tokens),
            u1(r.images),
            Arc::new(Float64Array::from(vec![r.media_seconds])),
            Arc::new(Float64Array::from(vec![r.cost_usd])),
            str1(&r.failures),
            Arc::new(StringArray::from(vec![r.error.as_deref()])),
            u1(r.versions_removed),
            u1(r.bytes_removed),
        ],
    )?;
    let conn = connect(target).await?;
    let name = table_name(target);
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
    if conn.table_names().execute().await?.contains(&name) {
        let table = conn.open_table(&name).execute().await?;
        let theirs = table.schema().await?;
        let missing: Vec<Field> = schema()
            .fields()
            .iter()
            .filter(|f| ADDED_COLUMNS.contains(&f.name().as_str()))
            .filter(|f| theirs.field_with_name(f.name()).is_err())
            .map(|f| f.as_ref().clone())
            .collect();
        if !missing.is_empty() {
            table
                .add_columns()
                .transform(lancedb::table::NewColumnTransform::AllNulls(Arc::new(
                    Schema::new(missing),
                )))
                .execute()
                .await
                .context("adding the new columns to the run log")?;
        }
        table
            .add(Box::new(reader) as Box<dyn arrow::array::RecordBatchReader + Send>)
            .execute()
            .await
            .context("appending to the run log")?;
    } else {
        conn.create_table(
            &name,
            Box::new(reader) as Box<dyn arrow::array::RecordBatchReader + Send>,
        )
        .execute()
        .await
        .context("creating the run log")?;
    }
    Ok(())
}

/// Every recorded run, oldest first (none if there is no log yet).
pub async fn read(target: &Target) -> Result<Vec<RunRecord>> {
    if target.local_dir.as_ref().is_some_and(|d| !d.exists()) {
        return Ok(Vec::new());
    }
    let conn = connect(target).await?;
    let name = table_name(target);
    if !conn.table_names().execute().await?.contains(&name) {
        return Ok(Vec::new());
    }
    let batches: Vec<RecordBatch> = conn
        .open_table(&name)
        .execute()
        .await?
        .query()
        .execute()
        .await?
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for b in batches {
        let s = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .with_context(|| format!("run log column {n}"))
        };
        let u = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
                .with_context(|| format!("run log column {n}"))
        };
        let f = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
                .with_context(|| format!("run log column {n}"))
        };
        let t = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .cloned()
                })
                .with_context(|| format!("run log column {n}"))
        };
        let (run_id, hash, pipeline, mode, status, failures, error) = (
            s("run_id")?,
            s("pipeline_hash")?,
            s("pipeline")?,
            s("mode")?,
            s("status")?,
            s("failures")?,
            s("error")?,
        );
        let (started, ended) = (t("started_at")?, t("ended_at")?);
        let cols: Vec<UInt64Array> = [
            "rows_read",
            "rows_written",
            "rows_skipped",
            "rows_failed",
            "rows_deleted",
            "calls",
            "input_tokens",
            "images",
        ]
        .iter()
        .map(|n| u(n))
        .collect::<Result<_>>()?;
        let (media, cost) = (f("media_seconds")?, f("cost_usd")?);
        // Absent (or null) in logs written before retention existed.
        let optional = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
        };
        let (versions_removed, bytes_removed) =
            (optional("versions_removed"), optional("bytes_removed"));
        let at = |c: &Option<UInt64Array>, i: usize| {
            c.as_ref()
                .filter(|c| c.is_valid(i))
                .map_or(0, |c| c.value(i))
        };
        for i in 0..b.num_rows() {
            out.push(RunRecord {
                run_id: run_id.value(i).into(),
                pipeline_hash: hash.value(i).into(),
                pipeline: pipeline.value(i).into(),
                mode: mode.value(i).into(),
                status: status.value(i).into(),
                started_at_micros: started.value(i),
                ended_at_micros: ended.value(i),
                rows_read: cols[0].value(i),
                rows_written: cols[1].value(i),
                rows_skipped: cols[2].value(i),
                rows_failed: cols[3].value(i),
                rows_deleted: cols[4].value(i),
                calls: cols[5].value(i),
                input_tokens: cols[6].value(i),
                images: cols[7].value(i),
                media_seconds: media.value(i),
                cost_usd: cost.value(i),
                failures: failures.value(i).into(),
                error: (!error.is_null(i)).then(|| error.value(i).to_string()),
                versions_removed: at(&versions_removed, i),
                bytes_removed: at(&bytes_removed, i),
            });
        }
    }
    out.sort_by_key(|r| r.started_at_micros);
    Ok(out)
}
