//! Layer 3, resolve: the `[[embed]]` checks that need the model registry — a media step's model
//! has an async invoke route (and embeds long text when asked to), a text-with-image step's model
//! embeds both together, and every other step's model accepts its input's modality. Config runs
//! them, through [`crate::config::SpecChecks`], at their places among its own step checks.

use super::spec_of;
use crate::config::{ConfigError, EmbedConfig, Pipeline, StepInput};
use std::ops::Range;
use toml::Spanned;

/// A media step's model has an async invoke route.
pub(super) fn media_route(
    p: &Pipeline,
    cfg: &EmbedConfig,
    span: Range<usize>,
    model_index: usize,
) -> Result<(), ConfigError> {
    let spec = spec_of(p, model_index);
    let model = p.model(model_index);
    let media_span = cfg.media.as_ref().map_or(span, |m| m.span());
    if !spec.routes.asynchronous {
        let can: Vec<&str> = embedpipe_wire::registry()
            .iter()
            .filter(|s| s.routes.asynchronous)
            .map(|s| s.id)
            .collect();
        return Err(p
            .error(
                media_span,
                format!(
                    "model `{}` ({}) cannot embed video or audio: it has no async invoke route",
                    model.name.get_ref(),
                    spec.id
                ),
            )
            .with_help(format!(
                "use a model that can (through StartAsyncInvoke): {}",
                can.join(", ")
            )));
    }
    Ok(())
}

/// A media step's `modality = "text"`: the model embeds long text through async jobs.
pub(super) fn media_modality(
    p: &Pipeline,
    m: &Spanned<String>,
    model_index: usize,
) -> Result<(), ConfigError> {
    let spec = spec_of(p, model_index);
    if m.get_ref() == "text" && !spec.async_limits.long_text {
        return Err(p
            .error(
                m.span(),
                format!("`{}` cannot embed long text through async jobs", spec.id),
            )
            .with_help(format!(
                "use {} (segmented text), or a `text` step",
                long_text_models()
            )));
    }
    Ok(())
}

/// Text with an image only where the model can, and (but for media) a modality it accepts.
pub(super) fn step_input(
    p: &Pipeline,
    e: &Spanned<EmbedConfig>,
    model_index: usize,
    input: &StepInput,
) -> Result<(), ConfigError> {
    let cfg = e.get_ref();
    let model_name = cfg.model.get_ref();
    let spec = spec_of(p, model_index);
    if matches!(input, StepInput::TextImage(..)) && !spec.text_image {
        let both: Vec<&str> = embedpipe_wire::registry()
            .iter()
            .filter(|s| s.text_image)
            .map(|s| s.id)
            .collect();
        let span = cfg.image.as_ref().map_or(e.span(), |s| s.span());
        return Err(p
            .error(
                span,
                format!(
                    "model `{}` ({}) cannot embed a text and an image together",
                    model_name, spec.id
                ),
            )
            .with_help(format!(
                "use two steps (one `text`, one `image`), or a model that can: {}",
                both.join(", ")
            )));
    }
    if !matches!(input, StepInput::Media(..)) && !spec.modalities.contains(&input.modality()) {
        let span = cfg
            .image
            .as_ref()
            .or(cfg.column.as_ref())
            .or(cfg.text.as_ref())
            .map_or(e.span(), |s| s.span());
        return Err(p
            .error(
                span,
                format!(
                    "model `{}` ({}) does not accept {} input",
                    model_name,
                    spec.id,
                    input.modality().as_str()
                ),
            )
            .with_help(format!(
                "it accepts: {}",
                spec.modalities
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
    }
    Ok(())
}

/// The models whose async route embeds long text in segments, for help texts.
fn long_text_models() -> String {
    embedpipe_wire::registry()
        .iter()
        .filter(|s| s.async_limits.long_text)
        .map(|s| s.id)
        .collect::<Vec<_>>()
        .join(" or ")
}
