//! Sources: Parquet, CSV and image folders, each a stream of bounded Arrow batches.
//!
//! A source runs on a blocking thread and hands [`SourceBatch`]es to the pipeline through a
//! bounded channel, so memory stays flat whatever the dataset size.

mod csv;
mod files;
mod images;
mod parquet;

pub use files::{expand_inputs, InputFile};

use crate::config::{Pipeline, SourceKind};
use anyhow::Result;
use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Rows read from one file, with where each came from.
#[derive(Debug)]
pub struct SourceBatch {
    /// The file these rows came from, as shown to users.
    pub file: Arc<str>,
    /// The data (projected to the columns the pipeline needs).
    pub batch: RecordBatch,
    /// Stable row ids, one per row of `batch` (from `id_column`, or derived).
    pub ids: Arc<StringArray>,
    /// 1-based row number in the file (the line where the record starts, for CSV); 0 where
    /// rows have no number (image files, located by their path).
    pub rows: Vec<u64>,
    /// Rows of this stretch of the file that could not be read.
    pub failures: Vec<ReadFailure>,
}

/// A row (or file) that could not be read.
#[derive(Debug, Clone)]
pub struct ReadFailure {
    pub file: Arc<str>,
    pub row: Option<u64>,
    pub id: Option<String>,
    pub kind: &'static str,
    pub message: String,
}

/// What a source produces, read off its files without reading the data.
pub struct SourcePlan {
    pub kind: SourceKind,
    pub files: Vec<InputFile>,
    /// Schema of every batch the source will produce.
    pub schema: SchemaRef,
    /// Rows the source holds, when known without reading it (Parquet footers).
    total_rows: Option<u64>,
}

impl SourcePlan {
    /// Rows the source holds, when known without reading it (Parquet footers).
    pub fn total_rows(&self) -> Option<u64> {
        self.total_rows
    }
}

/// An iterator of batches, driven on a blocking thread.
pub type BatchIter = Box<dyn Iterator<Item = Result<SourceBatch>> + Send>;

/// Finds the files and the schema of the pipeline's source (reads footers / headers only).
pub fn plan(pipeline: &Pipeline) -> Result<SourcePlan> {
    let kind = *pipeline.source().kind.get_ref();
    let files = expand_inputs(pipeline)?;
    let (schema, total_rows) = match kind {
        SourceKind::Parquet => {
            let (schema, rows) = parquet::schema(pipeline, &files)?;
            (schema, Some(rows))
        }
        SourceKind::Csv => (csv::schema(pipeline, &files)?, None),
        SourceKind::Images => (images::schema(), None),
    };
    Ok(SourcePlan {
        kind,
        files,
        schema,
        total_rows,
    })
}

/// Opens the source, reading only `columns` (which include `id_column`, if any).
pub fn open(
    pipeline: &Pipeline,
    plan: &SourcePlan,
    columns: &[String],
    id_column: Option<String>,
) -> Result<BatchIter> {
    match plan.kind {
        SourceKind::Parquet => parquet::open(pipeline, plan, columns, id_column),
        SourceKind::Csv => csv::open(pipeline, plan, columns, id_column),
        SourceKind::Images => images::open(pipeline, plan),
    }
}

/// Builds the id array for a tabular batch: the `id_column` cast to text, or `<file>#<row>`.
/// Rows whose id is null are returned as failures (and must be dropped by the caller).
pub(crate) fn tabular_ids(
    batch: &RecordBatch,
    id_column: Option<&str>,
    file: &InputFile,
    rows: &[u64],
) -> Result<(Arc<StringArray>, Vec<usize>)> {
    match id_column {
        Some(col) => {
            let array: ArrayRef = arrow::compute::cast(
                batch.column_by_name(col).expect("id column is projected"),
                &arrow::datatypes::DataType::Utf8,
            )?;
            let ids = array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone();
            let nulls = (0..ids.len())
                .filter(|&i| ids.is_null(i) || ids.value(i).is_empty())
                .collect();
            Ok((Arc::new(ids), nulls))
        }
        None => {
            let ids: StringArray = rows
                .iter()
                .map(|r| Some(format!("{}#{r}", file.id_prefix)))
                .collect();
            Ok((Arc::new(ids), Vec::new()))
        }
    }
}

/// Drops `bad` rows (sorted indexes) from a batch, its ids and row numbers.
pub(crate) fn drop_rows(
    batch: &RecordBatch,
    ids: &StringArray,
    rows: &[u64],
    bad: &[usize],
) -> Result<(RecordBatch, Arc<StringArray>, Vec<u64>)> {
    let keep: Vec<u32> = (0..batch.num_rows() as u32)
        .filter(|i| bad.binary_search(&(*i as usize)).is_err())
        .collect();
    let idx = arrow::array::UInt32Array::from(keep.clone());
    let batch = arrow::compute::take_record_batch(batch, &idx)?;
    let ids = arrow::compute::take(ids, &idx, None)?;
    let ids = ids
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("string ids")
        .clone();
    let rows = keep.iter().map(|&i| rows[i as usize]).collect();
    Ok((batch, Arc::new(ids), rows))
}
