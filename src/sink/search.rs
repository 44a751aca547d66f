//! Search queries on the table: nearest neighbours of one query vector (cosine), optionally
//! filtered by a SQL predicate, optionally fused with a full-text search (hybrid).
//!
//! The `search` command embeds the query and renders the hits; everything that touches the
//! database is here.

use super::table::connect;
use crate::resolve::Target;
use anyhow::{Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::{DistanceType, Table};

/// The table to search, opened.
pub struct SearchTable {
    table: Table,
    schema: SchemaRef,
}

/// Opens the table of `target` for searching; `None` when the database folder or the table is
/// not there.
pub async fn open(target: &Target) -> Result<Option<SearchTable>> {
    if target.local_dir.as_ref().is_some_and(|d| !d.exists()) {
        return Ok(None);
    }
    let conn = connect(target).await?;
    if !conn.table_names().execute().await?.contains(&target.table) {
        return Ok(None);
    }
    let table = conn
        .open_table(&target.table)
        .execute()
        .await
        .with_context(|| format!("cannot open table `{}`", target.table))?;
    let schema = table.schema().await?;
    Ok(Some(SearchTable { table, schema }))
}

/// One nearest-neighbour query.
#[derive(Debug, Clone)]
pub struct Nearest<'a> {
    /// The vector column searched.
    pub column: &'a str,
    /// The query vector.
    pub vector: Vec<f32>,
    /// Rows wanted.
    pub k: usize,
    /// Columns returned (besides the distance / relevance columns the database adds).
    pub select: Vec<String>,
    /// SQL predicate on the table's columns.
    pub filter: Option<&'a str>,
    /// Vector + full-text search, fused.
    pub hybrid: Option<Hybrid<'a>>,
}

/// The full-text half of a hybrid search.
#[derive(Debug, Clone)]
pub struct Hybrid<'a> {
    /// The query text.
    pub text: &'a str,
    /// The column with the full-text index (`fts_column` of [sink]), if the pipeline names one.
    pub fts_column: Option<&'a str>,
}

/// Why a query could not run.
#[derive(Debug)]
pub enum QueryError {
    /// Hybrid search without a full-text index on the `fts_column` (or without `fts_column`).
    NoFullTextIndex,
    /// The database refused to run the query (a bad filter, …): its message.
    Rejected(String),
    /// Anything else.
    Failed(anyhow::Error),
}

fn failed(e: impl Into<anyhow::Error>) -> QueryError {
    QueryError::Failed(e.into())
}

impl SearchTable {
    /// The table's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The rows nearest to `q.vector` by cosine distance, as the database returns them (its
    /// `_distance`, `_relevance_score` and `_score` columns included); not sorted.
    pub async fn nearest(&self, q: Nearest<'_>) -> Result<Vec<RecordBatch>, QueryError> {
        let mut query = self
            .table
            .vector_search(q.vector)
            .map_err(failed)?
            .column(q.column)
            .distance_type(DistanceType::Cosine)
            .limit(q.k)
            .select(Select::Columns(q.select));
        if let Some(f) = q.filter {
            query = query.only_if(f);
        }
        let stream = match q.hybrid {
            Some(h) => {
                let has_fts = match h.fts_column {
                    Some(c) => self
                        .table
                        .list_indices()
                        .await
                        .map_err(failed)?
                        .iter()
                        .any(|i| i.columns.iter().any(|ic| ic == c)),
                    None => false,
                };
                if !has_fts {
                    return Err(QueryError::NoFullTextIndex);
                }
                query
                    .full_text_search(lance_index::scalar::FullTextSearchQuery::new(
                        h.text.to_string(),
                    ))
                    .execute_hybrid(Default::default())
                    .await
            }
            None => query.execute().await,
        };
        stream
            .map_err(|e| QueryError::Rejected(e.to_string()))?
            .try_collect::<Vec<RecordBatch>>()
            .await
            .map_err(failed)
    }
}
