//! Parquet files: footer-only schema reads, column projection, row-group streaming. Files in S3
//! are read by ranges: the footer (with its metadata, usually in one GET), then only the
//! projected column chunks of each row group, never the whole file.

use super::{
    drop_rows, need, object_size, remote_for, tabular_ids, BatchIter, InputFile, ReadFailure,
    Remote, SourceBatch, SourceFiles,
};
use crate::clients::store::{explain, Stores};
use crate::util::{balanced, Shard};
use crate::util::{Location, S3Uri};
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::runtime::Handle;

/// Bytes read from the end of an S3 file first: footer and metadata usually fit, so one GET.
const FOOTER_HINT: usize = 64 * 1024;
/// Footers of S3 files read at once by the survey.
const FOOTERS_AT_ONCE: usize = 8;

fn builder(file: &InputFile, path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", file.display))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| unreadable(file, e))
}

/// A Parquet file in S3 as the async reader sees it: byte ranges, fetched by ranged GETs.
struct S3Parquet {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    uri: S3Uri,
    size: u64,
}

/// An S3 read that failed: not the file's fault, so never reported as a corrupt file.
#[derive(Debug)]
struct StoreError(String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// The S3 read failure behind a Parquet error, if that is what it is.
fn store_error(e: &ParquetError) -> Option<&StoreError> {
    match e {
        ParquetError::External(inner) => inner.downcast_ref::<StoreError>(),
        _ => None,
    }
}

impl S3Parquet {
    fn failed(&self, e: object_store::Error) -> ParquetError {
        let message = explain(e, "read", &self.uri).to_string();
        ParquetError::External(Box::new(StoreError(message)))
    }
}

impl AsyncFileReader for S3Parquet {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        Box::pin(async move {
            let got = self.store.get_range(&self.path, range).await;
            got.map_err(|e| self.failed(e))
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        Box::pin(async move {
            let got = self.store.get_ranges(&self.path, &ranges).await;
            got.map_err(|e| self.failed(e))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
}

/// A reader of the S3 file `uri` that has read its footer.
async fn s3_builder(
    file: &InputFile,
    uri: &S3Uri,
    stores: &Stores,
) -> Result<ParquetRecordBatchStreamBuilder<S3Parquet>> {
    let size = object_size(stores, file, uri).await?;
    let (store, path) = stores.locate(uri)?;
    let reader = S3Parquet {
        store,
        path,
        uri: uri.clone(),
        size,
    };
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| unreadable(file, e))
}

/// Why a file's footer cannot be had: the store's error (it names the URI), else the file is no
/// Parquet.
fn unreadable(file: &InputFile, e: ParquetError) -> anyhow::Error {
    match store_error(&e) {
        Some(read) => anyhow!("{read}"),
        None => anyhow!(
            "{}: not a readable Parquet file ({e}); is it truncated, still being written, or another format?",
            file.display
        ),
    }
}

/// The schema, row count and rows per row group of one file, from its footer.
async fn footer(file: &InputFile, stores: Option<&Stores>) -> Result<(SchemaRef, u64, Vec<u64>)> {
    fn parts<T>(b: &ArrowReaderBuilder<T>) -> (SchemaRef, u64, Vec<u64>) {
        let rows = b.metadata().file_metadata().num_rows() as u64;
        let groups = b
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect();
        (b.schema().clone(), rows, groups)
    }
    match &file.location {
        Location::Local(path) => Ok(parts(&builder(file, path)?)),
        Location::S3(uri) => Ok(parts(&s3_builder(file, uri, need(stores)?).await?)),
    }
}

/// The schema shared by all files, their total row count and each file's rows per row group,
/// from the footers alone (those in S3 several at once); files must agree on common columns.
pub async fn schema(
    files: &[InputFile],
    stores: Option<&Stores>,
) -> Result<(SchemaRef, u64, Vec<Vec<u64>>)> {
    let mut footers = std::pin::pin!(futures::stream::iter(files)
        .map(|f| async move { footer(f, stores).await.map(|footer| (f, footer)) })
        .buffered(FOOTERS_AT_ONCE));
    let Some(first) = footers.next().await else {
        bail!("the source has no files");
    };
    let (_, (first, mut rows, groups)) = first?;
    let mut row_groups = vec![groups];
    while let Some(next) = footers.next().await {
        let (f, (s, n, groups)) = next?;
        rows += n;
        row_groups.push(groups);
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
    Ok((first, rows, row_groups))
}

/// What one shard reads of one file: a contiguous range of its row groups, and the file row
/// number its first row has (so derived ids and dead letters name the file's own rows).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slice {
    pub file: usize,
    pub row_groups: Vec<usize>,
    pub first_row: u64,
}

/// The row-group slices of `shard`: all row groups of all files in order, cut into contiguous
/// ranges balanced by row count (every worker computes the same from the same footers).
pub(crate) fn slices(row_groups: &[Vec<u64>], shard: Shard) -> Vec<Slice> {
    let sizes: Vec<u64> = row_groups.iter().flatten().copied().collect();
    let owners = balanced(&sizes, shard.count);
    let mut out: Vec<Slice> = Vec::new();
    let mut unit = 0;
    for (file, groups) in row_groups.iter().enumerate() {
        let mut first_row = 0;
        for (g, &rows) in groups.iter().enumerate() {
            if owners[unit] == shard.index {
                match out.last_mut() {
                    Some(s) if s.file == file => s.row_groups.push(g),
                    _ => out.push(Slice {
                        file,
                        row_groups: vec![g],
                        first_row,
                    }),
                }
            }
            first_row += rows;
            unit += 1;
        }
    }
    out
}

/// Reads only `columns` (whole top-level columns), `batch_rows` rows at a time.
fn project<T>(
    b: ArrowReaderBuilder<T>,
    file: &InputFile,
    columns: &[String],
    batch_rows: usize,
) -> Result<ArrowReaderBuilder<T>> {
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
    Ok(b.with_projection(mask).with_batch_size(batch_rows))
}

/// The batches of one open file.
enum Rows {
    Local(ParquetRecordBatchReader),
    /// Polled from the blocking thread on the runtime captured in `open`.
    S3(Pin<Box<ParquetRecordBatchStream<S3Parquet>>>, Handle),
}

impl Rows {
    fn open(
        file: &InputFile,
        columns: &[String],
        batch_rows: usize,
        remote: Option<&Remote>,
        row_groups: Option<&[usize]>,
    ) -> Result<Self> {
        match &file.location {
            Location::Local(path) => {
                let mut b = project(builder(file, path)?, file, columns, batch_rows)?;
                if let Some(g) = row_groups {
                    b = b.with_row_groups(g.to_vec());
                }
                Ok(Self::Local(b.build()?))
            }
            Location::S3(uri) => {
                let remote = remote_for(remote)?;
                let b = remote
                    .runtime
                    .block_on(s3_builder(file, uri, &remote.stores))?;
                let mut b = project(b, file, columns, batch_rows)?;
                if let Some(g) = row_groups {
                    b = b.with_row_groups(g.to_vec());
                }
                Ok(Self::S3(Box::pin(b.build()?), remote.runtime.clone()))
            }
        }
    }

    /// The next batch; an error says why the file cannot be read from row `at` on.
    fn next(&mut self, file: &InputFile, at: u64) -> Option<Result<RecordBatch>> {
        let corrupt = |e: &dyn std::fmt::Display| {
            anyhow!(
                "{}: cannot decode rows from row {at} on ({e}); the file is corrupt",
                file.display
            )
        };
        Some(match self {
            Self::Local(reader) => reader.next()?.map_err(|e| corrupt(&e)),
            Self::S3(stream, runtime) => {
                runtime
                    .block_on(stream.next())?
                    .map_err(|e| match store_error(&e) {
                        Some(read) => anyhow!(
                            "{}: cannot read rows from row {at} on: {read}",
                            file.display
                        ),
                        None => corrupt(&e),
                    })
            }
        })
    }
}

pub fn open(
    batch_rows: usize,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
    remote: Option<Remote>,
    shard: Shard,
) -> Result<BatchIter> {
    let files = survey.files.clone();
    let columns = columns.to_vec();
    // Whole files, or the row-group slices of this shard.
    let plan: Vec<Slice> = match shard.is_whole() {
        true => (0..files.len())
            .map(|file| Slice {
                file,
                row_groups: Vec::new(),
                first_row: 0,
            })
            .collect(),
        false => slices(&survey.row_groups, shard),
    };
    let whole = shard.is_whole();
    let mut current: Option<(InputFile, Rows, u64)> = None;
    let mut next_slice = 0usize;
    let iter = std::iter::from_fn(move || loop {
        if current.is_none() {
            let slice = plan.get(next_slice)?.clone();
            next_slice += 1;
            let file = files[slice.file].clone();
            let groups = (!whole).then_some(slice.row_groups.as_slice());
            match Rows::open(&file, &columns, batch_rows, remote.as_ref(), groups) {
                Ok(r) => current = Some((file, r, slice.first_row)),
                Err(e) => return Some(Err(e)),
            }
        }
        let (file, rows, rows_done) = current.as_mut().expect("set above");
        match rows.next(file, *rows_done + 1) {
            None => current = None,
            Some(Err(e)) => {
                current = None;
                return Some(Err(e));
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
    batch: RecordBatch,
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
        hidden_elsewhere: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::FailureKind;
    use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};

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
        let survey = crate::sources::survey_now(&s).unwrap();
        let columns = survey.column_names();
        crate::sources::open(&s, &survey, &columns, Some(id_column.to_string()), None)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn slices_are_contiguous_row_group_ranges_with_their_first_rows() {
        // Two files: 4 groups of 10 rows, then 2 of 20: 80 rows, 20 per shard of 4.
        let groups = vec![vec![10, 10, 10, 10], vec![20, 20]];
        let of = |index| super::slices(&groups, Shard { index, count: 4 });
        assert_eq!(
            of(0),
            [super::Slice {
                file: 0,
                row_groups: vec![0, 1],
                first_row: 0
            }]
        );
        assert_eq!(
            of(1),
            [super::Slice {
                file: 0,
                row_groups: vec![2, 3],
                first_row: 20
            }]
        );
        assert_eq!(
            of(2),
            [super::Slice {
                file: 1,
                row_groups: vec![0],
                first_row: 0
            }]
        );
        assert_eq!(
            of(3),
            [super::Slice {
                file: 1,
                row_groups: vec![1],
                first_row: 20
            }]
        );
        // One shard: everything, one slice per file.
        let whole = super::slices(&groups, Shard::WHOLE);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].row_groups, [0, 1]);
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
