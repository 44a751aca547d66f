//! Resolve layer: the checked `[chunk]` table → [`ChunkSettings`], its sizes settled against
//! every model that embeds the chunks. How each model counts (its tokenizer, or its family's
//! estimate) is decided where the models are loaded; here only the numbers.

use super::ModelSettings;
use crate::config::{ChunkStrategy, ConfigError, Pipeline, StepInput, Template};

/// Chunk size when the file sets none: a usual RAG passage, or less where a model reads less.
pub const DEFAULT_CHUNK_TOKENS: usize = 512;
/// Default overlap: this fraction of the chunk size.
pub const DEFAULT_OVERLAP_DIVISOR: usize = 8;

/// How rows are split into chunks.
#[derive(Debug, Clone)]
pub struct ChunkSettings {
    /// The text to split (a column or a template over the source row).
    pub input: StepInput,
    pub strategy: ChunkStrategy,
    /// Largest chunk, in tokens of each model (never over a model's input limit).
    pub max_tokens: usize,
    /// Tokens repeated from the end of the previous chunk.
    pub overlap_tokens: usize,
    /// The models that embed the chunks (indexes into `Settings::models`), each a size limit.
    pub models: Vec<usize>,
    /// Step templates that add text around the chunk (`"{title}: {text}"`): their other text
    /// counts against each chunk's size, row by row.
    pub templates: Vec<Template>,
}

impl ChunkSettings {
    /// `None` without `[chunk]`. A `max_tokens` over what a model reads is refused, naming it.
    pub fn resolve(
        pipeline: &Pipeline,
        models: &[ModelSettings],
    ) -> Result<Option<Self>, ConfigError> {
        let Some(c) = &pipeline.chunk else {
            return Ok(None);
        };
        let mut used: Vec<usize> = pipeline.steps.iter().map(|s| s.model_index).collect();
        used.sort_unstable();
        used.dedup();
        let smallest = used
            .iter()
            .map(|&i| (i, models[i].input_token_limit()))
            .min_by_key(|&(_, n)| n);
        let max_tokens = match (c.max_tokens, smallest) {
            (Some(m), Some((i, limit))) if m > limit => {
                let span = c.max_tokens_span.clone().unwrap_or(c.span.clone());
                return Err(pipeline
                    .error(
                        span,
                        format!(
                            "max_tokens = {m} is more than model `{}` ({}) reads: {limit} tokens",
                            models[i].name, models[i].invoke_id
                        ),
                    )
                    .with_help(format!("set max_tokens to {limit} or less")));
            }
            (Some(m), _) => m,
            (None, Some((_, limit))) => DEFAULT_CHUNK_TOKENS.min(limit),
            (None, None) => DEFAULT_CHUNK_TOKENS,
        };
        let overlap_tokens = match c.overlap_tokens {
            Some(o) if o * 2 >= max_tokens => {
                let span = c.overlap_span.clone().unwrap_or(c.span.clone());
                return Err(pipeline
                    .error(
                        span,
                        format!("overlap_tokens = {o} must be less than half of max_tokens = {max_tokens}"),
                    )
                    .with_help("an overlap of 10 to 20% of max_tokens is usual"));
            }
            Some(o) => o,
            None => max_tokens / DEFAULT_OVERLAP_DIVISOR,
        };
        let templates = pipeline
            .steps
            .iter()
            .filter_map(|s| match &s.input {
                StepInput::Template(t) if t.parts.len() > 1 => Some(t.clone()),
                _ => None,
            })
            .collect();
        Ok(Some(Self {
            templates,
            input: c.input.clone(),
            strategy: c.strategy,
            max_tokens,
            overlap_tokens,
            models: used,
        }))
    }
}
