//! The `[chunk]` table: split a long text of each source row into chunks, each embedded and
//! stored as its own table row (RAG). Values as written; the resolve layer applies defaults and
//! measures sizes with the models' own tokenizers or their family estimates.

use serde::Deserialize;
use toml::Spanned;

/// How a text is cut into chunks.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChunkStrategy {
    /// Paragraphs, then sentences, then words, then characters: the largest pieces that fit.
    #[default]
    Recursive,
    /// Markdown sections kept together (a section with its subsections when it fits), the
    /// heading path kept as a column; long sections split like `recursive`.
    Markdown,
    /// Whole sentences packed up to the size (a longer sentence split at words).
    Sentences,
    /// Windows of a fixed token count, cut at grapheme boundaries.
    Fixed,
}

impl ChunkStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkStrategy::Recursive => "recursive",
            ChunkStrategy::Markdown => "markdown",
            ChunkStrategy::Sentences => "sentences",
            ChunkStrategy::Fixed => "fixed",
        }
    }
}

/// `[chunk]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChunkConfig {
    /// The text to split: a source column (`"body"`) or a template over columns
    /// (`"{title}\n\n{body}"`). Default: the column `text` (what a documents source reads).
    pub input: Option<Spanned<String>>,
    pub strategy: Option<Spanned<ChunkStrategy>>,
    /// Largest chunk in tokens, counted with each embedding model's tokenizer (local models) or
    /// its family's conservative estimate. Default: 512, or less where a model reads less.
    pub max_tokens: Option<Spanned<usize>>,
    /// Tokens a chunk repeats from the end of the one before (default: max_tokens / 8).
    pub overlap_tokens: Option<Spanned<usize>>,
}
