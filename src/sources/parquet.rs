//! Parquet files: footer-only schema reads, column projection, row-group streaming.

use super::{drop_rows, tabular_ids, BatchIter, InputFile, ReadFailure, SourceBatch, SourceFiles};
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
pub fn schema(files: &[InputFile]) -> Result<(SchemaRef, u64)> {
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
    batch_rows: usize,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
) -> Result<BatchIter> {
    let files = survey.files.clone();
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

/// Attaches ids to a tabular batch and dead-letters rows without a usable one.
pub(crate) fn finish(
    file: &InputFile,
    batch: arrow::record_batch::RecordBatch,
    rows: Vec<u64>,
    id_column: Option<&str>,
) -> Result<SourceBatch> {
    let (ids, bad_ids) = tabular_ids(&batch, id_column, file, &rows)?;
    let mut failures = Vec::new();
    let (batch, ids, rows) = if bad_ids.is_empty() {
        (batch, ids, rows)
    } else {
        for bad in &bad_ids {
            failures.push(ReadFailure {
                hides_later_rows: false,
                file: file.display.clone(),
                row: Some(rows[bad.row]),
                // Not a usable id, so none is claimed for the row.
                id: None,
                kind: bad.kind,
                message: bad.message.clone(),
            });
        }
        let drop: Vec<usize> = bad_ids.iter().map(|b| b.row).collect();
        drop_rows(&batch, &ids, &rows, &drop)?
    };
    Ok(SourceBatch {
        file: file.display.clone(),
        batch,
        ids,
        rows,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::FailureKind;
    use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    /// Writes `columns` as a Parquet file and reads it back through the source.
    fn read_back(columns: Vec<(&str, ArrayRef)>, id_column: &str) -> Vec<SourceBatch> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(
            schema.clone(),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), schema, None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let text = format!(
            "[source]\ntype = \"parquet\"\npath = \"{}\"\nbatch_size = 2\n\n\
             [[model]]\nname = \"minilm\"\nprovider = \"local\"\n\
             id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
             [[embed]]\nmodel = \"minilm\"\ncolumn = \"title\"\n\n\
             [sink]\nuri = \"db\"\ntable = \"t\"\n",
            path.display()
        );
        let pipeline = crate::resolve::parse(&dir.path().join("p.toml"), &text).unwrap();
        let s = crate::resolve::SourceSettings::resolve(&pipeline);
        let survey = crate::sources::survey(&s).unwrap();
        let columns = survey.column_names();
        crate::sources::open(&s, &survey, &columns, Some(id_column.to_string()))
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn integer_ids_are_their_decimal_text_and_float_ids_are_refused() {
        let titles: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let batches = read_back(
            vec![
                (
                    "id",
                    Arc::new(Int32Array::from(vec![Some(7), Some(42), None])) as ArrayRef,
                ),
                ("title", titles.clone()),
            ],
            "id",
        );
        let ids: Vec<String> = batches
            .iter()
            .flat_map(|b| (0..b.ids.len()).map(|i| b.ids.value(i).to_string()))
            .collect();
        assert_eq!(ids, vec!["7", "42"]);
        let failures: Vec<&ReadFailure> = batches.iter().flat_map(|b| &b.failures).collect();
        assert_eq!(failures.len(), 1);
        assert_eq!(
            (failures[0].kind, failures[0].row),
            (FailureKind::MissingId, Some(3))
        );

        let batches = read_back(
            vec![
                (
                    "key",
                    Arc::new(Float64Array::from(vec![1.0, f64::NAN, 3.5])) as ArrayRef,
                ),
                ("title", titles),
            ],
            "key",
        );
        assert!(batches.iter().all(|b| b.batch.num_rows() == 0));
        let failures: Vec<&ReadFailure> = batches.iter().flat_map(|b| &b.failures).collect();
        assert_eq!(
            failures.iter().map(|f| (f.kind, f.row)).collect::<Vec<_>>(),
            vec![
                (FailureKind::BadId, Some(1)),
                (FailureKind::BadId, Some(2)),
                (FailureKind::BadId, Some(3))
            ]
        );
        assert!(failures.iter().all(|f| f.id.is_none()));
        assert!(
            failures[1].message.contains("NaN"),
            "{}",
            failures[1].message
        );
    }
}
