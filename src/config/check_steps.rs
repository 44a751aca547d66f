//! The `[[embed]]` checks that need no model registry and no data: each step names a declared
//! model, has one input (or text with an image), and writes a vector column of its own; a media
//! step is alone in its file and its model writes results to S3. Their result is the pipeline's
//! [`Step`]s. Whether the model takes the step's input (modality, text with an image, an async
//! route for media) is checked against its spec by the resolve layer, through [`SpecChecks`],
//! at its place here.

use super::file::Modality;
use super::{
    did_you_mean, ConfigError, EmbedConfig, MediaModality, Pipeline, SpecChecks, Step, StepInput,
    Template, TemplatePart,
};
use std::collections::HashSet;
use std::ops::Range;
use toml::Spanned;

impl Pipeline {
    pub(super) fn check_steps(&self, specs: &dyn SpecChecks) -> Result<Vec<Step>, ConfigError> {
        if self.file.embeds.is_empty() {
            return Err(self
                .error(
                    0..0,
                    "the pipeline has no [[embed]] step, so there is nothing to do",
                )
                .with_help(
                    "add one: [[embed]] model = \"<model name>\", column = \"<text column>\"",
                ));
        }
        let model_names: Vec<&str> = self
            .file
            .models
            .iter()
            .map(|m| m.get_ref().name.get_ref().as_str())
            .collect();
        let mut steps = Vec::new();
        let mut vectors = HashSet::new();
        let mut step_names = HashSet::new();
        for e in &self.file.embeds {
            let cfg = e.get_ref();
            let model_index = self.step_model(cfg, &model_names)?;
            let input = self.step_input(e)?;
            self.check_step_model(e, model_index, &input, specs)?;
            let (vector, vspan) = self.step_vector(e, &input)?;
            if !vectors.insert(vector.clone()) {
                return Err(self
                    .error(
                        vspan,
                        format!("two embed steps write the vector column `{vector}`"),
                    )
                    .with_help("give each step its own `vector = \"...\"`"));
            }
            let name = cfg
                .name
                .as_ref()
                .map_or_else(|| vector.clone(), |n| n.get_ref().clone());
            if !step_names.insert(name.clone()) {
                let span = cfg.name.as_ref().map_or(e.span(), |n| n.span());
                return Err(self.error(span, format!("step name `{name}` is used twice")));
            }
            steps.push(Step {
                name,
                model_index,
                input,
                vector,
                span: e.span(),
            });
        }
        Ok(steps)
    }

    /// The index of the `[[model]]` a step names.
    fn step_model(&self, cfg: &EmbedConfig, model_names: &[&str]) -> Result<usize, ConfigError> {
        let model_name = cfg.model.get_ref();
        let Some(model_index) = model_names.iter().position(|n| n == model_name) else {
            let mut help = match did_you_mean(model_name, model_names.iter().copied()) {
                Some(best) => format!("did you mean `{best}`? "),
                None => String::new(),
            };
            if model_names.is_empty() {
                help.push_str("declare it in a [[model]] table with name, provider and id");
            } else {
                help.push_str(&format!(
                    "models declared in this file: {}",
                    model_names.join(", ")
                ));
            }
            return Err(self
                .error(
                    cfg.model.span(),
                    format!("no [[model]] named `{model_name}`"),
                )
                .with_help(help));
        };
        Ok(model_index)
    }

