//! Atoms: the smallest pieces the structured strategies pack. A text is cut once, in one pass
//! over its bytes, at whitespace and after CJK sentence enders (`。！？`, which take no space
//! after them); a word too long to fit a limit alone is cut further into groups of grapheme
//! clusters. Each atom records the strength of the break after it, so every coarser piece
//! (sentence, line, paragraph) is a run of atoms, and its cost under every limit, kept as
//! prefix sums so a run of atoms costs O(1) to measure.
//!
//! Atom edges are grapheme-cluster boundaries: where a whitespace edge touches a non-ASCII
//! character it is checked against the text's real clusters (a space followed by a combining
//! mark is one cluster), and the word widened to the cluster edge.

use unicode_segmentation::{GraphemeCursor, UnicodeSegmentation};

use super::Measure;
use crate::util::tokens::is_ascii_space;

/// Break strengths, strongest first: a piece at level `l` ends after an atom whose break is
/// `<= l`.
pub(super) const PARA: u8 = 0;
pub(super) const LINE: u8 = 1;
pub(super) const SENT: u8 = 2;
pub(super) const WORD: u8 = 3;
/// Between the grapheme groups of a word too long to fit.
pub(super) const PART: u8 = 4;
/// Not yet known (a word's end, classified once the next word is found).
const UNSET: u8 = u8::MAX;

/// Bytes of a grapheme group: small enough that a group fits the smallest limit, large enough
/// that a counter's per-group cost stays close to its cost of the whole word.
const GROUP_BYTES: usize = 16;

/// A word (or part of one): `text[start..end]` starts and ends with non-whitespace; the gap to
/// the next atom's start is whitespace (possibly empty).
#[derive(Debug, Clone, Copy)]
pub(super) struct Atom {
    pub start: usize,
    pub end: usize,
    /// Strength of the break after this atom.
    pub brk: u8,
}

/// Costs of the atoms under one limit.
struct Costs {
    /// `prefix[i]` = sum over atoms `< i` of (atom cost + cost of the gap after it).
    prefix: Vec<u64>,
    /// Cost of the gap after each atom (0 after the last).
    gap: Vec<u64>,
    budget: u64,
}

/// The atoms of one text and their costs under every limit.
pub(super) struct Atoms {
    pub atoms: Vec<Atom>,
    costs: Vec<Costs>,
}

impl Atoms {
    pub fn build(text: &str, measures: &[Measure]) -> Atoms {
        let words = words(text);
        let mut atoms: Vec<Atom> = Vec::with_capacity(words.len());
        let mut word_cost: Vec<Vec<u64>> = measures
            .iter()
            .map(|_| Vec::with_capacity(words.len()))
            .collect();
        let mut costs = vec![0u64; measures.len()];
        for &(start, end) in &words {
            let word = &text[start..end];
            let mut fits = true;
            for (c, m) in costs.iter_mut().zip(measures) {
                *c = m.cost(word);
                fits &= *c <= m.budget;
            }
            if fits {
                atoms.push(Atom {
                    start,
                    end,
                    brk: UNSET,
                });
                for (w, &c) in word_cost.iter_mut().zip(&costs) {
                    w.push(c);
                }
            } else {
                split_word(text, start, end, measures, &mut atoms, &mut word_cost);
            }
        }

        let n = atoms.len();
        let mut all = Vec::with_capacity(measures.len());
        for (m, w) in measures.iter().zip(&word_cost) {
            let mut prefix = Vec::with_capacity(n + 1);
            let mut gap = Vec::with_capacity(n);
            let mut sum = 0u64;
            prefix.push(0);
            for i in 0..n {
                let g = match atoms.get(i + 1) {
                    Some(next) => match &text[atoms[i].end..next.start] {
                        "" => 0,
                        " " => m.space,
                        other => m.cost(other),
                    },
                    None => 0,
                };
                sum += w[i] + g;
                prefix.push(sum);
                gap.push(g);
            }
            all.push(Costs {
                prefix,
                gap,
                budget: m.budget,
            });
        }

        for i in 0..n {
            if atoms[i].brk != UNSET {
                continue;
            }
            atoms[i].brk = match atoms.get(i + 1) {
                None => PARA,
                Some(next) => {
                    let lines = newlines(&text[atoms[i].end..next.start]);
                    if lines >= 2 {
                        PARA
                    } else if lines == 1 {
                        LINE
                    } else if ends_sentence(&text[atoms[i].start..atoms[i].end]) {
                        SENT
                    } else {
                        WORD
                    }
                }
            };
        }
        Atoms { atoms, costs: all }
    }

