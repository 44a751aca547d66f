//! Parquet files: footer-only schema reads, column projection, row-group streaming.

use super::{drop_rows, tabular_ids, BatchIter, InputFile, ReadFailure, SourceBatch, SourcePlan};
use crate::config::Pipeline;
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::fs::File;

fn builder(file: &InputFile) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(&file.path).with_context(|| format!("{}: cannot open", file.display))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| {
        anyhow!("{}: not a readable Parquet file ({e}); is it truncated, still being written, or another format?", file.display)
    })
}

/// The schema shared by all files and their total row count, from the footers alone; files
/// must agree on common columns.
pub fn schema(_pipeline: &Pipeline, files: &[InputFile]) -> Result<(SchemaRef, u64)> {
    let first_builder = builder(&files[0])?;
    let first = first_builder.schema().clone();
    let mut rows = first_builder.metadata().file_metadata().num_rows() as u64;
    for f in &files[1..] {
        let b = builder(f)?;
        rows += b.metadata().file_metadata().num_rows() as u64;
        let s = b.schema().clone();
        for field in first.fields() {
            match s.field_with_name(field.name()) {
                Ok(other) if other.data_type() == field.data_type() => {}
                Ok(other) => bail!(
                    "{}: column `{}` is {} but {} has it as {}; all files of a source must agree",
                    f.display,
                    field.name(),
                    other.data_type(),
                    files[0].display,
                    field.data_type()
                ),
                Err(_) => bail!(
                    "{}: has no column `{}` (which {} has); all files of a source must agree",
                    f.display,
                    field.name(),
                    files[0].display
                ),
            }
        }
    }
    Ok((first, rows))
}

pub fn open(
    pipeline: &Pipeline,
    plan: &SourcePlan,
    columns: &[String],
    id_column: Option<String>,
) -> Result<BatchIter> {
    let batch_rows = pipeline.batch_rows();
    let files = plan.files.clone();
    let columns = columns.to_vec();
    let mut current: Option<(InputFile, ParquetRecordBatchReader, u64)> = None;
    let mut next_file = 0usize;
    let iter = std::iter::from_fn(move || loop {
        if current.is_none() {
            let file = files.get(next_file)?.clone();
            next_file += 1;
            let reader = (|| -> Result<ParquetRecordBatchReader> {
                let b = builder(&file)?;
                let arrow_schema = b.schema().clone();
                let roots: Vec<usize> = columns
                    .iter()
                    .map(|c| {
                        arrow_schema
                            .index_of(c)
                            .map_err(|_| anyhow!("{}: has no column `{c}`", file.display))
                    })
                    .collect::<Result<_>>()?;
                let mask = ProjectionMask::roots(b.parquet_schema(), roots);
                Ok(b.with_projection(mask)
                    .with_batch_size(batch_rows)
                    .build()?)
            })();
            match reader {
                Ok(r) => current = Some((file, r, 0)),
                Err(e) => return Some(Err(e)),
            }
        }
        let (file, reader, rows_done) = current.as_mut().expect("set above");
        match reader.next() {
            None => current = None,
            Some(Err(e)) => {
                let at = *rows_done + 1;
                let display = file.display.clone();
                current = None;
                return Some(Err(anyhow!(
                    "{display}: cannot decode rows from row {at} on ({e}); the file is corrupt"
                )));
            }
            Some(Ok(batch)) => {
                let start = *rows_done;
                *rows_done += batch.num_rows() as u64;
                let rows: Vec<u64> = (start + 1..=*rows_done).collect();
                return Some(finish(file, batch, rows, id_column.as_deref()));
            }
        }
    });
    Ok(Box::new(iter))
}

/// Attaches ids to a tabular batch and dead-letters rows without one.
pub(crate) fn finish(
    file: &InputFile,
    batch: arrow::record_batch::RecordBatch,
    rows: Vec<u64>,
    id_column: Option<&str>,
) -> Result<SourceBatch> {
    let (ids, null_ids) = tabular_ids(&batch, id_column, file, &rows)?;
    let mut failures = Vec::new();
    let (batch, ids, rows) = if null_ids.is_empty() {
        (batch, ids, rows)
    } else {
        for &i in &null_ids {
            failures.push(ReadFailure {
                file: file.display.clone(),
                row: Some(rows[i]),
                id: None,
                kind: "missing_id",
                message: format!("id column `{}` is null or empty", id_column.unwrap_or("id")),
            });
        }
        drop_rows(&batch, &ids, &rows, &null_ids)?
    };
    Ok(SourceBatch {
        file: file.display.clone(),
        batch,
        ids,
        rows,
        failures,
    })
}
