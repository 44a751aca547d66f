//! The LanceDB table: connection, mode checks, and one streaming write per run.
//!
//! Rows stream into a single `create_table`/`add` call, so a run makes one commit with large
//! fragments (no pile of tiny files), `overwrite` replaces the table atomically at the end, and a
//! failed run leaves the table as it was.

use super::{FIELD_DIMENSION, FIELD_MODEL_ID, FIELD_PARAMS};
use crate::clients::store::{lance_options, Stores};
use crate::config::WriteMode;
use crate::resolve::Target;
use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use lancedb::arrow::{SendableRecordBatchStream, SimpleRecordBatchStream};
use lancedb::database::CreateTableMode;
use lancedb::table::AddDataMode;
use std::path::Path;
use tokio::sync::mpsc;

/// An open LanceDB database (callers name it `sink::Database`, never LanceDB itself).
pub type Database = lancedb::Connection;

/// Checks that a local database folder exists or can be created, and can be written.
pub fn check_reachable(target: &Target) -> Result<()> {
    let Some(dir) = &target.local_dir else {
        return Ok(());
    };
    let mut probe: &Path = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => {
                // Permission bits do not tell (root, read-only mounts, ACLs): try to write.
                return match tempfile::Builder::new()
                    .prefix(".embedpipe-write-check")
                    .tempfile_in(probe)
                {
                    Ok(_) => Ok(()),
                    Err(e) => bail!(
                        "{} cannot be written ({}), so the table cannot be written there",
                        probe.display(),
                        e.kind()
                    ),
                };
            }
            Ok(_) => bail!(
                "{} exists and is not a folder; the sink uri must be a folder",
                probe.display()
            ),
            Err(_) => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => return Ok(()),
            },
        }
    }
}

/// Checks that the database prefix in S3 can be listed and written — the bucket exists, the
/// endpoint answers, the credentials may write there — by writing and removing a small object,
/// before any model call.
pub async fn check_reachable_remote(target: &Target, stores: &Stores) -> Result<()> {
    let Some(db) = &target.remote else {
        return Ok(());
    };
    stores.probe(db).await?;
    let probe = db.join(&format!(
        ".embedpipe-write-check-{}",
        blake3::hash(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes()
        )
        .to_hex()
        .get(..16)
        .unwrap_or_default()
    ));
    stores
        .put(&probe, b"embedpipe write check\n".to_vec())
        .await?;
    stores.delete(&probe).await
}

/// The database as LanceDB and Lance are given it: an absolute path (lancedb reads a bare
/// relative name like `db` as a LanceDB Cloud URI), or the S3 URI.
pub fn database_uri(target: &Target) -> String {
    match &target.local_dir {
        Some(dir) => std::path::absolute(dir)
            .unwrap_or_else(|_| dir.clone())
            .to_string_lossy()
            .into_owned(),
        None => target.uri.clone(),
    }
}

pub async fn connect(target: &Target) -> Result<Database> {
    let uri = database_uri(target);
    let mut builder = lancedb::connect(&uri);
    if target.remote.is_some() {
        builder = builder.storage_options(lance_options(&target.storage));
    }
    builder
        .execute()
        .await
        .with_context(|| format!("cannot open LanceDB database {}", target.uri))
}

/// Rows of an existing table.
pub async fn row_count(conn: &Database, table: &str) -> Result<u64> {
    let t = conn.open_table(table).execute().await?;
    Ok(t.count_rows(None).await? as u64)
}

