//! Incremental runs: look up what the table already holds (content hashes by id), upsert new
//! and changed rows by id in chunks (each chunk one commit, so a killed run loses at most one
//! chunk), and delete rows gone from the source.

use super::Database;
use anyhow::{Context, Result};
use arrow::array::{
    Array, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchIterator, StringArray,
};
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::Table;
use std::collections::HashMap;
use std::sync::Arc;

/// Ids per lookup / delete predicate.
const IDS_PER_QUERY: usize = 1000;

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    ids.into_iter().map(quote).collect::<Vec<_>>().join(", ")
}

async fn open(conn: &Database, table: &str) -> Result<Table> {
    conn.open_table(table)
        .execute()
        .await
        .with_context(|| format!("cannot open table `{table}`"))
}

/// The table as it was when the run started: content hashes per id.
pub struct Existing {
    table: Table,
    hash_columns: Vec<String>,
    /// The vector column of each step, in step order (chunk vectors are reused by content).
    vector_columns: Vec<String>,
}

/// Column `i` of `b`, which holds ids or hashes.
fn strings(b: &RecordBatch, i: usize) -> Result<StringArray> {
    b.column(i)
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .context("id and hash columns are strings")
}

/// A chunk row the table holds (chunked tables), as far as re-indexing needs it.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: String,
    /// Where the chunk sits (count, offsets, heading, page): a row whose text is unchanged but
    /// whose place moved is rewritten (with its vectors reused).
    pub place: String,
    /// Content hash per step.
    pub hashes: Vec<String>,
    /// Vector per step.
    pub vectors: Vec<Arc<[f32]>>,
}

/// The place signature of row `r` of `columns` (a chunk's count, offsets, heading, page), the
/// same text whether the values come from the table or from chunk rows being written.
pub fn chunk_place(columns: &[&dyn Array], r: usize) -> String {
    let mut out = String::new();
    for c in columns {
        if c.is_null(r) {
            out.push_str("-|");
            continue;
        }
        let v = arrow::util::display::array_value_to_string(*c, r).unwrap_or_default();
        out.push_str(&v);
        out.push('|');
    }
    out
}

impl Existing {
    /// The table's stored hashes for the steps whose vector columns are `vectors`
    /// (`<vector>_hash`, in step order: `SinkSettings::vectors`).
    pub async fn open(conn: &Database, table: &str, vectors: &[String]) -> Result<Self> {
        let hash_columns = vectors
            .iter()
            .map(|v| super::step_columns(v)[2].clone())
            .collect();
        Ok(Self {
            table: open(conn, table).await?,
            hash_columns,
            vector_columns: vectors.to_vec(),
        })
    }

    /// The table's ids only (appends look up which ids it holds already).
    pub async fn open_ids(conn: &Database, table: &str) -> Result<Self> {
        Ok(Self {
            table: open(conn, table).await?,
            hash_columns: Vec::new(),
            vector_columns: Vec::new(),
        })
    }

