//! Layer 3, resolve (above config and the ground floor): where the pipeline file meets the model
//! registry. [`load`] / [`parse`] load a pipeline with every check that needs no data — config's
//! own and, at their places among them, those against each model's spec (`check_models`,
//! `check_steps`) — and [`spec_of`] gives a model's registry entry. Then a checked file becomes
//! the settings of each component — source, sink, every model — with every default applied here,
//! once. Components take their own settings, never the whole pipeline.

mod check_models;
mod check_steps;
pub mod model;
mod registry;
pub mod sink;
pub mod source;

pub use registry::{load, parse, spec_of};

pub use model::{
    Connection, JobSettings, LocalFiles, ModelSettings, Overrides, QuotaSettings, RateSettings,
};
pub use sink::{SinkSettings, Target};
pub use source::{CsvSettings, ImageSettings, SourcePath, SourceSettings};

use crate::config::{ConfigError, Pipeline};

/// The settings of a whole run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub sink: SinkSettings,
    /// Indexed like the file's `[[model]]` tables.
    pub models: Vec<ModelSettings>,
    pub quotas: Vec<QuotaSettings>,
}

impl Settings {
    pub fn resolve(pipeline: &Pipeline, overrides: &Overrides) -> Result<Self, ConfigError> {
        Ok(Self {
            source: SourceSettings::resolve(pipeline),
            sink: SinkSettings::resolve(pipeline)?,
            models: ModelSettings::all(pipeline, overrides),
            quotas: pipeline
                .file
                .quotas
                .iter()
                .map(|q| QuotaSettings::resolve(q.get_ref()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
