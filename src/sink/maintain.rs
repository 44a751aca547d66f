//! Index maintenance after a run: compact when fragments pile up, build the vector index once
//! the table is big enough (and fold new rows into existing indexes), keep the full-text and
//! id indexes.

use super::lancedb::{connect, Target};
use crate::config::{Pipeline, VectorIndex, WriteMode};
use anyhow::{Context, Result};
use lancedb::index::scalar::{BTreeIndexBuilder, FtsIndexBuilder};
use lancedb::index::vector::{IvfHnswSqIndexBuilder, IvfPqIndexBuilder};
use lancedb::index::Index;
use lancedb::table::OptimizeAction;
use lancedb::DistanceType;
use serde::Serialize;

pub const DEFAULT_INDEX_AFTER_ROWS: usize = 100_000;
pub const DEFAULT_COMPACT_AFTER_FRAGMENTS: usize = 64;

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
}

pub async fn maintain(pipeline: &Pipeline, target: &Target) -> Result<Maintenance> {
    let sink = pipeline.sink();
    let index_after = sink
        .index_after_rows
        .as_ref()
        .map_or(DEFAULT_INDEX_AFTER_ROWS, |v| *v.get_ref());
    let compact_after = sink
        .compact_after_fragments
        .as_ref()
        .map_or(DEFAULT_COMPACT_AFTER_FRAGMENTS, |v| *v.get_ref());
    let kind = sink
        .vector_index
        .as_ref()
        .map_or(VectorIndex::Auto, |v| *v.get_ref());
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
        for step in &pipeline.steps {
            if !indexed(&step.vector) {
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
                wanted.push((step.vector.clone(), index, name));
            }
        }
    }
    if let Some(col) = &sink.fts_column {
        if !indexed(col.get_ref()) {
            wanted.push((
                col.get_ref().clone(),
                Index::FTS(FtsIndexBuilder::default()),
                "FTS",
            ));
        }
    }
    if pipeline.write_mode() == WriteMode::Incremental && !indexed("id") {
        wanted.push((
            "id".into(),
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
    Ok(m)
}