    pub fn len(&self) -> usize {
        self.atoms.len()
    }

    /// Cost of atoms `a..b` (`a < b`) under limit `j`: their words and the gaps between them.
    #[inline]
    pub fn cost(&self, j: usize, a: usize, b: usize) -> u64 {
        let c = &self.costs[j];
        c.prefix[b] - c.prefix[a] - c.gap[b - 1]
    }

    /// Whether atoms `a..b` fit every limit, by their summed costs.
    #[inline]
    pub fn fits(&self, a: usize, b: usize) -> bool {
        (0..self.costs.len()).all(|j| self.cost(j, a, b) <= self.costs[j].budget)
    }

    /// Whether atoms `a..b` hold at least half the budget of some limit.
    #[inline]
    pub fn half_full(&self, a: usize, b: usize) -> bool {
        (0..self.costs.len()).any(|j| 2 * self.cost(j, a, b) >= self.costs[j].budget)
    }

    /// Whether atoms `a..b` hold at least a third of the budget of some limit.
    #[inline]
    pub fn third_full(&self, a: usize, b: usize) -> bool {
        (0..self.costs.len()).any(|j| 3 * self.cost(j, a, b) >= self.costs[j].budget)
    }

    /// Index of the first atom starting at or after byte `at`.
    pub fn atom_at(&self, at: usize) -> usize {
        self.atoms.partition_point(|a| a.start < at)
    }
}

/// Cuts a word that does not fit alone into groups of whole grapheme clusters (about
/// `GROUP_BYTES` each); a group that still does not fit goes cluster by cluster, and a cluster
/// that alone exceeds a limit (the one case allowed) character by character.
fn split_word(
    text: &str,
    start: usize,
    end: usize,
    measures: &[Measure],
    atoms: &mut Vec<Atom>,
    word_cost: &mut [Vec<u64>],
) {
    let mut group = start;
    for (off, g) in text[start..end].grapheme_indices(true) {
        let at = start + off;
        if at > group && at + g.len() - group > GROUP_BYTES {
            push_group(text, group, at, measures, atoms, word_cost);
            group = at;
        }
    }
    push_group(text, group, end, measures, atoms, word_cost);
    if let Some(last) = atoms.last_mut() {
        last.brk = UNSET;
    }
}

fn push_group(
    text: &str,
    start: usize,
    end: usize,
    measures: &[Measure],
    atoms: &mut Vec<Atom>,
    word_cost: &mut [Vec<u64>],
) {
    if start >= end {
        return;
    }
    let piece = &text[start..end];
    if try_push(piece, start, measures, atoms, word_cost) {
        return;
    }
    for (off, g) in piece.grapheme_indices(true) {
        let at = start + off;
        if try_push(g, at, measures, atoms, word_cost) {
            continue;
        }
        for (coff, ch) in g.char_indices() {
            let c_at = at + coff;
            let s = &text[c_at..c_at + ch.len_utf8()];
            if !try_push(s, c_at, measures, atoms, word_cost) {
                force_push(s, c_at, measures, atoms, word_cost);
            }
        }
    }
}

/// Pushes `piece` (at byte `at`) as one part atom if it fits every limit.
fn try_push(
    piece: &str,
    at: usize,
    measures: &[Measure],
    atoms: &mut Vec<Atom>,
    word_cost: &mut [Vec<u64>],
) -> bool {
    if measures.iter().all(|m| m.cost(piece) <= m.budget) {
        force_push(piece, at, measures, atoms, word_cost);
        true
    } else {
        false
    }
}

fn force_push(
    piece: &str,
    at: usize,
    measures: &[Measure],
    atoms: &mut Vec<Atom>,
    word_cost: &mut [Vec<u64>],
) {
    atoms.push(Atom {
        start: at,
        end: at + piece.len(),
        brk: PART,
    });
    for (w, m) in word_cost.iter_mut().zip(measures) {
        w.push(m.cost(piece));
    }
}

