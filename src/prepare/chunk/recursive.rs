//! Packing atoms into chunks, level by level (the `recursive` and `sentences` strategies, and
//! the section text of `markdown`).
//!
//! At a level, a range of atoms is cut at the breaks of that level or stronger into pieces. A
//! piece that fits is a *unit*; a piece too big is cut at the next finer level, recursively.
//! Units (the largest pieces that fit: whole paragraphs where they fit, else their lines, their
//! sentences...) are packed greedily in text order, so a heading line and the first sentences
//! of a long paragraph after it share a chunk, rather than the heading standing alone.
//!
//! When the next unit does not fit, the chunk is cut at its *anchor*: of the unit ends where
//! it holds at least half its budget, the one after the unit with the highest content hash
//! (the units after it open the next chunk). A content-defined cut is what keeps boundaries
//! edit-stable: two packings that start apart (before and after an edit) pick the same anchor
//! as soon as their windows share the strongest unit end, and are then in step for good.
//!
//! Each chunk after the first starts with an overlap: the longest run of atoms ending the
//! previous chunk that costs at most `overlap` tokens (first limit), cut back when the new
//! content would not fit beside it. Every chunk is measured with the real counters before it
//! is emitted and shrunk atom by atom from the end if it does not fit.

use super::atoms::{Atoms, LINE, PARA, PART, SENT, WORD};
use super::{content_hash, Measure, Span};

/// `recursive`: paragraphs, lines, sentences, words, grapheme groups.
pub(super) const RECURSIVE_LEVELS: &[u8] = &[PARA, LINE, SENT, WORD, PART];
/// `sentences`: sentences (any line or paragraph break ends one), words, grapheme groups.
pub(super) const SENTENCE_LEVELS: &[u8] = &[SENT, WORD, PART];

/// A chunk being filled: atoms `start..end`, of which `start..new` repeat the previous chunk.
#[derive(Debug, Clone, Copy)]
struct Open {
    start: usize,
    new: usize,
    end: usize,
}

pub(super) struct Packer<'a> {
    text: &'a str,
    at: &'a Atoms,
    measures: &'a [Measure],
    overlap: u64,
    levels: &'static [u8],
    /// Whether chunks close at anchors (always, but for tests of plain packing).
    stable: bool,
    open: Option<Open>,
    /// The unit ends inside the open chunk (after `new`), each with the content hash of the
    /// unit that ends there: where it may be cut.
    cuts: Vec<(usize, u64)>,
    /// The last emitted chunk, as atoms `start..end`: where the next one's overlap comes from.
    prev: Option<(usize, usize)>,
    heading: Option<String>,
    out: Vec<Span>,
}

impl<'a> Packer<'a> {
    pub fn new(
        text: &'a str,
        at: &'a Atoms,
        measures: &'a [Measure],
        overlap: u64,
        levels: &'static [u8],
        stable: bool,
    ) -> Self {
        Packer {
            text,
            at,
            measures,
            overlap,
            levels,
            stable,
            open: None,
            cuts: Vec::new(),
            prev: None,
            heading: None,
            out: Vec::new(),
        }
    }

    pub fn into_spans(self) -> Vec<Span> {
        self.out
    }

