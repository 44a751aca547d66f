//! The chunking engine: a long text → chunks that each fit every embedding model's size limit.
//!
//! Pure and self-contained (no I/O, no model): a text is cut once into *atoms* (words, CJK
//! sentences, and grapheme groups of words too long to fit), each with the strength of the
//! break after it (paragraph, line, sentence, word, inside a word) and its cost under every
//! limit. The structured strategies pack atoms level by level (`recursive`), or sentences
//! (`sentences`), or markdown sections (`markdown`); `fixed` measures grapheme windows
//! directly. Every emitted chunk is measured with each model's real counter and shrunk if
//! it does not fit, since tokenizers are not exactly additive.
//!
//! Boundaries are kept edit-stable: a full chunk is cut at its *anchor*, the unit end with the
//! highest content hash among those where it holds at least half its budget, so an edit early
//! in a document moves only the chunks around it and the packing falls back in step as soon as
//! two packings see the same anchor (see `recursive`).

mod atoms;
mod fixed;
mod markdown;
mod recursive;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rayon::prelude::*;

pub use crate::config::ChunkStrategy;
use crate::util::tokens::TokenCounter;

use atoms::Atoms;
use recursive::Packer;

/// One model's size limit: no chunk may count more than `max` with `counter`.
#[derive(Clone)]
pub struct Limit {
    pub counter: Arc<dyn TokenCounter>,
    pub max: usize,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("counter", &self.counter.name())
            .field("max", &self.max)
            .finish()
    }
}

/// One chunk of a text: byte range into the text (for slicing), character (Unicode scalar)
/// offsets for users (end exclusive), and the heading path (markdown strategy only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub start: usize,
    pub end: usize,
    pub start_char: u64,
    pub end_char: u64,
    pub heading: Option<String>,
}

/// Splits texts into chunks that fit every limit (see the module docs).
#[derive(Debug, Clone)]
pub struct Chunker {
    strategy: ChunkStrategy,
    measures: Vec<Measure>,
    /// In tokens of the first limit's counter.
    overlap: u64,
    /// Whether chunks are cut at anchors (edit stability); off only in tests of plain packing.
    stable: bool,
}

/// A limit with what packing needs precomputed: the tokens the counter gives an empty text
/// (special tokens, counted once per chunk, not once per atom) and the budget left for content.
#[derive(Debug, Clone)]
struct Measure {
    limit: Limit,
    base: usize,
    /// `max - base`: what the atoms of a chunk may cost together.
    budget: u64,
    /// Cost of a single space, the most common gap between words (counted once, not per gap).
    space: u64,
}

impl Measure {
    /// Content cost of a piece of text: its count less the special tokens.
    fn cost(&self, text: &str) -> u64 {
        self.limit.counter.count(text).saturating_sub(self.base) as u64
    }

    fn fits_str(&self, text: &str) -> bool {
        self.limit.counter.count(text) <= self.limit.max
    }
}

/// A chunk before its character offsets are known.
#[derive(Debug)]
struct Span {
    start: usize,
    end: usize,
    heading: Option<String>,
}

/// Smallest `max` a limit may have: below it a chunk holds too little to be worth embedding,
/// and packing would degenerate into single characters.
pub const MIN_LIMIT: usize = 8;

impl Chunker {
    /// `limits` non-empty; `overlap` in tokens of the first limit's counter. Err (a String
    /// message) when overlap >= first limit's max / 2 or a max is below 8.
    pub fn new(
        strategy: ChunkStrategy,
        limits: Vec<Limit>,
        overlap: usize,
    ) -> Result<Self, String> {
        let Some(first) = limits.first() else {
            return Err("chunking needs at least one size limit".to_string());
        };
        for l in &limits {
            if l.max < MIN_LIMIT {
                return Err(format!(
                    "a chunk size of {} ({}) is below the smallest allowed, {MIN_LIMIT}",
                    l.max,
                    l.counter.name()
                ));
            }
        }
        if overlap >= first.max / 2 {
            return Err(format!(
                "an overlap of {overlap} tokens must be less than half the chunk size of {} ({})",
                first.max,
                first.counter.name()
            ));
        }
        let mut measures = Vec::with_capacity(limits.len());
        for limit in limits {
            let base = limit.counter.count("");
            if base >= limit.max {
                return Err(format!(
                    "the {} counts an empty text as {base} tokens, which leaves no room under \
                     a chunk size of {}",
                    limit.counter.name(),
                    limit.max
                ));
            }
            let space = limit.counter.count(" ").saturating_sub(base) as u64;
            measures.push(Measure {
                budget: (limit.max - base) as u64,
                base,
                space,
                limit,
            });
        }
        Ok(Chunker {
            strategy,
            measures,
            overlap: overlap as u64,
            stable: true,
        })
    }

    /// The same chunker without anchors: plain greedy packing, for readable test expectations.
    #[cfg(test)]
    fn greedy(mut self) -> Self {
        self.stable = false;
        self
    }

    pub fn strategy(&self) -> ChunkStrategy {
        self.strategy
    }

    /// Chunks of `text` in order. Whitespace-only text → empty Vec.
    pub fn split(&self, text: &str) -> Vec<Chunk> {
        let spans = match self.strategy {
            ChunkStrategy::Fixed => fixed::split(text, &self.measures, self.overlap),
            strategy => {
                let atoms = Atoms::build(text, &self.measures);
                let levels = match strategy {
                    ChunkStrategy::Sentences => recursive::SENTENCE_LEVELS,
                    _ => recursive::RECURSIVE_LEVELS,
                };
                let mut packer = Packer::new(
                    text,
                    &atoms,
                    &self.measures,
                    self.overlap,
                    levels,
                    self.stable,
                );
                if strategy == ChunkStrategy::Markdown {
                    markdown::split(&mut packer, text);
                } else {
                    packer.pack(0, atoms.len(), 0);
                    packer.flush();
                }
                packer.into_spans()
            }
        };
        with_char_offsets(text, spans)
    }

    /// Many texts at once on the rayon pool (same results as `split` per text, same order).
    pub fn split_all(&self, texts: &[&str]) -> Vec<Vec<Chunk>> {
        texts.par_iter().map(|text| self.split(text)).collect()
    }
}

/// Character offsets of the spans, counted incrementally: starts and ends each move forward
/// (starts strictly increase, ends too), so each byte is counted about once per cursor.
fn with_char_offsets(text: &str, spans: Vec<Span>) -> Vec<Chunk> {
    let mut starts = CharCursor::default();
    let mut ends = CharCursor::default();
    spans
        .into_iter()
        .map(|s| Chunk {
            start_char: starts.advance(text, s.start),
            end_char: ends.advance(text, s.end),
            start: s.start,
            end: s.end,
            heading: s.heading,
        })
        .collect()
}

/// A byte position and the number of characters before it.
#[derive(Default)]
struct CharCursor {
    byte: usize,
    chars: u64,
}

impl CharCursor {
    fn advance(&mut self, text: &str, to: usize) -> u64 {
        let count = |a: usize, b: usize| text.get(a..b).map_or(0, |s| s.chars().count() as u64);
        if to >= self.byte {
            self.chars += count(self.byte, to);
        } else {
            self.chars -= count(to, self.byte);
        }
        self.byte = to;
        self.chars
    }
}

/// FNV-1a 64 of the bytes, with a final avalanche (FNV's low bits depend only on the low bits
/// of the input bytes). Deterministic across runs and machines (never std's `RandomState`),
/// since chunk boundaries must be.
fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}