    /// Every chunk the table holds of the documents `doc_ids`, by document; `place`: the
    /// columns of its place signature (those the chunk rows being written have).
    pub async fn chunks(
        &self,
        doc_ids: &[&str],
        place: &[String],
    ) -> Result<HashMap<String, Vec<StoredChunk>>> {
        let schema = self.table.schema().await?;
        let place: Vec<String> = place
            .iter()
            .filter(|c| schema.field_with_name(c).is_ok())
            .cloned()
            .collect();
        let mut columns = vec![
            "id".to_string(),
            crate::util::columns::CHUNK_DOC_ID.to_string(),
        ];
        columns.extend(self.hash_columns.iter().cloned());
        columns.extend(self.vector_columns.iter().cloned());
        columns.extend(place.iter().cloned());
        let steps = self.hash_columns.len();
        let mut out: HashMap<String, Vec<StoredChunk>> = HashMap::new();
        for chunk in doc_ids.chunks(IDS_PER_QUERY) {
            let batches: Vec<RecordBatch> = self
                .rows_where(crate::util::columns::CHUNK_DOC_ID, chunk, &columns)
                .await
                .context("looking up the stored chunks of changed documents")?;
            for b in batches {
                let strings = |i: usize| strings(&b, i);
                let (id, doc) = (strings(0)?, strings(1)?);
                let hashes: Vec<StringArray> =
                    (2..2 + steps).map(strings).collect::<Result<_>>()?;
                let vectors: Vec<FixedSizeListArray> = (2 + steps..2 + 2 * steps)
                    .map(|i| {
                        b.column(i)
                            .as_any()
                            .downcast_ref::<FixedSizeListArray>()
                            .cloned()
                            .context("vector columns are fixed-size lists")
                    })
                    .collect::<Result<_>>()?;
                let place_cols: Vec<&dyn Array> = (2 + 2 * steps..b.num_columns())
                    .map(|i| b.column(i).as_ref())
                    .collect();
                for r in 0..b.num_rows() {
                    let stored = StoredChunk {
                        id: id.value(r).to_string(),
                        place: chunk_place(&place_cols, r),
                        hashes: hashes.iter().map(|h| h.value(r).to_string()).collect(),
                        vectors: vectors
                            .iter()
                            .map(|v| {
                                let row = v.value(r);
                                let f = row
                                    .as_any()
                                    .downcast_ref::<Float32Array>()
                                    .context("vectors hold float32")?;
                                Ok(Arc::from(f.values().as_ref()))
                            })
                            .collect::<Result<_>>()?,
                    };
                    out.entry(doc.value(r).to_string())
                        .or_default()
                        .push(stored);
                }
            }
        }
        Ok(out)
    }

    /// The `columns` of the rows whose `key` column is one of `values` (one query).
    async fn rows_where(
        &self,
        key: &str,
        values: &[&str],
        columns: &[String],
    ) -> Result<Vec<RecordBatch>> {
        Ok(self
            .table
            .query()
            .only_if(format!("{key} IN ({})", id_list(values.iter().copied())))
            .select(Select::Columns(columns.to_vec()))
            .execute()
            .await?
            .try_collect()
            .await?)
    }

    /// The stored hashes (one per step) of those `ids` that the table holds.
    pub async fn hashes(&self, ids: &[&str]) -> Result<HashMap<String, Vec<String>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut columns = vec!["id".to_string()];
        columns.extend(self.hash_columns.iter().cloned());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let batches: Vec<RecordBatch> = self
                .rows_where("id", chunk, &columns)
                .await
                .context("looking up existing rows")?;
            for b in batches {
                let strings = |i: usize| strings(&b, i);
                let id = strings(0)?;
                let hashes: Vec<StringArray> =
                    (1..columns.len()).map(strings).collect::<Result<_>>()?;
                for r in 0..b.num_rows() {
                    out.insert(
                        id.value(r).to_string(),
                        hashes.iter().map(|h| h.value(r).to_string()).collect(),
                    );
                }
            }
        }
        Ok(out)
    }
}

/// Which rows of a batch the table already holds unchanged: `rows` are the batch rows that have
/// inputs (the same in every step), `step_hashes[s][pos]` the hash of step `s` for `rows[pos]`.
pub async fn unchanged_rows(
    existing: &Existing,
    ids: &StringArray,
    rows: &[usize],
    step_hashes: &[&[String]],
    n: usize,
) -> Result<Vec<bool>> {
    let wanted: Vec<&str> = rows.iter().map(|&r| ids.value(r)).collect();
    let stored = existing.hashes(&wanted).await?;
    let mut unchanged = vec![false; n];
    for (pos, &row) in rows.iter().enumerate() {
        unchanged[row] = stored.get(ids.value(row)).is_some_and(|h| {
            h.len() == step_hashes.len() && step_hashes.iter().zip(h).all(|(s, h)| s[pos] == *h)
        });
    }
    Ok(unchanged)
}

/// Ids in the table that `keep` rejects (streamed from the table).
pub async fn missing_ids(
    conn: &Database,
    table: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let t = conn.open_table(table).execute().await?;
    let mut stream = t
        .query()
        .select(Select::Columns(vec!["id".into()]))
        .execute()
        .await?;
    let mut gone: Vec<String> = Vec::new();
    while let Some(b) = stream.try_next().await? {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("id is a string column")?;
        gone.extend(
            (0..ids.len())
                .map(|i| ids.value(i))
                .filter(|id| !keep(id))
                .map(String::from),
        );
    }
    Ok(gone)
}

