//! Staged writes of sharded runs (Lance's distributed write): each worker writes its rows as
//! data files of the table *without committing*, and hands back the fragments it wrote; one
//! commit later makes every shard's fragments one table version.
//!
//! Until that commit no reader sees the files (no manifest names them), so a killed worker or
//! a refused commit leaves the table exactly as it was; the orphaned files are removed by the
//! table's cleanup of unreferenced files.

use crate::clients::store::lance_options;
use crate::config::WriteMode;
use crate::resolve::Target;
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use lance::dataset::transaction::{Operation, Transaction};
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode as LanceMode, WriteParams};
use lance::deps::datafusion::error::DataFusionError;
use lance::deps::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lance::deps::datafusion::physical_plan::SendableRecordBatchStream;
use lance::table::format::Fragment;
use lance_io::object_store::{ObjectStoreParams, StorageOptionsAccessor};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What one shard wrote: its fragments (uncommitted, numbered at the commit) and the table
/// version it read, as JSON in the shard's report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StagedFragments {
    /// The table version the shard wrote against (0: the table did not exist).
    pub read_version: u64,
    /// `overwrite` (a new table, or one replaced) or `append`.
    pub operation: String,
    pub fragments: Vec<Fragment>,
    pub rows: u64,
}

/// The table's own location, as Lance names it (`<database>/<table>.lance`).
pub fn table_uri(target: &Target) -> String {
    let db = super::table::database_uri(target);
    format!("{}/{}.lance", db.trim_end_matches('/'), target.table)
}

fn store_params(target: &Target) -> Option<ObjectStoreParams> {
    target.remote.as_ref()?;
    let options = lance_options(&target.storage).into_iter().collect();
    Some(ObjectStoreParams {
        storage_options_accessor: Some(Arc::new(StorageOptionsAccessor::with_static_options(
            options,
        ))),
        ..Default::default()
    })
}

/// A staged write in progress: batches sent here become data files of the table, not committed.
pub struct StagedWriter {
    tx: Option<mpsc::Sender<Result<RecordBatch, DataFusionError>>>,
    task: Option<tokio::task::JoinHandle<Result<Transaction>>>,
    rows: u64,
}

impl Drop for StagedWriter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl StagedWriter {
    /// Starts writing data files for `mode` (`create` and `overwrite` stage a replacement of
    /// the whole table, `append` an addition to it).
    pub fn start(target: &Target, mode: WriteMode, schema: SchemaRef) -> Self {
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, DataFusionError>>(4);
        // Fused: Lance may poll a stream again after its end.
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .fuse();
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema, stream));
        let uri = table_uri(target);
        let params = WriteParams {
            mode: match mode {
                WriteMode::Append => LanceMode::Append,
                _ => LanceMode::Overwrite,
            },
            store_params: store_params(target),
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            InsertBuilder::new(uri.as_str())
                .with_params(&params)
                .execute_uncommitted_stream(stream)
                .await
                .context("writing the shard's data files")
        });
        Self {
            tx: Some(tx),
            task: Some(task),
            rows: 0,
        }
    }

    pub async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let tx = self.tx.as_ref().expect("open until finish");
        if tx.send(Ok(batch)).await.is_err() {
            bail!("the shard's data files stopped being written (see the error below)");
        }
        Ok(())
    }

    /// Ends the stream; the fragments written, for the commit.
    pub async fn finish(mut self, ours: &Schema) -> Result<StagedFragments> {
        drop(self.tx.take());
        let task = self.task.take().expect("finished once");
        let txn = task
            .await
            .map_err(|e| anyhow!("shard writer panicked: {e}"))??;
        let (operation, fragments) = match txn.operation {
            Operation::Append { fragments } => ("append", fragments),
            Operation::Overwrite {
                schema, fragments, ..
            } => {
                // The commit rebuilds the schema from the Arrow schema: its field ids must be the
                // ones these files were written with.
                let rebuilt = lance::datatypes::Schema::try_from(ours)?;
                if field_ids(&schema) != field_ids(&rebuilt) {
                    bail!("internal: the staged files' field ids differ from the table schema's");
                }
                ("overwrite", fragments)
            }
            other => bail!("internal: unexpected staged operation {other}"),
        };
        Ok(StagedFragments {
            read_version: txn.read_version,
            operation: operation.into(),
            fragments,
            rows: self.rows,
        })
    }

    /// Stops writing; the files written so far are never committed.
    pub async fn abort(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx
                .send(Err(DataFusionError::Execution(
                    "embedpipe shard aborted".into(),
                )))
                .await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn field_ids(schema: &lance::datatypes::Schema) -> Vec<(String, i32)> {
    schema
        .fields_pre_order()
        .map(|f| (f.name.clone(), f.id))
        .collect()
}

/// The version before the commit and the id of the commit's transaction, recorded before
/// it is made: a commit that crashed after Lance committed is recognised, not made twice.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CommitIntent {
    pub uuid: String,
    pub read_version: u64,
}

