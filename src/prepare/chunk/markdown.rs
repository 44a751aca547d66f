//! The `markdown` strategy: sections kept together.
//!
//! Sections start at ATX headings (`#` to `######` at a line start, up to three spaces of
//! indent, then a space or tab), except inside fenced code blocks (```` ``` ```` or `~~~`). A
//! section with all its subsections becomes one chunk when it fits; otherwise its own text
//! (heading line and body up to the first subsection) is packed like `recursive` and each
//! subsection is handled the same way. Chunks never cross a section's edge, and the first
//! chunk of a section starts at its heading (no overlap from the section before), so each chunk
//! belongs to exactly one heading path: `"Guide > Install > Linux"`. Text before the first
//! heading has no heading.

use super::recursive::Packer;

/// A heading: where its line starts, its level (number of `#`) and its text.
#[derive(Debug)]
pub(super) struct Section {
    pub start: usize,
    pub level: u8,
    pub title: String,
}

pub(super) fn split(p: &mut Packer<'_>, text: &str) {
    let secs = sections(text);
    let atoms = p.atoms();
    let first = atoms.atom_at(secs.first().map_or(text.len(), |s| s.start));
    p.restart(None);
    p.pack(0, first, 0);
    let mut i = 0;
    while i < secs.len() {
        let end = subtree_end(&secs, i);
        section(p, text, &secs, i, end, secs[i].title.clone());
        i = end;
    }
    p.flush();
}

/// Index of the first section after `i` that is not one of its subsections.
fn subtree_end(secs: &[Section], i: usize) -> usize {
    let level = secs[i].level;
    (i + 1..secs.len())
        .find(|&k| secs[k].level <= level)
        .unwrap_or(secs.len())
}

/// Section `i`, whose subsections are `i + 1..end`, under heading path `path`.
fn section(p: &mut Packer<'_>, text: &str, secs: &[Section], i: usize, end: usize, path: String) {
    let atoms = p.atoms();
    let byte = |k: usize| secs.get(k).map_or(text.len(), |s| s.start);
    let start = atoms.atom_at(secs[i].start);
    let stop = atoms.atom_at(byte(end));
    let own = atoms.atom_at(byte(i + 1));
    p.restart(Some(path.clone()));
    if start >= stop {
        return;
    }
    if atoms.fits(start, stop) {
        p.add(start, stop);
        p.flush();
        return;
    }
    p.pack(start, own, 0);
    let mut c = i + 1;
    while c < end {
        let c_end = subtree_end(secs, c);
        let sub = format!("{path} > {}", secs[c].title);
        section(p, text, secs, c, c_end, sub);
        c = c_end;
    }
}

/// The ATX headings of a text, in order, skipping fenced code blocks.
pub(super) fn sections(text: &str) -> Vec<Section> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    // The open fence: its character and length.
    let mut fence: Option<(u8, usize)> = None;
    let mut line_start = 0;
    while line_start < b.len() {
        let line_end = b[line_start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| line_start + p);
        let line = &text[line_start..line_end];
        let rest = line.trim_start_matches(' ');
        if line.len() - rest.len() <= 3 {
            let rb = rest.as_bytes();
            let run = |ch: u8| rb.iter().take_while(|&&c| c == ch).count();
            match fence {
                Some((ch, len)) => {
                    let n = run(ch);
                    if n >= len && rest[n..].trim().is_empty() {
                        fence = None;
                    }
                }
                None => match rb.first() {
                    Some(&ch @ (b'`' | b'~')) => {
                        let n = run(ch);
                        if n >= 3 {
                            fence = Some((ch, n));
                        }
                    }
                    Some(b'#') => {
                        let n = run(b'#');
                        if n <= 6 && matches!(rb.get(n), Some(b' ' | b'\t')) {
                            out.push(Section {
                                start: line_start,
                                level: n as u8,
                                title: heading_text(&rest[n..]),
                            });
                        }
                    }
                    _ => {}
                },
            }
        }
        line_start = line_end + 1;
    }
    out
}

/// A heading's text: trimmed, without the optional closing `#`s.
fn heading_text(s: &str) -> String {
    let t = s.trim();
    let open = t.trim_end_matches('#');
    if open.len() == t.len() {
        t.to_string()
    } else if open.is_empty() {
        String::new()
    } else if open.ends_with([' ', '\t']) {
        open.trim_end().to_string()
    } else {
        t.to_string()
    }
}
