//! Layer 4, sources (above resolve): Parquet, CSV, image folders and document folders, each a
//! stream of bounded Arrow batches, read as [`SourceSettings`] say (never the pipeline file
//! itself), from local files or from S3.
//!
//! A source runs on a blocking thread and hands [`SourceBatch`]es to the pipeline through a
//! bounded channel, so memory stays flat whatever the dataset size. S3 reads from that thread
//! block on the runtime captured when the source was opened.

mod csv;
pub mod documents;
mod files;
mod folder;
mod images;
mod parquet;

pub use files::{expand_inputs, InputFile};

use crate::clients::store::Stores;
use crate::config::SourceKind;
use crate::resolve::SourceSettings;
use crate::util::{balanced, FailureKind, Location, S3Uri, Shard};
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;
use tokio::runtime::Handle;

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
    /// rows have no number (image and document files, located by their path).
    pub rows: Vec<u64>,
    /// Rows of this stretch of the file that could not be read.
    pub failures: Vec<ReadFailure>,
    /// A read failure that belongs to another shard hides rows of this stretch: some ids of
    /// this shard may be unknown (so it must not delete rows as gone from the source).
    pub hidden_elsewhere: bool,
}

/// A row (or file) that could not be read.
#[derive(Debug, Clone)]
pub struct ReadFailure {
    /// The failure may hide the rows after it (a quote left open swallows the rest of the
    /// file): their ids are unknown, so no row may be deleted as gone from the source.
    pub hides_later_rows: bool,
    pub file: Arc<str>,
    pub row: Option<u64>,
    pub id: Option<String>,
    pub kind: FailureKind,
    pub message: String,
}

/// What a source produces, read off its files without reading the data.
pub struct SourceFiles {
    pub kind: SourceKind,
    pub files: Vec<InputFile>,
    /// Schema of every batch the source will produce.
    pub schema: SchemaRef,
    /// Rows the source holds, when known without reading it (Parquet footers).
    total_rows: Option<u64>,
    /// Parquet: each file's rows per row group (how shards split the source).
    pub(crate) row_groups: Vec<Vec<u64>>,
}

impl SourceFiles {
    /// Rows the source holds, when known without reading it (Parquet footers).
    pub fn total_rows(&self) -> Option<u64> {
        self.total_rows
    }

    /// The names of every column the source has.
    pub fn column_names(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
}

/// An iterator of batches, driven on a blocking thread.
pub type BatchIter = Box<dyn Iterator<Item = Result<SourceBatch>> + Send>;

/// Finds the files and the schema of the source (reads footers / headers only). `stores` is
/// `None` only when the pipeline touches no S3.
pub async fn survey(settings: &SourceSettings, stores: Option<&Stores>) -> Result<SourceFiles> {
    let kind = settings.kind;
    let files = expand_inputs(settings, stores).await?;
    let mut row_groups = Vec::new();
    let (files, schema, total_rows) = match kind {
        SourceKind::Parquet => {
            let (schema, rows, groups) = parquet::schema(&files, stores).await?;
            row_groups = groups;
            (files, schema, Some(rows))
        }
        SourceKind::Csv => {
            // Headers and type inference read through blocking readers (S3 ones block on the
            // runtime), so never on the runtime's own threads.
            let settings = settings.clone();
            let stores = stores.cloned();
            let (files, schema) = tokio::task::spawn_blocking(move || {
                csv::schema(&settings, &files, stores.as_ref()).map(|schema| (files, schema))
            })
            .await??;
            (files, schema, None)
        }
        SourceKind::Images => (files, images::schema(), None),
        SourceKind::Documents => {
            // Local folders are walked to count their documents (S3 ones are not listed twice).
            let settings = settings.documents.clone();
            let (files, rows) = tokio::task::spawn_blocking(move || {
                documents::count(&settings, &files).map(|rows| (files, rows))
            })
            .await??;
            (files, documents::schema(), rows)
        }
    };
    Ok(SourceFiles {
        kind,
        files,
        schema,
        total_rows,
        row_groups,
    })
}

/// [`survey`] for tests that have no runtime of their own.
#[cfg(test)]
pub(crate) fn survey_now(settings: &SourceSettings) -> Result<SourceFiles> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(survey(settings, None))
}