/// The character at byte `i`, if `i` is a character boundary inside the text.
#[inline]
fn char_at(text: &str, i: usize) -> Option<char> {
    text.get(i..).and_then(|s| s.chars().next())
}

/// CJK sentence enders, after which a sentence ends with no space.
fn is_cjk_ender(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '｡')
}

/// Closing quotes and brackets that belong to the sentence they close.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | ')'
            | ']'
            | '}'
            | '”'
            | '’'
            | '»'
            | '」'
            | '』'
            | '）'
            | '】'
            | '〉'
            | '》'
            | '〕'
    )
}

/// Whether a word ends a sentence: its last character (after closing quotes and brackets) is
/// `. ! ?` or a CJK ender.
fn ends_sentence(word: &str) -> bool {
    word.chars()
        .rev()
        .find(|&c| !is_closer(c))
        .is_some_and(|c| matches!(c, '.' | '!' | '?' | '…') || is_cjk_ender(c))
}

/// Line breaks in a whitespace gap (`\r\n` is one; U+2029, the paragraph separator, two).
fn newlines(gap: &str) -> usize {
    let mut n = 0;
    let mut prev_cr = false;
    for c in gap.chars() {
        n += match c {
            '\n' if prev_cr => 0,
            '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' => 1,
            '\u{2029}' => 2,
            _ => 0,
        };
        prev_cr = c == '\r';
    }
    n
}

/// Words of the text as byte ranges, in order, on grapheme-cluster boundaries; adjacent words
/// may touch (no gap) after a CJK ender.
fn words(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let n = b.len();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(n / 6 + 1);
    let mut i = 0;
    while i < n {
        let c = b[i];
        if c < 0x80 {
            if is_ascii_space(c) {
                i += 1;
                continue;
            }
        } else {
            match char_at(text, i) {
                Some(ch) if ch.is_whitespace() => {
                    i += ch.len_utf8();
                    continue;
                }
                Some(_) => {}
                None => {
                    // Not a character boundary: unreachable, as `i` only moves by characters.
                    i += 1;
                    continue;
                }
            }
        }
        let start = i;
        while i < n {
            let c = b[i];
            if c < 0x80 {
                if is_ascii_space(c) {
                    break;
                }
                i += 1;
                continue;
            }
            let Some(ch) = char_at(text, i) else { break };
            if ch.is_whitespace() {
                break;
            }
            i += ch.len_utf8();
            if is_cjk_ender(ch) {
                while let Some(next) = char_at(text, i) {
                    if !is_closer(next) {
                        break;
                    }
                    i += next.len_utf8();
                }
                break;
            }
        }
        if i == start {
            // Unreachable (the first character is not whitespace); never loop forever.
            i += 1;
            continue;
        }
        push_word(text, &mut out, start, i);
    }
    out
}

/// Adds a word, widened to grapheme-cluster boundaries; merged into the previous word when a
/// cluster spans the gap between them.
fn push_word(text: &str, out: &mut Vec<(usize, usize)>, mut start: usize, mut end: usize) {
    let b = text.as_bytes();
    // Between two ASCII characters the only cluster is CR LF (both whitespace): only an edge
    // touching a non-ASCII character needs the real rules.
    if start > 0 && (b[start] >= 0x80 || b[start - 1] >= 0x80) && !is_boundary(text, start) {
        start = prev_boundary(text, start);
    }
    if end < b.len() && (b[end] >= 0x80 || b[end - 1] >= 0x80) && !is_boundary(text, end) {
        end = next_boundary(text, end);
    }
    match out.last_mut() {
        Some(last) if start < last.1 => last.1 = last.1.max(end),
        _ => out.push((start, end)),
    }
}

pub(super) fn is_boundary(text: &str, at: usize) -> bool {
    GraphemeCursor::new(at, text.len(), true)
        .is_boundary(text, 0)
        .unwrap_or(true)
}

fn prev_boundary(text: &str, at: usize) -> usize {
    GraphemeCursor::new(at, text.len(), true)
        .prev_boundary(text, 0)
        .ok()
        .flatten()
        .unwrap_or(0)
}

fn next_boundary(text: &str, at: usize) -> usize {
    GraphemeCursor::new(at, text.len(), true)
        .next_boundary(text, 0)
        .ok()
        .flatten()
        .unwrap_or(text.len())
}
