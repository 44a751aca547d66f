//! Index maintenance after a run: compact when fragments pile up, build the vector index once
//! the table is big enough (and fold new rows into existing indexes), keep the full-text and
//! id indexes — then prune old versions as `keep_versions` says.

use super::table::connect;
use crate::config::{VectorIndex, WriteMode};
use crate::resolve::SinkSettings;
use anyhow::{Context, Result};
use lancedb::index::scalar::{BTreeIndexBuilder, FtsIndexBuilder};
use lancedb::index::vector::{IvfHnswSqIndexBuilder, IvfPqIndexBuilder};
use lancedb::index::Index;
use lancedb::table::OptimizeAction;
use lancedb::DistanceType;
use serde::Serialize;

/// What maintenance did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Maintenance {
    pub rows: u64,
    pub fragments_before: u64,
    pub compacted: bool,
    /// Indexes built by this run (`column: kind`).
    pub indexes_created: Vec<String>,
    /// Existing indexes were updated with the new rows.
    pub indexes_updated: bool,
    /// Old versions removed by retention (of the table and its run log).
    pub pruned: super::retention::Pruned,
}

/// Compacts and indexes the table of `settings` after a run.
pub async fn maintain(settings: &SinkSettings) -> Result<Maintenance> {
    let index_after = settings.index_after_rows;
    let compact_after = settings.compact_after_fragments;
    let kind = settings.vector_index;
    let target = &settings.target;
    let conn = connect(target).await?;
    let t = conn.open_table(&target.table).execute().await?;
    let stats = t.stats().await.context("reading table stats")?;
    let mut m = Maintenance {
        rows: stats.num_rows as u64,
        fragments_before: stats.fragment_stats.num_fragments as u64,
        ..Default::default()
    };
    if m.fragments_before as usize >= compact_after {
        t.optimize(OptimizeAction::Compact {
            options: Default::default(),
            remap_options: None,
        })
        .await
        .context("compacting the table")?;
        m.compacted = true;
    }
    let existing = t.list_indices().await?;
    let indexed = |col: &str| existing.iter().any(|i| i.columns.iter().any(|c| c == col));
    let had_indexes = !existing.is_empty();
    let mut wanted: Vec<(String, Index, &str)> = Vec::new();
    if kind != VectorIndex::None && m.rows as usize >= index_after {
        for vector in &settings.vectors {
            if !indexed(vector) {
                let (index, name) = match kind {
                    VectorIndex::IvfHnswSq => (
                        Index::IvfHnswSq(
                            IvfHnswSqIndexBuilder::default().distance_type(DistanceType::Cosine),
                        ),
                        "IVF_HNSW_SQ",
                    ),
                    _ => (
                        Index::IvfPq(
                            IvfPqIndexBuilder::default().distance_type(DistanceType::Cosine),
                        ),
                        "IVF_PQ",
                    ),
                };
                wanted.push((vector.clone(), index, name));
            }
        }
    }
    if let Some(col) = &settings.fts_column {
        if !indexed(col) {
            wanted.push((col.clone(), Index::FTS(FtsIndexBuilder::default()), "FTS"));
        }
    }
    if settings.mode == WriteMode::Incremental && !indexed("id") {
        wanted.push((
            "id".into(),
            Index::BTree(BTreeIndexBuilder::default()),
            "BTREE",
        ));
    }
    // Chunked tables look up a changed document's stored chunks by its id.
    let doc_id = crate::util::columns::CHUNK_DOC_ID;
    let chunked = t.schema().await?.field_with_name(doc_id).is_ok();
    if settings.mode == WriteMode::Incremental && chunked && !indexed(doc_id) {
        wanted.push((
            doc_id.into(),
            Index::BTree(BTreeIndexBuilder::default()),
            "BTREE",
        ));
    }
    for (col, index, name) in wanted {
        t.create_index(&[col.as_str()], index)
            .execute()
            .await
            .with_context(|| format!("building the {name} index on `{col}`"))?;
        m.indexes_created.push(format!("{col}: {name}"));
    }
    if had_indexes {
        t.optimize(OptimizeAction::Index(Default::default()))
            .await
            .context("updating the indexes with the new rows")?;
        m.indexes_updated = true;
    }
    // Last: compaction and indexing made versions of their own.
    match super::retention::prune(settings).await {
        Ok(p) => m.pruned = p,
        // The rows and indexes are in; the next run prunes.
        Err(e) => tracing::warn!("old versions were not pruned: {e:#}"),
    }
    Ok(m)
}
