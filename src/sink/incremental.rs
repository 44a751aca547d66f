//! Incremental runs: look up what the table already holds (content hashes by id), upsert new
//! and changed rows by id in chunks (each chunk one commit, so a killed run loses at most one
//! chunk), and delete rows gone from the source.

use super::Database;
use anyhow::{Context, Result};
use arrow::array::{Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::Table;
use std::collections::HashMap;

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
        })
    }

    /// The table's ids only (appends look up which ids it holds already).
    pub async fn open_ids(conn: &Database, table: &str) -> Result<Self> {
        Ok(Self {
            table: open(conn, table).await?,
            hash_columns: Vec::new(),
        })
    }

    /// The stored hashes (one per step) of those `ids` that the table holds.
    pub async fn hashes(&self, ids: &[&str]) -> Result<HashMap<String, Vec<String>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut columns = vec!["id".to_string()];
        columns.extend(self.hash_columns.iter().cloned());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let batches: Vec<RecordBatch> = self
                .table
                .query()
                .only_if(format!("id IN ({})", id_list(chunk.iter().copied())))
                .select(Select::Columns(columns.clone()))
                .execute()
                .await?
                .try_collect()
                .await
                .context("looking up existing rows")?;
            for b in batches {
                let strings = |i: usize| {
                    b.column(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .cloned()
                        .context("hash columns are strings")
                };
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

/// Upserts rows by id, one commit per `commit_rows` rows (and one for the rest at the end).
pub struct Upserter {
    conn: Database,
    name: String,
    schema: SchemaRef,
    table: Option<Table>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    commit_rows: usize,
    /// Commits made.
    pub commits: u64,
    /// Rows in those commits.
    pub rows_committed: u64,
}

impl Upserter {
    pub async fn new(
        conn: Database,
        name: &str,
        schema: SchemaRef,
        commit_rows: usize,
    ) -> Result<Self> {
        let names = conn.table_names().execute().await?;
        let table = if names.iter().any(|n| n == name) {
            Some(conn.open_table(name).execute().await?)
        } else {
            None
        };
        Ok(Self {
            conn,
            name: name.to_string(),
            schema,
            table,
            pending: Vec::new(),
            pending_rows: 0,
            commit_rows,
            commits: 0,
            rows_committed: 0,
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

    /// Commits what is pending.
    pub async fn flush(&mut self) -> Result<()> {
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