/// The table, if it exists. A table folder holding only a sharded run's staged data files (no
/// version committed yet) is no table.
pub async fn open_existing(conn: &Database, table: &str) -> Result<Option<lancedb::Table>> {
    let names = conn.table_names().execute().await?;
    if !names.iter().any(|n| n == table) {
        return Ok(None);
    }
    match conn.open_table(table).execute().await {
        Ok(t) => Ok(Some(t)),
        Err(lancedb::Error::TableNotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open table `{table}`")),
    }
}

/// The table's schema, if it exists.
pub async fn existing_schema(conn: &Database, table: &str) -> Result<Option<SchemaRef>> {
    match open_existing(conn, table).await? {
        Some(t) => Ok(Some(t.schema().await?)),
        None => Ok(None),
    }
}

/// Checks the write mode against the table as it is.
pub fn check_mode(
    mode: WriteMode,
    target: &Target,
    existing: Option<&Schema>,
    ours: &Schema,
) -> Result<()> {
    match (mode, existing) {
        (WriteMode::Create, Some(_)) => bail!(
            "table `{}` already exists in {}; set `mode = \"overwrite\"` to replace it or `mode = \"append\"` to add to it",
            target.table,
            target.uri
        ),
        (WriteMode::Append, Some(theirs)) => check_compatible(theirs, ours, &target.table),
        (WriteMode::Incremental, Some(theirs)) => {
            check_same_space(theirs, ours, &target.table)?;
            check_compatible(theirs, ours, &target.table)
        }
        _ => Ok(()),
    }
}

/// The vector-space guard of incremental runs: every vector column was made by the same model,
/// dimension and parameters as this pipeline would make it.
fn check_same_space(theirs: &Schema, ours: &Schema, table: &str) -> Result<()> {
    for f in ours.fields() {
        let Some(our_model) = f.metadata().get(FIELD_MODEL_ID) else {
            continue;
        };
        let Ok(t) = theirs.field_with_name(f.name()) else {
            bail!("table `{table}` has no vector column `{}`: this pipeline adds a step. Run with --reindex to embed every row again (the table is rewritten)", f.name());
        };
        let get = |m: &std::collections::HashMap<String, String>, k: &str| {
            m.get(k).cloned().unwrap_or_else(|| "?".into())
        };
        let (a, b) = (t.metadata(), f.metadata());
        for (key, what) in [
            (FIELD_MODEL_ID, "model"),
            (FIELD_DIMENSION, "dimension"),
            (FIELD_PARAMS, "parameters"),
        ] {
            if get(a, key) != get(b, key) {
                bail!(
                    "the {what} of vector column `{}` changed: table `{table}` holds vectors made by {} ({} dims, {}), this pipeline makes them with {} ({} dims, {}). Vectors of different spaces cannot be mixed: run with --reindex to embed every row again (the table is rewritten), or write to another table",
                    f.name(),
                    get(a, FIELD_MODEL_ID),
                    get(a, FIELD_DIMENSION),
                    get(a, FIELD_PARAMS),
                    our_model,
                    get(b, FIELD_DIMENSION),
                    get(b, FIELD_PARAMS),
                );
            }
        }
    }
    Ok(())
}

/// An append must match the table's columns and vector spaces.
fn check_compatible(theirs: &Schema, ours: &Schema, table: &str) -> Result<()> {
    for f in ours.fields() {
        let Ok(t) = theirs.field_with_name(f.name()) else {
            bail!("table `{table}` has no column `{}`; appending would change its schema. Use mode = \"overwrite\"", f.name());
        };
        if t.data_type() != f.data_type() {
            bail!("table `{table}` column `{}` is {}, this pipeline writes {}; use mode = \"overwrite\"", f.name(), t.data_type(), f.data_type());
        }
        for key in [FIELD_MODEL_ID, FIELD_DIMENSION] {
            if let (Some(a), Some(b)) = (t.metadata().get(key), f.metadata().get(key)) {
                if a != b {
                    bail!("table `{table}` column `{}` holds vectors from {a}, this pipeline makes them with {b}; vectors of different models cannot share a column. Use mode = \"overwrite\" or another `vector` column", f.name());
                }
            }
        }
    }
    if let Some(extra) = theirs
        .fields()
        .iter()
        .find(|t| ours.field_with_name(t.name()).is_err())
    {
        bail!("table `{table}` has a column `{}` this pipeline does not write; use mode = \"overwrite\"", extra.name());
    }
    Ok(())
}

/// A write in progress: batches sent here stream into one LanceDB commit.
pub struct Writer {
    tx: Option<mpsc::Sender<lancedb::Result<RecordBatch>>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// A writer dropped without [`Writer::finish`] (an early return, a panic) must not commit:
/// its stream would simply end, and Lance would commit what it got. The task is cancelled first.
impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Writer {
    /// Starts the write. `exists` tells whether the table is there (for append).
    pub async fn start(
        conn: Database,
        target: &Target,
        mode: WriteMode,
        schema: SchemaRef,
        exists: bool,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<lancedb::Result<RecordBatch>>(4);
        // Fused: Lance may poll a stream again after its end (an append of no rows does).
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .fuse()
        .boxed();
        let stream: SendableRecordBatchStream =
            Box::pin(SimpleRecordBatchStream { schema, stream });
        let table = target.table.clone();
        let task = tokio::spawn(async move {
            match (mode, exists) {
                (WriteMode::Append, true) => {
                    let t = conn.open_table(&table).execute().await?;
                    t.add(stream).mode(AddDataMode::Append).execute().await?;
                }
                (WriteMode::Overwrite, _) => {
                    conn.create_table(&table, stream)
                        .mode(CreateTableMode::Overwrite)
                        .execute()
                        .await?;
                }
                _ => {
                    conn.create_table(&table, stream)
                        .mode(CreateTableMode::Create)
                        .execute()
                        .await?;
                }
            }
            Ok(())
        });
        Ok(Self {
            tx: Some(tx),
            task: Some(task),
        })
    }

    /// Sends a batch; fails if the write has already failed.
    pub async fn send(&self, batch: RecordBatch) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .expect("the stream is open until finish or abort");
        if tx.send(Ok(batch)).await.is_err() {
            bail!("the table write stopped early (see the error below)");
        }
        Ok(())
    }

    /// Ends the stream and waits for the commit.
    pub async fn finish(mut self) -> Result<()> {
        let task = self.task.take().expect("finished once");
        drop(self.tx.take());
        task.await
            .map_err(|e| anyhow!("table writer panicked: {e}"))?
            .context("writing the LanceDB table")
    }

    /// Aborts the write: nothing is committed. Returns the writer's own error when the write had
    /// already failed by itself (the likely cause of the abort).
    pub async fn abort(mut self) -> Option<anyhow::Error> {
        let task = self.task.take().expect("aborted once");
        let own_failure = task.is_finished();
        if let Some(tx) = self.tx.take() {
            let _ = tx
                .send(Err(lancedb::Error::Runtime {
                    message: ABORTED.to_string(),
                }))
                .await;
        }
        match task.await {
            Ok(Err(e)) if own_failure => Some(e.context("writing the LanceDB table")),
            Err(e) if e.is_panic() => Some(anyhow!("table writer panicked: {e}")),
            _ => None,
        }
    }
}

const ABORTED: &str = "embedpipe run aborted";