impl CommitIntent {
    pub fn new(shards: &[StagedFragments]) -> Self {
        Self {
            uuid: uuid_v4(),
            read_version: shards.iter().map(|s| s.read_version).min().unwrap_or(0),
        }
    }
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = *blake3::hash(
        format!(
            "{:?}{}{}",
            std::time::SystemTime::now(),
            std::process::id(),
            fastrand::u64(..)
        )
        .as_bytes(),
    )
    .as_bytes()
    .first_chunk()
    .expect("32 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The table version a transaction made, if it was committed after `intent.read_version`.
pub async fn find_commit(target: &Target, intent: &CommitIntent) -> Result<Option<u64>> {
    let uri = table_uri(target);
    let Some(ds) = open_dataset(target).await? else {
        return Ok(None);
    };
    let latest = ds.version().version;
    for v in (intent.read_version + 1)..=latest {
        match ds.read_transaction_by_version(v).await {
            Ok(Some(t)) if t.uuid == intent.uuid => return Ok(Some(v)),
            Ok(_) => {}
            // A version pruned since (retention keeps the newest, and ours would be among them).
            Err(lance::Error::NotFound { .. } | lance::Error::VersionNotFound { .. }) => {}
            // Anything else: we cannot tell, so we must not commit again.
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read version {v} of {uri} to see whether this run was committed"
                    )
                })
            }
        }
    }
    Ok(None)
}

/// Whether the table was replaced (an `Overwrite`: a new table, `--reindex`, an overwrite run)
/// after `version`, or dropped: an incremental run's changes were computed against the old
/// table and would leave the new one partial.
pub async fn replaced_since(target: &Target, version: u64) -> Result<bool> {
    let uri = table_uri(target);
    let Some(ds) = open_dataset(target).await? else {
        return Ok(true);
    };
    for v in (version + 1)..=ds.version().version {
        match ds.read_transaction_by_version(v).await {
            Ok(Some(t)) if matches!(t.operation, Operation::Overwrite { .. }) => return Ok(true),
            Ok(_) => {}
            Err(lance::Error::NotFound { .. } | lance::Error::VersionNotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read version {v} of {uri}")),
        }
    }
    Ok(false)
}

/// The table's current version, if it exists.
pub async fn current_version(target: &Target) -> Result<Option<u64>> {
    Ok(open_dataset(target).await?.map(|ds| ds.version().version))
}

/// The table as Lance sees it, if it has a committed version.
async fn open_dataset(target: &Target) -> Result<Option<lance::Dataset>> {
    let uri = table_uri(target);
    let mut builder = lance::dataset::builder::DatasetBuilder::from_uri(&uri);
    if let Some(p) = store_params(target) {
        builder = builder.with_read_params(lance::dataset::ReadParams {
            store_options: Some(p),
            ..Default::default()
        });
    }
    match builder.load().await {
        Ok(ds) => Ok(Some(ds)),
        Err(lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open {uri}")),
    }
}

/// Commits every shard's fragments as one table version: one `Append`, or one `Overwrite`
/// (create, overwrite) whose schema is `schema`, under the transaction id `intent.uuid`.
/// Returns the new version.
pub async fn commit_fragments(
    target: &Target,
    schema: &Schema,
    shards: Vec<StagedFragments>,
    intent: &CommitIntent,
) -> Result<u64> {
    let Some(first) = shards.first() else {
        bail!("internal: nothing to commit");
    };
    let operation = first.operation.clone();
    if shards.iter().any(|s| s.operation != operation) {
        bail!("the shards staged different operations (some append, some overwrite): the table changed between them; run every shard again");
    }
    let read_version = intent.read_version;
    let fragments: Vec<Fragment> = shards.into_iter().flat_map(|s| s.fragments).collect();
    let op = match operation.as_str() {
        "append" => Operation::Append { fragments },
        _ => {
            let schema = lance::datatypes::Schema::try_from(schema)?;
            Operation::Overwrite {
                schema,
                fragments,
                config_upsert_values: None,
                initial_bases: None,
            }
        }
    };
    let uri = table_uri(target);
    let mut builder = CommitBuilder::new(uri.as_str());
    if let Some(p) = store_params(target) {
        builder = builder.with_store_params(p);
    }
    let ds = builder
        .execute(Transaction {
            uuid: intent.uuid.clone(),
            ..Transaction::new(read_version, op, None)
        })
        .await
        .with_context(|| format!("committing the staged fragments to {uri}"))?;
    Ok(ds.version().version)
}