/// The column row ids come from: `id_column`, else a column named `id` (`has` tells whether
/// the source has it) unless the `columns` projection leaves it out. Folder rows (images,
/// documents) use their path.
pub fn id_column(settings: &SourceSettings, has: impl Fn(&str) -> bool) -> Option<String> {
    match &settings.id_column {
        Some(c) => Some(c.clone()),
        None if !matches!(settings.kind, SourceKind::Images | SourceKind::Documents)
            && has("id")
            && settings
                .columns
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| c == "id")) =>
        {
            Some("id".to_string())
        }
        None => None,
    }
}

/// Opens the source, reading only `columns` (which include `id_column`, if any). Called where
/// the runtime is current when any file is in S3; the iterator is then driven on a blocking
/// thread.
pub fn open(
    settings: &SourceSettings,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
    stores: Option<&Stores>,
) -> Result<BatchIter> {
    open_shard(settings, survey, columns, id_column, stores, Shard::WHOLE)
}

/// [`open`] for one shard of a run: Parquet row-group ranges balanced by row count, CSV files
/// balanced by size, folder files by a hash of their path. Every worker computes the same
/// split from the same survey; together the shards read every row once.
pub fn open_shard(
    settings: &SourceSettings,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
    stores: Option<&Stores>,
    shard: Shard,
) -> Result<BatchIter> {
    let remote = Remote::capture(&survey.files, stores)?;
    match survey.kind {
        SourceKind::Parquet => parquet::open(
            settings.batch_rows,
            survey,
            columns,
            id_column,
            remote,
            shard,
        ),
        SourceKind::Csv if !shard.is_whole() => {
            let mine = csv_files(survey, shard)?;
            csv::open(settings, &mine, columns, id_column, remote)
        }
        SourceKind::Csv => csv::open(settings, survey, columns, id_column, remote),
        SourceKind::Images => {
            images::open(&settings.images, settings.batch_rows, survey, remote, shard)
        }
        SourceKind::Documents => documents::open(
            &settings.documents,
            settings.batch_rows,
            survey,
            remote,
            shard,
        ),
    }
}

/// The rows shard `shard` of a run reads: by file ranges ([`open_shard`]), or, when `by_id`
/// (incremental runs: ids are hash-partitioned so shards never upsert or delete the same
/// rows), the whole source filtered to the rows whose id hashes to this shard. Folder sources
/// are split by path, which is their id, so they are never read whole.
pub fn open_for_run(
    settings: &SourceSettings,
    survey: &SourceFiles,
    columns: &[String],
    id_column: Option<String>,
    stores: Option<&Stores>,
    shard: Shard,
    by_id: bool,
) -> Result<BatchIter> {
    let folder = matches!(survey.kind, SourceKind::Images | SourceKind::Documents);
    if !by_id || folder || shard.is_whole() {
        return open_shard(settings, survey, columns, id_column, stores, shard);
    }
    let whole = open_shard(settings, survey, columns, id_column, stores, Shard::WHOLE)?;
    Ok(Box::new(whole.filter_map(move |item| match item {
        Ok(sb) => {
            let sb = sb.keep_shard(shard);
            let keep = sb.batch.num_rows() > 0 || !sb.failures.is_empty() || sb.hidden_elsewhere;
            keep.then_some(Ok(sb))
        }
        Err(e) => Some(Err(e)),
    })))
}

