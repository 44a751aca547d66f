//! Layer 3, resolve: where the pipeline file meets the model registry. [`load`] and [`parse`]
//! are the full load of a pipeline — config's parse and checks with the checks against each
//! model's spec (`check_models`, `check_steps`) run at their places among them, in the order
//! errors have always been reported — and [`spec_of`] is a loaded model's registry entry.

use super::{check_models, check_steps};
use crate::config::{
    read_text, ConfigError, EmbedConfig, ModelConfig, Pipeline, SpecChecks, StepInput,
};
use embedpipe_wire::ModelSpec;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// Reads and checks a pipeline file: every check that needs no data, the registry's included.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let text = read_text(path)?;
    parse(path, &text)
}

/// Parses and checks pipeline text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline, ConfigError> {
    Pipeline::parse_with(path, text, &Registry)
}

/// The registry entry of model `index` of a pipeline [`load`]ed (or [`parse`]d) here.
pub fn spec_of(pipeline: &Pipeline, index: usize) -> &'static ModelSpec {
    spec_for(pipeline.model(index)).expect("model ids are checked at load")
}

/// The registry entry a `[[model]]` table names: its id among its provider's models; every
/// OpenAI-compatible model (named as its server knows it) has the one spec of that protocol.
pub(super) fn spec_for(cfg: &ModelConfig) -> Option<&'static ModelSpec> {
    let provider = *cfg.provider.get_ref();
    if provider == embedpipe_wire::ProviderKind::OpenAi {
        return Some(&embedpipe_wire::families::openai::SPEC);
    }
    embedpipe_wire::lookup(cfg.id.get_ref()).filter(|s| s.provider == provider)
}

/// The checks against the registry's model specs, as config runs them.
struct Registry;

impl SpecChecks for Registry {
    fn model_id(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
        check_models::model_id(p, cfg)
    }

    fn model_params(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
        check_models::model_params(p, cfg)
    }

    fn inference_profile(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError> {
        check_models::inference_profile(p, cfg)
    }

    fn media_route(
        &self,
        p: &Pipeline,
        step: &EmbedConfig,
        span: Range<usize>,
        model_index: usize,
    ) -> Result<(), ConfigError> {
        check_steps::media_route(p, step, span, model_index)
    }

    fn media_modality(
        &self,
        p: &Pipeline,
        modality: &Spanned<String>,
        model_index: usize,
    ) -> Result<(), ConfigError> {
        check_steps::media_modality(p, modality, model_index)
    }

    fn step_input(
        &self,
        p: &Pipeline,
        step: &Spanned<EmbedConfig>,
        model_index: usize,
        input: &StepInput,
    ) -> Result<(), ConfigError> {
        check_steps::step_input(p, step, model_index, input)
    }
}
