//! Ground floor: how many tokens a model reads for a text. Chunking measures every chunk with
//! the counter of each model that embeds it, so a chunk never goes over a model's limit:
//! local models count with their own tokenizer, remote families whose tokenizer embedpipe lacks
//! use [`EstimateCounter`], and models limited in characters use [`CharCounter`].

/// Counts the tokens a model reads for a text (with the special tokens the model adds).
pub trait TokenCounter: Send + Sync {
    fn count(&self, text: &str) -> usize;
    /// Short name for messages, e.g. "tokenizer of all-MiniLM-L6-v2", "estimate", "characters".
    fn name(&self) -> &str;
    /// The most tokens the model reads, when the counter knows it better than the registry (a
    /// custom local model's `max_seq_length`): chunks are held to it too.
    fn max_tokens(&self) -> Option<usize> {
        None
    }
}

/// The conservative estimate used for remote (Bedrock) families whose tokenizer embedpipe lacks.
///
/// It must never count fewer tokens than the real tokenizer (a chunk over the limit is truncated
/// or refused by the service), so every rule takes a pessimistic tokenizer's view:
/// - 2 tokens for the special tokens a model adds around a text;
/// - a run of ASCII letters of length L costs ceil(L/3) (subword vocabularies average about
///   4 letters per token on English, worse on rare words);
/// - a run of ASCII digits costs L (many vocabularies split numbers into single digits);
/// - each other ASCII non-whitespace character (punctuation, symbols) costs 1;
/// - ASCII whitespace: a run containing a newline (`\n` or `\r`) costs 1; a run of only spaces
///   and tabs costs 0 when it is one character (merged into the next word's token) and
///   ceil(len/4) otherwise;
/// - each non-ASCII character costs its UTF-8 length in bytes (the worst case of a byte-level
///   BPE, which falls back to one token per byte on characters it has not merged).
///
/// Runs are maximal, so the count is additive over concatenations split at whitespace (a word
/// and the whitespace after it), up to the constant 2: the chunker sums per-word costs to pack
/// and that sum is exact for this counter. One pass over the bytes, no allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct EstimateCounter;

impl EstimateCounter {
    /// The tokens a model adds to every text (e.g. `[CLS]`/`[SEP]`, BOS/EOS).
    pub const SPECIAL: usize = 2;
}

impl TokenCounter for EstimateCounter {
    fn count(&self, text: &str) -> usize {
        estimate(text.as_bytes())
    }

    fn name(&self) -> &str {
        "estimate"
    }
}

/// ASCII whitespace as `char::is_whitespace` sees it (which, unlike `u8::is_ascii_whitespace`,
/// includes the vertical tab).
#[inline]
pub(crate) fn is_ascii_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn estimate(b: &[u8]) -> usize {
    let mut n = EstimateCounter::SPECIAL;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        i += 1;
        if c.is_ascii_alphabetic() {
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            n += (i - start).div_ceil(3);
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            n += i - start;
        } else if is_ascii_space(c) {
            let mut newline = c == b'\n' || c == b'\r';
            while i < b.len() && is_ascii_space(b[i]) {
                newline |= b[i] == b'\n' || b[i] == b'\r';
                i += 1;
            }
            let len = i - start;
            n += if newline {
                1
            } else if len == 1 {
                0
            } else {
                len.div_ceil(4)
            };
        } else {
            // Other ASCII, or one byte of a non-ASCII character (so a character costs its
            // UTF-8 length).
            n += 1;
        }
    }
    n
}

/// Unicode scalar values (a model's character limit, e.g. Cohere v3's 2,048).
#[derive(Debug, Clone, Copy, Default)]
pub struct CharCounter;

impl TokenCounter for CharCounter {
    fn count(&self, text: &str) -> usize {
        text.chars().count()
    }

    fn name(&self) -> &str {
        "characters"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_values() {
        let e = EstimateCounter;
        assert_eq!(e.count(""), 2);
        assert_eq!(e.count("a"), 3);
        // Special tokens 2, "hello" 2, a single space 0, "world" 2.
        assert_eq!(e.count("hello world"), 6);
        // 2 + "Hello" 2 + "," 1 + " " 0 + "world" 2 + "!" 1 + "\n\n" 1 + "2024" 4.
        assert_eq!(e.count("Hello, world!\n\n2024"), 13);
        assert_eq!(e.count("a    b"), 2 + 1 + 1 + 1);
        assert_eq!(e.count("a     b"), 2 + 1 + 2 + 1);
        assert_eq!(e.count("a \t\r\n b"), 2 + 1 + 1 + 1);
        assert_eq!(e.count("日本"), 2 + 6);
        assert_eq!(e.count("é"), 2 + 2);
        assert_eq!(e.count("👍"), 2 + 4);
        assert_eq!(e.count("abc123def"), 2 + 1 + 3 + 1);
        assert_eq!(e.count("  "), 2 + 1);
        assert_eq!(e.name(), "estimate");
    }

    #[test]
    fn estimate_is_additive_at_whitespace() {
        let e = EstimateCounter;
        let parts = [
            "The", " ", "quick", "\n\n", "brown", "  ", "fox:", " ", "42", "\t", "狐",
        ];
        let whole: String = parts.concat();
        // Words and the whitespace runs between them, each counted alone.
        let sum: usize = parts.iter().map(|p| e.count(p) - 2).sum();
        assert_eq!(e.count(&whole), sum + 2);
    }

    #[test]
    fn char_counter_counts_scalars() {
        assert_eq!(CharCounter.count(""), 0);
        assert_eq!(CharCounter.count("héllo 日本"), 8);
        // A family emoji is one grapheme of 7 scalar values.
        assert_eq!(CharCounter.count("👨\u{200d}👩\u{200d}👧\u{200d}👦"), 7);
        assert_eq!(CharCounter.name(), "characters");
    }
}
