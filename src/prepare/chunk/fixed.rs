//! The `fixed` strategy: consecutive windows of as many grapheme clusters as fit every limit,
//! whatever the structure of the text.
//!
//! Sums of per-grapheme costs would badly over-count (three letters are one estimated token,
//! not three), so windows are measured with the real counters: galloping from the previous
//! window's length, then bisecting (counts grow with the window). Windows are trimmed of
//! whitespace clusters at both ends. The overlap is the longest tail of the previous window
//! that counts at most `overlap` tokens with the first limit's counter (without its special
//! tokens), found the same way.

use unicode_segmentation::{GraphemeIndices, UnicodeSegmentation};

use super::{Measure, Span};

/// Window length (in clusters) tried first, before any window has been measured.
const FIRST_GUESS: usize = 64;

/// Grapheme-cluster boundaries, produced lazily and dropped behind the window, so memory stays
/// proportional to a window rather than to the text. Boundary `i` is where cluster `i` starts
/// (the last one is the text's end).
struct Bounds<'a> {
    text: &'a str,
    iter: GraphemeIndices<'a>,
    /// Boundaries `first..first + buf.len()`.
    buf: Vec<usize>,
    first: usize,
    done: bool,
}

impl<'a> Bounds<'a> {
    fn new(text: &'a str) -> Self {
        Bounds {
            text,
            iter: text.grapheme_indices(true),
            buf: Vec::new(),
            first: 0,
            done: false,
        }
    }

    /// Reads boundaries up to index `i`; returns `i`, or the last index if the text ends first.
    fn reach(&mut self, i: usize) -> usize {
        while self.first + self.buf.len() <= i && !self.done {
            match self.iter.next() {
                Some((p, _)) => self.buf.push(p),
                None => {
                    self.buf.push(self.text.len());
                    self.done = true;
                }
            }
        }
        i.min((self.first + self.buf.len()).saturating_sub(1))
    }

    /// Byte position of boundary `i` (the text's end past the last).
    fn at(&mut self, i: usize) -> usize {
        let i = self.reach(i);
        self.buf
            .get(i.wrapping_sub(self.first))
            .copied()
            .unwrap_or(self.text.len())
    }

    /// Whether cluster `i` exists.
    fn exists(&mut self, i: usize) -> bool {
        self.reach(i + 1) > i
    }

    /// Whether cluster `i` is whitespace only.
    fn is_ws(&mut self, i: usize) -> bool {
        let (a, b) = (self.at(i), self.at(i + 1));
        self.text[a..b].chars().all(char::is_whitespace)
    }

    /// Forgets boundaries before `i` (never needed again).
    fn discard_before(&mut self, i: usize) {
        if i > self.first {
            let k = (i - self.first).min(self.buf.len());
            self.buf.drain(..k);
            self.first += k;
        }
    }