    /// The step's input: one of `column`, `text`, `image` or `media`, or text with an image.
    fn step_input(&self, e: &Spanned<EmbedConfig>) -> Result<StepInput, ConfigError> {
        let cfg = e.get_ref();
        let inputs: Vec<(&str, &Spanned<String>)> = [
            ("column", &cfg.column),
            ("text", &cfg.text),
            ("image", &cfg.image),
            ("media", &cfg.media),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        let input = match inputs.as_slice() {
            [("column", c)] => StepInput::Column(c.get_ref().clone()),
            [("image", c)] => StepInput::Image(c.get_ref().clone()),
            [("media", c)] => StepInput::Media(
                c.get_ref().clone(),
                match cfg.modality.as_ref().map(|m| m.get_ref().as_str()) {
                    None | Some("auto") => MediaModality::Auto,
                    Some("video") => MediaModality::Fixed(Modality::Video),
                    Some("audio") => MediaModality::Fixed(Modality::Audio),
                    Some("text") => MediaModality::Fixed(Modality::Text),
                    Some(col) => MediaModality::Column(col.to_string()),
                },
            ),
            [(_, t)] => StepInput::Template(
                Template::parse(t.get_ref()).map_err(|m| self.error(t.span(), format!("invalid text template: {m}")))?,
            ),
            [("column", c), ("image", i)] => StepInput::TextImage(
                Template {
                    parts: vec![TemplatePart::Column(c.get_ref().clone())],
                },
                i.get_ref().clone(),
            ),
            [("text", t), ("image", i)] => StepInput::TextImage(
                Template::parse(t.get_ref()).map_err(|m| self.error(t.span(), format!("invalid text template: {m}")))?,
                i.get_ref().clone(),
            ),
            [] => {
                return Err(self
                    .error(e.span(), "this [[embed]] step has no input")
                    .with_help("give exactly one of `column` (a text column), `text` (a template like \"{title}\\n{body}\") or `image` (a column of image bytes)"))
            }
            [_, (key, second), ..] => {
                return Err(self
                    .error(second.span(), format!("`{key}` conflicts with another input key of this step"))
                    .with_help("give one of `column`, `text` or `image` (or `image` with one of `column`/`text`, for models that embed text and image together)"))
            }
        };
        Ok(input)
    }

    /// The step's model takes its input: `modality` only with `media`, media through an async
    /// route, text with an image only where the model can, and a modality the model accepts
    /// (what needs the model's spec is `specs`').
    fn check_step_model(
        &self,
        e: &Spanned<EmbedConfig>,
        model_index: usize,
        input: &StepInput,
        specs: &dyn SpecChecks,
    ) -> Result<(), ConfigError> {
        let cfg = e.get_ref();
        if let (Some(m), false) = (&cfg.modality, matches!(input, StepInput::Media(..))) {
            return Err(self
                .error(m.span(), "`modality` applies only to `media` steps")
                .with_help(
                    "remove it, or embed a column of video/audio files with `media = \"<column>\"`",
                ));
        }
        if let StepInput::Media(..) = input {
            self.check_media_step(cfg, e.span(), model_index, specs)?;
        }
        specs.step_input(self, e, model_index, input)
    }

    /// The step's vector column (default `vector`) and where it is set: an identifier that
    /// makes none of the columns embedpipe writes itself.
    fn step_vector(
        &self,
        e: &Spanned<EmbedConfig>,
        input: &StepInput,
    ) -> Result<(String, Range<usize>), ConfigError> {
        let cfg = e.get_ref();
        let (vector, vspan) = match &cfg.vector {
            Some(v) => (v.get_ref().clone(), v.span()),
            None => ("vector".to_string(), e.span()),
        };
        if !is_identifier(&vector) {
            return Err(self.error(vspan, format!("vector column `{vector}` must be letters, digits and `_`, not starting with a digit")));
        }
        if let Some(taken) = crate::util::columns::step_columns(&vector)
            .into_iter()
            .find(|c| crate::util::columns::RESERVED_COLUMNS.contains(&c.as_str()))
        {
            return Err(self
                .error(
                    vspan,
                    format!("vector column `{vector}` would make a column `{taken}`, which embedpipe writes itself"),
                )
                .with_help("name the vector column otherwise, e.g. vector = \"vector\" or \"title_vector\""));
        }
        if matches!(input, StepInput::Media(..)) {
            if let Some(taken) = crate::util::columns::step_columns(&vector)
                .into_iter()
                .find(|c| crate::util::columns::SEGMENT_COLUMNS.contains(&c.as_str()))
            {
                return Err(self
                    .error(vspan, format!("vector column `{vector}` would make a column `{taken}`, which media tables use for segments"))
                    .with_help("name the vector column otherwise, e.g. vector = \"vector\""));
            }
        }
        Ok((vector, vspan))
    }

    /// A media step: an async-capable model (against its spec) with somewhere to write
    /// results, alone in its file.
    fn check_media_step(
        &self,
        cfg: &EmbedConfig,
        span: Range<usize>,
        model_index: usize,
        specs: &dyn SpecChecks,
    ) -> Result<(), ConfigError> {
        let model = self.model(model_index);
        specs.media_route(self, cfg, span.clone(), model_index)?;
        if model.output_s3_uri.is_none() {
            return Err(self
                .error(
                    model.id.span(),
                    format!(
                        "model `{}` embeds video/audio through async jobs, which write their results to S3",
                        model.name.get_ref()
                    ),
                )
                .with_help("add `output_s3_uri = \"s3://<bucket>/<prefix>\"` to its [[model]] table"));
        }
        if self.file.embeds.len() > 1 {
            return Err(self
                .error(span, "a `media` step must be the only [[embed]] step of its pipeline")
                .with_help("media rows become one table row per segment; embed other columns in a pipeline of their own"));
        }
        if let Some(m) = &cfg.modality {
            let v = m.get_ref();
            specs.media_modality(self, m, model_index)?;
            if !matches!(v.as_str(), "auto" | "video" | "audio" | "text") && !is_identifier(v) {
                return Err(self
                    .error(m.span(), format!("`{v}` is not a modality"))
                    .with_help(
                        "use `video`, `audio`, `auto`, or the name of a column holding video/audio",
                    ));
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