/// Deletes the rows of `table` whose id `keep` rejects, in chunks; returns how many.
pub async fn delete_missing(
    conn: &Database,
    table: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<u64> {
    let gone = missing_ids(conn, table, keep).await?;
    let t = conn.open_table(table).execute().await?;
    for chunk in gone.chunks(IDS_PER_QUERY) {
        t.delete(format!("id IN ({})", id_list(chunk.iter().map(String::as_str))).as_str())
            .await
            .context("deleting rows gone from the source")?;
    }
    Ok(gone.len() as u64)
}

/// Deletes the rows with these ids, in chunks (one commit each); returns how many were asked.
pub async fn delete_ids(conn: &Database, table: &str, ids: &[String]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let t = open(conn, table).await?;
    for chunk in ids.chunks(IDS_PER_QUERY) {
        t.delete(format!("id IN ({})", id_list(chunk.iter().map(String::as_str))).as_str())
            .await
            .context("deleting rows")?;
    }
    Ok(ids.len() as u64)
}

/// Every row of `table`, streamed in batches (a staged shard's rows, at the commit).
pub async fn all_rows(
    conn: &Database,
    table: &str,
) -> Result<lancedb::arrow::SendableRecordBatchStream> {
    let t = open(conn, table).await?;
    Ok(t.query().execute().await?)
}

/// Upserts rows by id, one commit per `commit_rows` rows (and one for the rest at the end).
pub struct Upserter {
    conn: Database,
    name: String,
    schema: SchemaRef,
    table: Option<Table>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    commit_rows: usize,
    /// Ids to delete once the rows pending now are committed (chunks a changed document no
    /// longer has): its new chunks land first, so a crash between leaves extra rows the next
    /// run deletes, never a document with chunks missing.
    stale: Vec<String>,
    /// Commits made.
    pub commits: u64,
    /// Rows in those commits.
    pub rows_committed: u64,
    /// Stale rows deleted.
    pub rows_deleted: u64,
}

impl Upserter {
    pub async fn new(
        conn: Database,
        name: &str,
        schema: SchemaRef,
        commit_rows: usize,
    ) -> Result<Self> {
        let table = super::table::open_existing(&conn, name).await?;
        Ok(Self {
            conn,
            name: name.to_string(),
            schema,
            table,
            pending: Vec::new(),
            pending_rows: 0,
            commit_rows,
            stale: Vec::new(),
            commits: 0,
            rows_committed: 0,
            rows_deleted: 0,
        })
    }

    pub async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= self.commit_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// Deletes `ids` after the rows pushed so far are committed.
    pub fn delete_after(&mut self, ids: Vec<String>) {
        self.stale.extend(ids);
    }

    /// Commits what is pending, then deletes the stale rows.
    pub async fn flush(&mut self) -> Result<()> {
        self.upsert_pending().await?;
        if self.stale.is_empty() {
            return Ok(());
        }
        let stale = std::mem::take(&mut self.stale);
        if let Some(t) = &self.table {
            for chunk in stale.chunks(IDS_PER_QUERY) {
                t.delete(format!("id IN ({})", id_list(chunk.iter().map(String::as_str))).as_str())
                    .await
                    .context("deleting chunks a changed document no longer has")?;
            }
            self.rows_deleted += stale.len() as u64;
        }
        Ok(())
    }

    async fn upsert_pending(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        let rows = std::mem::take(&mut self.pending_rows) as u64;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), self.schema.clone());
        match &self.table {
            Some(t) => {
                let mut b = t.merge_insert(&["id"]);
                b.when_matched_update_all(None)
                    .when_not_matched_insert_all();
                b.execute(Box::new(reader))
                    .await
                    .context("upserting rows into the table")?;
            }
            None => {
                let t = self
                    .conn
                    .create_table(
                        &self.name,
                        Box::new(reader) as Box<dyn arrow::array::RecordBatchReader + Send>,
                    )
                    .execute()
                    .await
                    .context("creating the table")?;
                self.table = Some(t);
            }
        }
        self.commits += 1;
        self.rows_committed += rows;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_sql_strings() {
        assert_eq!(quote("a'b"), "'a''b'");
        assert_eq!(id_list(["x", "y"]), "'x', 'y'");
    }
}
