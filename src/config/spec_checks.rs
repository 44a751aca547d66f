//! The checks config cannot make: those against a model's spec (its id, dimensions, parameters,
//! routes, the inputs it accepts). Config knows no model registry; the resolve layer above
//! supplies these checks through [`SpecChecks`], and [`super::Pipeline::parse_with`] runs each
//! at its place among config's own, so a file with two problems always reports the same first
//! one.

use super::{ConfigError, EmbedConfig, ModelConfig, Pipeline, StepInput};
use std::ops::Range;
use toml::Spanned;

/// Checks against the model specs, run by [`super::Pipeline::parse_with`] in this order for
/// each `[[model]]` (among config's own checks of the table), then for each `[[embed]]` step.
pub trait SpecChecks {
    /// The model's id is one of its provider's, with dimensions and a batch size it offers.
    /// Runs right after the model's name is checked; the other model checks may rely on it.
    fn model_id(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError>;

    /// Segment lengths and family parameters (after the async route keys).
    fn model_params(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError>;

    /// The inference profile a sync call of the model may need (after the connection, quota,
    /// price and Bedrock-only keys).
    fn inference_profile(&self, p: &Pipeline, cfg: &ModelConfig) -> Result<(), ConfigError>;

    /// A `media` step's model has an async invoke route (first of the media step's checks).
    fn media_route(
        &self,
        p: &Pipeline,
        step: &EmbedConfig,
        span: Range<usize>,
        model_index: usize,
    ) -> Result<(), ConfigError>;

    /// A `media` step's `modality`: the model embeds long text through async jobs when it is
    /// `text` (before the value itself is checked).
    fn media_modality(
        &self,
        p: &Pipeline,
        modality: &Spanned<String>,
        model_index: usize,
    ) -> Result<(), ConfigError>;

    /// The step's input: text with an image only where the model can, and an input modality
    /// the model accepts (after the `modality` and media checks, before the vector column).
    fn step_input(
        &self,
        p: &Pipeline,
        step: &Spanned<EmbedConfig>,
        model_index: usize,
        input: &StepInput,
    ) -> Result<(), ConfigError>;
}
