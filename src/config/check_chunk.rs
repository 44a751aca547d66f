//! The `[chunk]` checks that need no data and no registry: what to split (a column or a
//! template), sizes in range, and steps that embed the chunk text (not images or media). The
//! result is the pipeline's [`Chunking`]; sizes against each model's input limit are the
//! resolve layer's.

use super::chunk::{ChunkConfig, ChunkStrategy};
use super::{ConfigError, Pipeline, Step, StepInput, Template};
use crate::util::columns::CHUNK_TEXT;
use std::ops::Range;
use toml::Spanned;

/// Smallest `max_tokens`: below it a chunk holds a few words, not a passage.
pub const MIN_CHUNK_TOKENS: usize = 8;
/// Largest `max_tokens` (the longest input of any model embedpipe knows is 128k tokens; RAG
/// chunks are far smaller).
pub const MAX_CHUNK_TOKENS: usize = 131_072;

/// Columns a chunked table fills itself.
const CHUNK_NAMES: &[&str] = &[
    "doc_id",
    "chunk_index",
    "chunk_count",
    "start_char",
    "end_char",
    "heading",
    "page",
    CHUNK_TEXT,
];

/// The checked `[chunk]` table.
#[derive(Debug, Clone)]
pub struct Chunking {
    /// The text to split: a source column or a template over source columns.
    pub input: StepInput,
    pub input_span: Range<usize>,
    pub strategy: ChunkStrategy,
    pub max_tokens: Option<usize>,
    pub max_tokens_span: Option<Range<usize>>,
    pub overlap_tokens: Option<usize>,
    pub overlap_span: Option<Range<usize>>,
    /// The whole `[chunk]` table.
    pub span: Range<usize>,
}

impl Pipeline {
    pub(super) fn check_chunk(&self, steps: &[Step]) -> Result<Option<Chunking>, ConfigError> {
        let Some(table) = &self.file.chunk else {
            return Ok(None);
        };
        let cfg: &ChunkConfig = table.get_ref();
        let (input, input_span) = match &cfg.input {
            None => (StepInput::Column(CHUNK_TEXT.into()), table.span()),
            Some(s) => (self.chunk_input(s)?, s.span()),
        };
        if let Some(m) = &cfg.max_tokens {
            let v = *m.get_ref();
            if !(MIN_CHUNK_TOKENS..=MAX_CHUNK_TOKENS).contains(&v) {
                return Err(self
                    .error(
                        m.span(),
                        format!(
                            "max_tokens must be between {MIN_CHUNK_TOKENS} and {MAX_CHUNK_TOKENS}"
                        ),
                    )
                    .with_help("RAG chunks are usually 128 to 512 tokens"));
            }
        }
        if let (Some(o), Some(m)) = (&cfg.overlap_tokens, &cfg.max_tokens) {
            if *o.get_ref() * 2 >= *m.get_ref() {
                return Err(self
                    .error(
                        o.span(),
                        format!(
                            "overlap_tokens = {} must be less than half of max_tokens = {}",
                            o.get_ref(),
                            m.get_ref()
                        ),
                    )
                    .with_help("an overlap of 10 to 20% of max_tokens is usual"));
            }
        }
        for (step, e) in steps.iter().zip(&self.file.embeds) {
            let taken = crate::util::columns::step_columns(&step.vector)
                .into_iter()
                .find(|c| CHUNK_NAMES.contains(&c.as_str()));
            if let Some(col) = taken {
                let span = e.get_ref().vector.as_ref().map_or(e.span(), |v| v.span());
                return Err(self
                    .error(span, format!("step `{}` writes a column `{col}`, which a chunked table has for its chunks", step.name))
                    .with_help("name the vector column otherwise, e.g. vector = \"vector\""));
            }
            let why = match &step.input {
                StepInput::Image(_) | StepInput::TextImage(..) => Some("embeds images"),
                StepInput::Media(..) => Some("embeds video or audio"),
                _ if !step.input.columns().iter().any(|c| c == CHUNK_TEXT) => {
                    Some("does not read the chunk text")
                }
                _ => None,
            };
            if let Some(why) = why {
                return Err(self
                    .error(e.span(), format!("step `{}` {why}, but the pipeline splits text into chunks ([chunk])", step.name))
                    .with_help(format!("with [chunk], each embed step embeds a chunk: column = \"{CHUNK_TEXT}\", or a template such as text = \"{{title}}: {{{CHUNK_TEXT}}}\"; remove [chunk] to embed whole rows")));
            }
        }
        Ok(Some(Chunking {
            input,
            input_span,
            strategy: cfg
                .strategy
                .as_ref()
                .map_or_else(Default::default, |s| *s.get_ref()),
            max_tokens: cfg.max_tokens.as_ref().map(|m| *m.get_ref()),
            max_tokens_span: cfg.max_tokens.as_ref().map(|m| m.span()),
            overlap_tokens: cfg.overlap_tokens.as_ref().map(|o| *o.get_ref()),
            overlap_span: cfg.overlap_tokens.as_ref().map(|o| o.span()),
            span: table.span(),
        }))
    }

    /// `input`: a template when it has a `{column}` placeholder, else a column name.
    fn chunk_input(&self, s: &Spanned<String>) -> Result<StepInput, ConfigError> {
        let v = s.get_ref();
        if v.contains('{') || v.contains('}') {
            return Template::parse(v)
                .map(StepInput::Template)
                .map_err(|m| self.error(s.span(), format!("invalid text template: {m}")));
        }
        if v.trim().is_empty() {
            return Err(self
                .error(s.span(), "`input` is empty")
                .with_help("name the column to split, e.g. input = \"body\""));
        }
        Ok(StepInput::Column(v.trim().to_string()))
    }
}