impl SourceBatch {
    /// The rows (and read failures) whose id belongs to `shard`; a failure that names no id
    /// is the first shard's to report.
    pub fn keep_shard(self, shard: Shard) -> SourceBatch {
        let mask: arrow::array::BooleanArray = (0..self.ids.len())
            .map(|i| Some(shard.owns(self.ids.value(i))))
            .collect();
        let batch = arrow::compute::filter_record_batch(&self.batch, &mask)
            .expect("a mask as long as the batch");
        let ids = arrow::compute::filter(self.ids.as_ref(), &mask).expect("same length");
        let ids = Arc::new(
            ids.as_any()
                .downcast_ref::<StringArray>()
                .expect("ids are strings")
                .clone(),
        );
        let rows = self
            .rows
            .iter()
            .zip(mask.values().iter())
            .filter_map(|(r, keep)| keep.then_some(*r))
            .collect();
        let owned = |f: &ReadFailure| match &f.id {
            Some(id) => shard.owns(id),
            None => shard.index == 0,
        };
        let hidden_elsewhere = self.hidden_elsewhere
            || self
                .failures
                .iter()
                .any(|f| f.hides_later_rows && !owned(f));
        let failures = self.failures.into_iter().filter(owned).collect();
        SourceBatch {
            file: self.file,
            batch,
            ids,
            rows,
            failures,
            hidden_elsewhere,
        }
    }
}

/// Where each row of a survey goes among `count` shards, row by row, without reading the data
/// twice (`plan --shards`). Row ids decide for folder sources and `by_id` runs (incremental:
/// ids are hash-partitioned); files and row ranges for the rest.
pub struct ShardMap {
    count: u32,
    by_id: bool,
    /// Per file (by its display name): its shard, or the shard of each row range (1-based,
    /// inclusive).
    files: std::collections::HashMap<Arc<str>, Vec<(u64, u64, u32)>>,
}

impl ShardMap {
    pub fn new(survey: &SourceFiles, count: u32, by_id: bool) -> Result<Self> {
        let mut files: std::collections::HashMap<Arc<str>, Vec<(u64, u64, u32)>> =
            Default::default();
        let by_id = by_id || matches!(survey.kind, SourceKind::Images | SourceKind::Documents);
        if !by_id {
            match survey.kind {
                SourceKind::Parquet => {
                    for index in 0..count {
                        let shard = Shard { index, count };
                        for slice in parquet::slices(&survey.row_groups, shard) {
                            let rows: u64 = slice
                                .row_groups
                                .iter()
                                .map(|&g| survey.row_groups[slice.file][g])
                                .sum();
                            files
                                .entry(survey.files[slice.file].display.clone())
                                .or_default()
                                .push((slice.first_row + 1, slice.first_row + rows, index));
                        }
                    }
                }
                _ => {
                    for (f, owner) in survey.files.iter().zip(csv_owners(survey, count)?) {
                        files
                            .entry(f.display.clone())
                            .or_default()
                            .push((0, u64::MAX, owner));
                    }
                }
            }
        }
        Ok(Self {
            count,
            by_id,
            files,
        })
    }

    /// The shard of a row: its id where ids decide (or the file and row number say nothing),
    /// else its file's or row range's.
    pub fn shard_of(&self, file: &str, row: Option<u64>, id: Option<&str>) -> u32 {
        if !self.by_id {
            if let Some(ranges) = self.files.get(file) {
                let row = row.unwrap_or(0);
                if let Some(r) = ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&row)) {
                    return r.2;
                }
            }
        }
        id.map_or(0, |id| crate::util::shard_of(id, self.count))
    }
}

/// The shard of each CSV file among `count`: contiguous ranges balanced by size.
fn csv_owners(survey: &SourceFiles, count: u32) -> Result<Vec<u32>> {
    let sizes: Vec<u64> = survey
        .files
        .iter()
        .map(|f| match (&f.location, f.size) {
            (_, Some(size)) => Ok(size),
            (Location::Local(path), None) => std::fs::metadata(path)
                .map(|m| m.len())
                .with_context(|| format!("{}: cannot read its size", f.display)),
            // An S3 file listed without its size counts as one unit.
            (Location::S3(_), None) => Ok(1),
        })
        .collect::<Result<_>>()?;
    Ok(balanced(&sizes, count))
}

