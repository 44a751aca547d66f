//! Response bodies whose float arrays are written in one tight loop.
//!
//! A Cohere answer is ~100,000 floats; through serde, every float pays for the generic
//! serializer (a separator, a formatter call, a small append), which is most of the emulator's
//! CPU per call. [`to_body`] serialises the response's skeleton with serde and has each
//! [`Floats`] write its numbers straight into a side buffer, leaving a placeholder string that is
//! then replaced by the numbers. The text is the same serde_json would write (same shortest
//! float formatting; non-finite numbers as `null`).

use serde::{Serialize, Serializer};
use std::cell::RefCell;

/// A float array in a response body.
pub struct Floats<'a>(pub &'a [f32]);

/// Numbers written by [`Floats`] while [`to_body`] runs on this thread.
struct Side {
    /// Random per body, part of every placeholder: a text in the response cannot forge one.
    nonce: u64,
    text: Vec<u8>,
    /// Where each array's text lies in `text`, in the order they were serialised.
    ranges: Vec<(usize, usize)>,
}

thread_local! {
    static SIDE: RefCell<Option<Side>> = const { RefCell::new(None) };
}

/// Placeholders are strings `"\u0000f<nonce>-<k>"`: the value [`Floats`] serialises is
/// `MARK_VALUE` + [`id`], which serde_json writes as `MARK` + id + `"` (it escapes the NUL).
const MARK_VALUE: &str = "\u{0}f";
const MARK: &[u8] = b"\"\\u0000f";

/// What follows the mark in placeholder `k`.
fn id(nonce: u64, k: usize) -> String {
    format!("{nonce:016x}-{k}")
}

fn write_floats(out: &mut Vec<u8>, xs: &[f32]) {
    out.reserve(xs.len() * 16 + 2);
    out.push(b'[');
    let mut buf = zmij::Buffer::new();
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if x.is_finite() {
            out.extend_from_slice(buf.format_finite(*x).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

impl Serialize for Floats<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mark = SIDE.with_borrow_mut(|side| {
            side.as_mut().map(|side| {
                let start = side.text.len();
                write_floats(&mut side.text, self.0);
                side.ranges.push((start, side.text.len()));
                format!("{MARK_VALUE}{}", id(side.nonce, side.ranges.len() - 1))
            })
        });
        match mark {
            Some(m) => s.serialize_str(&m),
            None => self.0.serialize(s),
        }
    }
}

/// Clears the side buffer even if serialisation panics.
struct Active;

impl Drop for Active {
    fn drop(&mut self) {
        SIDE.with_borrow_mut(|s| *s = None);
    }
}

/// `value` as JSON bytes, float arrays written by the fast path.
pub fn to_body<T: Serialize>(value: &T) -> Vec<u8> {
    SIDE.with_borrow_mut(|s| {
        *s = Some(Side {
            nonce: fastrand::u64(..),
            text: Vec::new(),
            ranges: Vec::new(),
        })
    });
    let active = Active;
    let skeleton = serde_json::to_vec(value).expect("response values serialise");
    let side = SIDE
        .with_borrow_mut(Option::take)
        .expect("side buffer set above");
    drop(active);
    splice(skeleton, &side)
}

/// Replaces placeholder `k` (the k-th, in order) with array `k`'s text.
fn splice(skeleton: Vec<u8>, side: &Side) -> Vec<u8> {
    if side.ranges.is_empty() {
        return skeleton;
    }
    let mut out = Vec::with_capacity(skeleton.len() + side.text.len());
    let mut next = 0usize;
    let mut copied = 0usize;
    let mut i = 0usize;
    while next < side.ranges.len() {
        let Some(at) = find(&skeleton[i..], MARK).map(|p| p + i) else {
            break;
        };
        let tail = id(side.nonce, next);
        let after = at + MARK.len() + tail.len();
        let ours = skeleton[at + MARK.len()..].starts_with(tail.as_bytes())
            && skeleton.get(after) == Some(&b'"');
        let end = after + 1;
        if ours {
            out.extend_from_slice(&skeleton[copied..at]);
            let (a, b) = side.ranges[next];
            out.extend_from_slice(&side.text[a..b]);
            copied = end;
            next += 1;
            i = copied;
        } else {
            i = at + 1;
        }
    }
    assert_eq!(
        next,
        side.ranges.len(),
        "every float array's placeholder is found"
    );
    out.extend_from_slice(&skeleton[copied..]);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Resp<'a> {
        id: &'a str,
        embeddings: Vec<Floats<'a>>,
        texts: Vec<&'a str>,
        one: Floats<'a>,
    }

    #[derive(Serialize)]
    struct Plain<'a> {
        id: &'a str,
        embeddings: Vec<&'a [f32]>,
        texts: Vec<&'a str>,
        one: &'a [f32],
    }

    #[test]
    fn same_text_as_serde_json() {
        let mut rng = fastrand::Rng::with_seed(7);
        let vs: Vec<Vec<f32>> = (0..5)
            .map(|_| {
                (0..300)
                    .map(|_| f32::from_bits(rng.u32(..)))
                    .filter(|x| x.is_finite())
                    .chain([0.0, -0.0, 1.0, 1e-40, f32::MAX, 0.1])
                    .collect()
            })
            .collect();
        // Texts that look like placeholders must be left alone.
        let texts = [
            "\u{0}f0",
            "\"\u{0}f1\"",
            "[\u{0}f0",
            "\u{0}f0000000000000000-0",
            "",
        ];
        let fast = to_body(&Resp {
            id: "\u{0}f0",
            embeddings: vs.iter().map(|v| Floats(v)).collect(),
            texts: texts.to_vec(),
            one: Floats(&[]),
        });
        let slow = serde_json::to_vec(&Plain {
            id: "\u{0}f0",
            embeddings: vs.iter().map(Vec::as_slice).collect(),
            texts: texts.to_vec(),
            one: &[],
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(fast).unwrap(),
            String::from_utf8(slow).unwrap()
        );
    }

    #[test]
    fn non_finite_is_null_and_plain_serialisation_still_works() {
        let v = [1.5, f32::NAN, f32::INFINITY];
        assert_eq!(to_body(&Floats(&v)), b"[1.5,null,null]");
        assert_eq!(
            serde_json::to_string(&Floats(&v)).unwrap(),
            "[1.5,null,null]"
        );
        // After a fast body, the thread is back to plain serialisation.
        assert_eq!(serde_json::to_string(&Floats(&[2.0])).unwrap(), "[2.0]");
    }
}
