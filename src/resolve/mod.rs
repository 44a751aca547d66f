//! Layer 3, resolve (above config and the ground floor): where the pipeline file meets the model
//! registry. [`load`] / [`parse`] load a pipeline with every check that needs no data — config's
//! own and, at their places among them, those against each model's spec (`check_models`,
//! `check_steps`) — and [`spec_of`] gives a model's registry entry. Then a checked file becomes
//! the settings of each component — source, sink, every model — with every default applied here,
//! once. Components take their own settings, never the whole pipeline.

mod check_models;
mod check_steps;
pub mod chunk;
pub mod model;
mod registry;
pub mod sharding;
pub mod sink;
pub mod source;
pub mod storage;

pub use registry::{load, parse, spec_of};

pub use chunk::ChunkSettings;
pub use model::{
    BatchSettings, Connection, JobSettings, LocalFiles, ModelSettings, Overrides, QuotaSettings,
    RateSettings,
};
pub use sink::{Retention, SinkSettings, Target};
pub use source::{CsvSettings, ImageSettings, SourcePath, SourceSettings};
pub use storage::StorageSettings;

use crate::config::{ConfigError, Pipeline};

/// The settings of a whole run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub sink: SinkSettings,
    /// Indexed like the file's `[[model]]` tables.
    pub models: Vec<ModelSettings>,
    pub quotas: Vec<QuotaSettings>,
    /// How S3 is reached (sources, sink, side files).
    pub storage: StorageSettings,
    /// How rows are split into chunks (`[chunk]`), if they are.
    pub chunk: Option<ChunkSettings>,
}

impl Settings {
    /// The settings of one of `shards` workers: every rate limit the job's share.
    pub fn for_shards(mut self, shards: u32) -> Self {
        for m in &mut self.models {
            m.rates = m.rates.shard_share(shards);
        }
        for q in &mut self.quotas {
            q.rates = q.rates.shard_share(shards);
        }
        self
    }

    /// Whether anything of the run lives in S3 (then an object-store client is needed).
    pub fn uses_s3(&self) -> bool {
        self.sink.target.remote.is_some()
            || self.sink.failures.as_s3().is_some()
            || self
                .source
                .paths
                .iter()
                .any(|p| p.resolved.as_s3().is_some())
    }
}

impl Settings {
    pub fn resolve(pipeline: &Pipeline, overrides: &Overrides) -> Result<Self, ConfigError> {
        let storage = StorageSettings::resolve(pipeline, overrides)?;
        let models = ModelSettings::all(pipeline, overrides);
        Ok(Self {
            source: SourceSettings::resolve(pipeline),
            sink: SinkSettings::resolve(pipeline, &storage)?,
            chunk: ChunkSettings::resolve(pipeline, &models)?,
            models,
            quotas: pipeline
                .file
                .quotas
                .iter()
                .map(|q| QuotaSettings::resolve(q.get_ref()))
                .collect(),
            storage,
        })
    }
}

#[cfg(test)]
mod tests;