/// The CSV files of `shard`: whole files, in contiguous ranges balanced by size.
fn csv_files(survey: &SourceFiles, shard: Shard) -> Result<SourceFiles> {
    let owners = csv_owners(survey, shard.count)?;
    Ok(SourceFiles {
        kind: survey.kind,
        files: survey
            .files
            .iter()
            .zip(owners)
            .filter(|(_, o)| *o == shard.index)
            .map(|(f, _)| f.clone())
            .collect(),
        schema: survey.schema.clone(),
        total_rows: None,
        row_groups: Vec::new(),
    })
}

/// The object-store client an S3 path needs.
pub(crate) fn need(stores: Option<&Stores>) -> Result<&Stores> {
    match stores {
        Some(stores) => Ok(stores),
        None => bail!(
            "internal error: a source path is in S3 but no object-store client was set up for it"
        ),
    }
}

/// What a source's blocking thread needs to read S3: the client, and the runtime its requests
/// run on (captured where it is current, since the blocking thread may have none).
#[derive(Clone)]
pub(crate) struct Remote {
    pub stores: Stores,
    pub runtime: Handle,
}

impl Remote {
    /// `None` when no file is in S3, so local sources need no runtime at all.
    pub(crate) fn capture(files: &[InputFile], stores: Option<&Stores>) -> Result<Option<Self>> {
        if !files.iter().any(|f| matches!(f.location, Location::S3(_))) {
            return Ok(None);
        }
        let stores = need(stores)?.clone();
        let runtime = Handle::try_current().map_err(|_| {
            anyhow!(
                "internal error: a source with S3 files must be opened inside the tokio runtime"
            )
        })?;
        Ok(Some(Self { stores, runtime }))
    }

    /// The size of an S3 input (may ask the store, blocking: call on a blocking thread only).
    pub(crate) fn size(&self, file: &InputFile, uri: &S3Uri) -> Result<u64> {
        self.runtime.block_on(object_size(&self.stores, file, uri))
    }
}

/// The captured [`Remote`] of a source with an S3 file.
pub(crate) fn remote_for(remote: Option<&Remote>) -> Result<&Remote> {
    remote.context("internal error: an S3 file was read without the object-store client")
}

/// The size of an S3 input: from its listing, else asked for.
pub(crate) async fn object_size(stores: &Stores, file: &InputFile, uri: &S3Uri) -> Result<u64> {
    match file.size {
        Some(size) => Ok(size),
        None => stores
            .head(uri)
            .await?
            .with_context(|| format!("object {uri} does not exist")),
    }
}

/// A row of a tabular batch without a usable id, to be dead-lettered and dropped.
#[derive(Debug, Clone)]
pub(crate) struct BadId {
    /// Index of the row in the batch.
    pub row: usize,
    /// `missing_id` (null, empty, only whitespace) or `bad_id` (a value that is no stable key).
    pub kind: FailureKind,
    pub message: String,
}

/// Whether a column holds floats: their text is no stable key (`1e3` and `1000.0` are one
/// number; NaN is none), so float ids are refused rather than guessed at.
fn is_float(dt: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    match dt {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => true,
        DataType::Dictionary(_, values) => is_float(values),
        _ => false,
    }
}