    /// The first cluster at or after `i` that is not whitespace.
    fn next_solid(&mut self, mut i: usize) -> Option<usize> {
        while self.exists(i) {
            if !self.is_ws(i) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The end of window `s..e` once whitespace clusters are trimmed (cluster `s` is not).
    fn trim(&mut self, s: usize, mut e: usize) -> usize {
        while e > s + 1 && self.is_ws(e - 1) {
            e -= 1;
        }
        e
    }
}

struct Windows<'t, 'm> {
    text: &'t str,
    measures: &'m [Measure],
    g: Bounds<'t>,
}

impl Windows<'_, '_> {
    /// Whether clusters `s..e` (trimmed) fit every limit, by real count.
    fn fits(&mut self, s: usize, e: usize) -> bool {
        let e = self.g.trim(s, e);
        let (a, b) = (self.g.at(s), self.g.at(e));
        let piece = &self.text[a..b];
        self.measures.iter().all(|m| m.fits_str(piece))
    }

    /// The largest `e` such that `s..e` fits, given that `s..lo` does; searched around
    /// `s + guess`.
    fn widest(&mut self, s: usize, mut lo: usize, guess: usize) -> usize {
        let mut hi = None;
        let p = self.g.reach(s + guess);
        if p > lo {
            if self.fits(s, p) {
                lo = p;
            } else {
                hi = Some(p);
            }
        }
        let mut step = (guess / 8).max(1);
        match hi {
            None => loop {
                let p = self.g.reach(lo + step);
                if p == lo {
                    break;
                }
                if self.fits(s, p) {
                    lo = p;
                    step *= 2;
                } else {
                    hi = Some(p);
                    break;
                }
            },
            Some(mut h) => {
                while h - lo > step {
                    let p = h - step;
                    if self.fits(s, p) {
                        lo = p;
                        break;
                    }
                    h = p;
                    step *= 2;
                }
                hi = Some(h);
            }
        }
        if let Some(mut h) = hi {
            while h - lo > 1 {
                let mid = lo + (h - lo) / 2;
                if self.fits(s, mid) {
                    lo = mid;
                } else {
                    h = mid;
                }
            }
        }
        lo
    }

    /// Whether clusters `q..end` cost at most `overlap` with the first limit.
    fn within(&mut self, q: usize, end: usize, overlap: u64) -> bool {
        let (a, b) = (self.g.at(q), self.g.at(end));
        self.measures[0].cost(&self.text[a..b]) <= overlap
    }

    /// Start of the next window inside window `s..end`: the earliest non-whitespace cluster
    /// after `s` whose tail fits the overlap. `None` when no tail does.
    fn overlap_start(&mut self, s: usize, end: usize, overlap: u64) -> Option<usize> {
        if overlap == 0 {
            return None;
        }
        let (mut bad, mut good) = (s, end);
        let mut step = 1;
        loop {
            let q = good.saturating_sub(step);
            if q <= s {
                break;
            }
            if self.within(q, end, overlap) {
                good = q;
                step *= 2;
            } else {
                bad = q;
                break;
            }
        }
        while good - bad > 1 {
            let mid = bad + (good - bad) / 2;
            if self.within(mid, end, overlap) {
                good = mid;
            } else {
                bad = mid;
            }
        }
        let mut q = good;
        while q < end && self.g.is_ws(q) {
            q += 1;
        }
        (q < end).then_some(q)
    }

    /// A single cluster over a limit (the one case a cluster is cut): windows of as many
    /// characters as fit, trimmed; a character over a limit alone goes alone.
    fn split_chars(&self, a: usize, b: usize, out: &mut Vec<Span>) {
        let mut from = a;
        while from < b {
            let mut to = None;
            for (off, ch) in self.text[from..b].char_indices() {
                let e = from + off + ch.len_utf8();
                if self
                    .measures
                    .iter()
                    .all(|m| m.fits_str(&self.text[from..e]))
                {
                    to = Some(e);
                } else {
                    break;
                }
            }
            let to = to.unwrap_or_else(|| {
                from + self.text[from..b].chars().next().map_or(1, char::len_utf8)
            });
            push_trimmed(self.text, from, to, out);
            from = to;
        }
    }
}

fn push_trimmed(text: &str, a: usize, b: usize, out: &mut Vec<Span>) {
    let piece = &text[a..b];
    let lead = piece.len() - piece.trim_start().len();
    let trail = piece.len() - piece.trim_end().len();
    if lead + trail < piece.len() {
        out.push(Span {
            start: a + lead,
            end: b - trail,
            heading: None,
        });
    }
}

pub(super) fn split(text: &str, measures: &[Measure], overlap: u64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut w = Windows {
        text,
        measures,
        g: Bounds::new(text),
    };
    let Some(mut fresh) = w.g.next_solid(0) else {
        return out;
    };
    // The window starts at `s` (inside the previous window when overlapping) and must take in
    // cluster `fresh`, the first one no window holds yet.
    let mut s = fresh;
    let mut guess = FIRST_GUESS;
    loop {
        if !w.fits(s, fresh + 1) {
            if s < fresh {
                s = fresh;
                continue;
            }
            let (a, b) = (w.g.at(s), w.g.at(s + 1));
            w.split_chars(a, b, &mut out);
            let Some(next) = w.g.next_solid(s + 1) else {
                break;
            };
            fresh = next;
            s = next;
            w.g.discard_before(s);
            continue;
        }
        let e = w.widest(s, fresh + 1, guess);
        let end = w.g.trim(s, e);
        out.push(Span {
            start: w.g.at(s),
            end: w.g.at(end),
            heading: None,
        });
        guess = e - s;
        let Some(next) = w.g.next_solid(end) else {
            break;
        };
        fresh = next;
        s = w.overlap_start(s, end, overlap).unwrap_or(next);
        w.g.discard_before(s);
    }
    out
}