    pub fn atoms(&self) -> &'a Atoms {
        self.at
    }

    /// Closes the open chunk and starts a new stretch: the next chunk takes no overlap (the
    /// edge of a markdown section), and carries `heading`.
    pub fn restart(&mut self, heading: Option<String>) {
        self.flush();
        self.prev = None;
        self.heading = heading;
    }

    /// Packs atoms `lo..hi` at level `depth` of the packer's levels (see the module docs).
    pub fn pack(&mut self, lo: usize, hi: usize, depth: usize) {
        let Some(&level) = self.levels.get(depth) else {
            return;
        };
        let finest = depth + 1 == self.levels.len();
        let at = self.at;
        let atoms = &at.atoms;
        let mut i = lo;
        while i < hi {
            let mut j = i;
            while j + 1 < hi && atoms[j].brk > level {
                j += 1;
            }
            j += 1;
            if finest || at.fits(i, j) {
                self.add(i, j);
            } else {
                self.pack(i, j, depth + 1);
            }
            i = j;
        }
    }

    /// Adds the unit of atoms `i..j` (right after the open chunk, if any). When it does not
    /// fit, the open chunk is cut first, at its anchor.
    pub fn add(&mut self, i: usize, j: usize) {
        let strength = if self.stable {
            let (text, at) = (self.text, self.at);
            content_hash(&text.as_bytes()[at.atoms[i].start..at.atoms[j - 1].end])
        } else {
            0
        };
        let mut cur = self.open.take();
        loop {
            match cur {
                Some(o) if self.at.fits(o.start, j) => {
                    self.open = Some(Open { end: j, ..o });
                    break;
                }
                Some(o) => {
                    let stop = self.anchor(o);
                    cur = self.emit_until(o, stop);
                }
                None => {
                    let mut start = self.overlap_start(i);
                    while start < i && !self.at.fits(start, j) {
                        start += 1;
                    }
                    self.cuts.clear();
                    self.open = Some(Open {
                        start,
                        new: i,
                        end: j,
                    });
                    break;
                }
            }
        }
        self.cuts.push((j, strength));
    }

    /// Emits the open chunk, if any, whole.
    pub fn flush(&mut self) {
        let mut cur = self.open.take();
        while let Some(o) = cur {
            cur = self.emit_until(o, o.end);
        }
        self.cuts.clear();
    }

    /// Where a full chunk is cut: at a paragraph end where it holds at least a third of its
    /// budget (a short heading line alone does not), else at a unit end where it holds at least half; among those, the strongest
    /// break, then the strongest unit (highest content hash), else at its end. Paragraph ends
    /// first keep chunks in step with the document's structure (an inserted paragraph moves
    /// the chunks after it without changing them); the content hash is the units' own, not
    /// their position, so after an edit two packings fall back in step at the first chunk
    /// whose windows share their strongest end.
    fn anchor(&self, o: Open) -> usize {
        if !self.stable {
            return o.end;
        }
        let mut best: Option<(u8, u64, usize)> = None;
        for &(end, strength) in &self.cuts {
            if end <= o.new || end > o.end {
                continue;
            }
            let brk = self.at.atoms[end - 1].brk;
            let eligible = match brk {
                PARA => self.at.third_full(o.start, end),
                _ => self.at.half_full(o.start, end),
            };
            let better = best.is_none_or(|(b, s, _)| brk < b || (brk == b && strength > s));
            if eligible && better {
                best = Some((brk, strength, end));
            }
        }
        best.map_or(o.end, |(_, _, end)| end)
    }

    /// Emits the open chunk up to atom `stop` (less, if it does not fit by real count); the
    /// rest, if any, goes on as the open chunk, after its overlap.
    fn emit_until(&mut self, o: Open, stop: usize) -> Option<Open> {
        let done = self.emit(o.start, o.new, stop);
        self.cuts.retain(|&(end, _)| end > done);
        if done >= o.end {
            return None;
        }
        let mut start = self.overlap_start(done);
        while start < done && !self.at.fits(start, o.end) {
            start += 1;
        }
        Some(Open {
            start,
            new: done,
            end: o.end,
        })
    }

    /// Where the chunk whose new content starts at atom `at` starts: inside the previous chunk
    /// when it ends right there, as far back as `overlap` allows but after its start.
    fn overlap_start(&self, at: usize) -> usize {
        match self.prev {
            Some((ps, pe)) if self.overlap > 0 && pe == at => {
                let mut q = pe;
                while q - 1 > ps && self.at.cost(0, q - 1, pe) <= self.overlap {
                    q -= 1;
                }
                q
            }
            _ => at,
        }
    }

    /// The first limit that atoms `a..b` exceed by real count, and by how much.
    fn excess(&self, a: usize, b: usize) -> Option<(usize, u64)> {
        let s = &self.text[self.at.atoms[a].start..self.at.atoms[b - 1].end];
        self.measures.iter().enumerate().find_map(|(j, m)| {
            let n = m.limit.counter.count(s);
            (n > m.limit.max).then(|| (j, (n - m.limit.max) as u64))
        })
    }

    /// Emits atoms `start..stop` (`start..new` being the overlap) after measuring them with
    /// the real counters; a chunk that does not fit loses atoms from its end, then its
    /// overlap, until it does. Returns where the emitted chunk ends.
    fn emit(&mut self, mut start: usize, new: usize, end: usize) -> usize {
        let mut stop = end;
        while let Some((j, excess)) = self.excess(start, stop) {
            let full = self.at.cost(j, start, stop);
            if stop - new > 1 {
                loop {
                    stop -= 1;
                    let dropped = full.saturating_sub(self.at.cost(j, start, stop));
                    if stop - new <= 1 || dropped >= excess {
                        break;
                    }
                }
            } else if start < new {
                loop {
                    start += 1;
                    let dropped = full.saturating_sub(self.at.cost(j, start, stop));
                    if start >= new || dropped >= excess {
                        break;
                    }
                }
            } else {
                // One atom alone over a limit: only a single character can be (see atoms).
                break;
            }
        }
        self.out.push(Span {
            start: self.at.atoms[start].start,
            end: self.at.atoms[stop - 1].end,
            heading: self.heading.clone(),
        });
        self.prev = Some((start, stop));
        stop
    }
}