/// Builds the id array for a tabular batch: the `id_column` as exact text (strings as they are,
/// integers as their decimal text), or `<file>#<row>`. Rows without a usable id are returned,
/// in row order, as [`BadId`]s (the caller must dead-letter and drop them).
pub(crate) fn tabular_ids(
    batch: &RecordBatch,
    id_column: Option<&str>,
    file: &InputFile,
    rows: &[u64],
) -> Result<(Arc<StringArray>, Vec<BadId>)> {
    match id_column {
        Some(col) => {
            let column = batch.column_by_name(col).expect("id column is projected");
            let float = is_float(column.data_type());
            let array: ArrayRef = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
            let ids = array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone();
            // Nulls of the column itself, so a value the cast could not turn into text is told
            // apart from a null.
            let source_nulls = column.logical_nulls();
            let mut bad = Vec::new();
            for i in 0..ids.len() {
                let source_null = source_nulls.as_ref().is_some_and(|n| n.is_null(i));
                let (kind, what) = if source_null {
                    (FailureKind::MissingId, "is null".to_string())
                } else if ids.is_null(i) {
                    (FailureKind::BadId, "cannot be read as text".to_string())
                } else if ids.value(i).is_empty() {
                    (FailureKind::MissingId, "is empty".to_string())
                } else if ids.value(i).trim().is_empty() {
                    (FailureKind::MissingId, "is only whitespace".to_string())
                } else if float {
                    (
                        FailureKind::BadId,
                        format!(
                            "holds the float `{}`; ids must be text or integers",
                            ids.value(i)
                        ),
                    )
                } else {
                    continue;
                };
                bad.push(BadId {
                    row: i,
                    kind,
                    message: format!("id column `{col}` {what}"),
                });
            }
            Ok((Arc::new(ids), bad))
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

#[cfg(test)]
mod shard_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn file() -> InputFile {
        InputFile {
            location: Location::Local("x.parquet".into()),
            size: None,
            display: Arc::from("x.parquet"),
            id_prefix: "x.parquet".into(),
        }
    }

    fn ids_of(array: ArrayRef) -> (Vec<Option<String>>, Vec<(usize, FailureKind)>) {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "id",
            array.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![array]).unwrap();
        let rows: Vec<u64> = (1..=batch.num_rows() as u64).collect();
        let (ids, bad) = tabular_ids(&batch, Some("id"), &file(), &rows).unwrap();
        let ids = (0..ids.len())
            .map(|i| ids.is_valid(i).then(|| ids.value(i).to_string()))
            .collect();
        (ids, bad.iter().map(|b| (b.row, b.kind)).collect())
    }

    #[test]
    fn integer_and_string_ids_are_exact_text() {
        let (ids, bad) = ids_of(Arc::new(Int64Array::from(vec![Some(7), Some(-42), None])));
        assert_eq!(
            ids[..2].to_vec(),
            vec![Some("7".to_string()), Some("-42".to_string())]
        );
        assert_eq!(bad, vec![(2, FailureKind::MissingId)]);
        let (ids, bad) = ids_of(Arc::new(UInt64Array::from(vec![u64::MAX])));
        assert_eq!(ids, vec![Some("18446744073709551615".to_string())]);
        assert!(bad.is_empty());
        let (ids, bad) = ids_of(Arc::new(StringArray::from(vec!["007", " 7 ", "1e3"])));
        assert_eq!(
            ids,
            vec![
                Some("007".to_string()),
                Some(" 7 ".to_string()),
                Some("1e3".to_string())
            ],
            "string ids are kept as they are"
        );
        assert!(bad.is_empty());
    }

    #[test]
    fn blank_ids_are_missing_and_float_ids_are_bad() {
        let (_, bad) = ids_of(Arc::new(StringArray::from(vec![
            Some("a"),
            Some(""),
            Some("  \t"),
            None,
        ])));
        assert_eq!(
            bad,
            vec![
                (1, FailureKind::MissingId),
                (2, FailureKind::MissingId),
                (3, FailureKind::MissingId)
            ]
        );
        let (_, bad) = ids_of(Arc::new(Float64Array::from(vec![
            Some(1.0),
            Some(f64::NAN),
            None,
        ])));
        assert_eq!(
            bad,
            vec![
                (0, FailureKind::BadId),
                (1, FailureKind::BadId),
                (2, FailureKind::MissingId)
            ]
        );
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Float32, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow::array::Float32Array::from(vec![2.5f32]))],
        )
        .unwrap();
        let (_, bad) = tabular_ids(&batch, Some("id"), &file(), &[1]).unwrap();
        assert_eq!(bad[0].kind, FailureKind::BadId);
        assert!(bad[0].message.contains("`2.5`"), "{}", bad[0].message);
    }
}
