//! Fast reading of the float vectors in model responses.
//!
//! A response is mostly numbers: Cohere answers 96 × 1,024 of them per call. Through serde_json
//! each costs ~30 ns (number parsing, serde's per-element calls, vectors growing), which at tens
//! of thousands of rows per second is more CPU than everything else in the pipeline together.
//! So [`from_json`] first lifts every array of numbers out of the body in one pass (each number
//! read straight into one flat buffer), leaves a small placeholder in its place, and lets serde
//! read the rest; a [`Vector`] field resolves its placeholder. A `Vector` also reads a plain
//! array, so the same response types work with `serde_json::from_slice` and `Value`s.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::cell::RefCell;
use std::ops::Range;

/// A vector (or integer embedding) in a response.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Vector(pub Vec<f32>);

/// The arrays lifted out of the body being read on this thread.
#[derive(Default)]
struct Lifted {
    flat: Vec<f32>,
    ranges: Vec<Range<usize>>,
}

thread_local! {
    static LIFTED: RefCell<Option<Lifted>> = const { RefCell::new(None) };
}

/// Placeholders are strings `"\u0000v<k>"` (as written in the skeleton: an escaped NUL, which no
/// response carries), read back as `MARK` followed by the array's index.
const MARK: &str = "\u{0}v";
const MARK_JSON: &[u8] = b"\\u0000v";

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vector, E> {
                let k: usize = s
                    .strip_prefix(MARK)
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| E::invalid_type(de::Unexpected::Str(s), &self))?;
                LIFTED.with(|l| {
                    let l = l.borrow();
                    let l = l.as_ref().ok_or_else(|| E::custom("no lifted arrays"))?;
                    let r = l
                        .ranges
                        .get(k)
                        .ok_or_else(|| E::custom("bad placeholder"))?;
                    Ok(Vector(l.flat[r.clone()].to_vec()))
                })
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vector, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                Ok(Vector(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Vector {
    /// The values as integers (integer embedding types); `None` if one is not a whole number.
    pub fn integers(&self) -> Option<Vec<i64>> {
        self.0
            .iter()
            .map(|x| (x.fract() == 0.0 && x.abs() < 1e15).then_some(*x as i64))
            .collect()
    }

    /// [`Vector::integers`], or an error naming `what`.
    pub fn into_integers(self, what: &str) -> Result<Vec<i64>, crate::WireError> {
        self.integers()
            .ok_or_else(|| crate::WireError(format!("`{what}` has a value that is not an integer")))
    }
}

/// Deserialises a response whose vectors are [`Vector`]s, reading the numbers fast.
pub fn from_json<T: de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    let (skeleton, lifted) = lift(body);
    if lifted.ranges.is_empty() {
        return serde_json::from_slice(body);
    }
    LIFTED.with(|l| *l.borrow_mut() = Some(lifted));
    let out = serde_json::from_slice(&skeleton);
    LIFTED.with(|l| *l.borrow_mut() = None);
    out
}

/// One pass over the body: every array made only of numbers goes into the flat buffer, and the
/// rest of the body, with a placeholder string for each such array, into the skeleton.
fn lift(b: &[u8]) -> (Vec<u8>, Lifted) {
    let mut lifted = Lifted {
        flat: Vec::with_capacity(b.len() / 8),
        ranges: Vec::new(),
    };
    let mut skeleton = Vec::new();
    let (mut i, mut copied) = (0, 0);
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'[' {
            let start = lifted.flat.len();
            if let Some(end) = number_array(b, i, &mut lifted.flat) {
                skeleton.extend_from_slice(&b[copied..i]);
                skeleton.push(b'"');
                skeleton.extend_from_slice(MARK_JSON);
                skeleton.extend_from_slice(lifted.ranges.len().to_string().as_bytes());
                skeleton.push(b'"');
                lifted.ranges.push(start..lifted.flat.len());
                (i, copied) = (end, end);
                continue;
            }
            lifted.flat.truncate(start);
        }
        i += 1;
    }
    if !lifted.ranges.is_empty() {
        skeleton.extend_from_slice(&b[copied..]);
    }
    (skeleton, lifted)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// Reads the array of (at least one) numbers opening at `b[open]` into `out`; the index after
/// its `]`, or `None` if it is anything else (what it pushed is then left for the caller to cut).
fn number_array(b: &[u8], open: usize, out: &mut Vec<f32>) -> Option<usize> {
    let mut i = skip_ws(b, open + 1);
    loop {
        let (x, next) = number_at(b, i)?;
        out.push(x);
        i = skip_ws(b, next);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b']' => return Some(i + 1),
            _ => return None,
        }
    }
}

const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
const INV_POW10: [f64; 16] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15,
];

/// `m / 10^k` (`m` < 10^15, `k` <= 15) rounded to f32 exactly as serde_json rounds it: the
/// correctly rounded double, then rounded to f32. A multiplication by the (inexact) double
/// nearest 10^-k is within 2 units in the last place of that double (two roundings of at most
/// half a unit each, relative), so when it is further than 4 units from a point halfway between
/// two f32s both round to the same f32; only near such a point (about 1 in 60 million numbers
/// of a vector) is the slower correctly rounded division needed.
fn scaled(m: u64, k: usize) -> f32 {
    let m = m as i64 as f64; // exact: m < 2^53
    let quick = m * INV_POW10[k];
    // The bits of a double's significand that an f32 does not keep; halfway is the top one alone.
    const HALF: u64 = 1 << 28;
    if (quick.to_bits() & (2 * HALF - 1)).abs_diff(HALF) > 4 {
        quick as f32
    } else {
        (m / POW10[k]) as f32
    }
}

/// Are these eight bytes (loaded little-endian) all ASCII digits?
fn eight_digits(v: u64) -> bool {
    let a = v.wrapping_add(0x4646_4646_4646_4646);
    let b = v.wrapping_sub(0x3030_3030_3030_3030);
    (a | b) & 0x8080_8080_8080_8080 == 0
}

/// The value of eight ASCII digits loaded little-endian (first digit in the lowest byte).
fn eight_digits_value(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = v - 0x3030_3030_3030_3030;
    let v = (v * 10) + (v >> 8);
    (((v & MASK).wrapping_mul(MUL1)) + (((v >> 16) & MASK).wrapping_mul(MUL2))) >> 32
}

/// The JSON number starting at `b[i]`, as f32, and the index after it. Up to 15 significant
/// digits without an exponent take the fast path ([`scaled`]); anything else goes through the
/// standard library's parser.
#[inline(always)]
fn number_at(b: &[u8], start: usize) -> Option<(f32, usize)> {
    let mut i = start;
    let neg = b.get(i) == Some(&b'-');
    i += usize::from(neg);
    let mut m: u64 = 0;
    let int_start = i;
    while let Some(d) = b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d < 10) {
        m = m.wrapping_mul(10).wrapping_add(d as u64);
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    let dot = b.get(i) == Some(&b'.');
    if dot {
        i += 1;
        let frac_start = i;
        while let Some(chunk) = b.get(i..i + 8) {
            let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !eight_digits(v) {
                break;
            }
            m = m
                .wrapping_mul(100_000_000)
                .wrapping_add(eight_digits_value(v));
            i += 8;
        }
        while let Some(d) = b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d < 10) {
            m = m.wrapping_mul(10).wrapping_add(d as u64);
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    let exponent = matches!(b.get(i), Some(b'e' | b'E'));
    let grammar = int_digits > 0 && (!dot || frac_digits > 0);
    if !exponent && grammar && int_digits + frac_digits <= 15 {
        let v = scaled(m, frac_digits);
        return Some((if neg { -v } else { v }, i));
    }
    // Exponents, many digits, or not a number at all.
    while matches!(
        b.get(i),
        Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
    ) {
        i += 1;
    }
    let x = std::str::from_utf8(&b[start..i])
        .ok()?
        .parse::<f32>()
        .ok()?;
    Some((x, i))
}

/// One whole token as a number (tests).
#[cfg(test)]
fn number(tok: &[u8]) -> Option<f32> {
    number_at(tok, 0)
        .filter(|(_, end)| *end == tok.len())
        .map(|(x, _)| x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct R {
        embedding: Vector,
        nested: Vec<Vector>,
        texts: Vec<String>,
        count: u64,
    }

    #[test]
    fn lifted_arrays_read_like_serde_json() {
        let body = br#"{"texts": ["a [1, 2] \"b\" [3]", "\\"], "embedding": [ 0.5, -1.25e-3 ,3 ],
            "nested": [[1,2],[ -0.0123456789 ]], "count": 7}"#;
        let r: R = from_json(body).unwrap();
        assert_eq!(r.embedding.0, vec![0.5, -1.25e-3, 3.0]);
        assert_eq!(
            r.nested,
            vec![Vector(vec![1.0, 2.0]), Vector(vec![-0.012_345_679])]
        );
        assert_eq!(
            r.texts,
            vec!["a [1, 2] \"b\" [3]".to_string(), "\\".to_string()]
        );
        assert_eq!(r.count, 7);
        // The same types read plain JSON too.
        let plain: R = serde_json::from_slice(body).unwrap();
        assert_eq!(plain.embedding, r.embedding);
        assert_eq!(plain.nested, r.nested);
    }

    /// The next number of a xorshift sequence (repeatable pseudo-random test inputs).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn numbers_round_as_serde_json_does() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let rng = xorshift(&mut rng);
            let x = f32::from_bits((rng as u32 & 0x3fff_ffff) | ((rng >> 32) as u32 & 0x8000_0000));
            for s in [
                format!("{x}"),
                format!("{x:e}"),
                format!("{:.12}", x),
                format!("{}", x as f64),
            ] {
                let want: f32 = serde_json::from_str(&s).unwrap();
                assert_eq!(number(s.as_bytes()), Some(want), "{s}");
            }
        }
        for s in [
            "1",
            "-0",
            "0.1",
            "123456789012345678901234",
            "1E5",
            "-2.5e+3",
            "0.12345678",
            "-12345678.87654321",
            "0.000000000000001",
            "9007199254740993",
        ] {
            let want: f32 = serde_json::from_str(s).unwrap();
            assert_eq!(number(s.as_bytes()), Some(want), "{s}");
        }
    }

    #[test]
    fn numbers_halfway_between_two_f32s_round_as_serde_json_does() {
        // Between 2^15 and 2^16 neighbouring f32s are 2^-8 apart, so the point halfway between
        // two is a decimal of 14 digits (5 + 9); the quick multiplication misses such a tie by
        // a unit in a few per cent of them.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let x = f32::from_bits((127 + 15) << 23 | (xorshift(&mut rng) as u32 & 0x7f_ffff));
            let halfway = (f64::from(x) + f64::from(x.next_up())) / 2.0;
            let s = format!("{halfway:.9}");
            assert_eq!(s.parse::<f64>().unwrap(), halfway, "exact");
            for s in [s.clone(), format!("-{s}")] {
                let want: f32 = serde_json::from_str(&s).unwrap();
                assert_eq!(number(s.as_bytes()), Some(want), "{s}");
            }
        }
    }

    #[test]
    fn anything_but_numbers_is_left_to_serde() {
        for body in [
            &br#"{"embedding": [1, "x"], "nested": [], "texts": [], "count": 1}"#[..],
            br#"{"embedding": [1, 2,], "nested": [], "texts": [], "count": 1}"#,
            br#"{"embedding": [1 2], "nested": [], "texts": [], "count": 1}"#,
            br#"{"embedding": [.], "nested": [], "texts": [], "count": 1}"#,
            br#"{"embedding": [1, null], "nested": [], "texts": [], "count": 1}"#,
        ] {
            let fast = from_json::<R>(body).map(|r| r.embedding);
            let plain = serde_json::from_slice::<R>(body).map(|r| r.embedding);
            assert!(fast.is_err(), "{}", String::from_utf8_lossy(body));
            assert!(plain.is_err());
        }
        let r: R =
            from_json(br#"{"embedding": [], "nested": [[]], "texts": [], "count": 1}"#).unwrap();
        assert!(r.embedding.0.is_empty() && r.nested[0].0.is_empty());
        assert_eq!(Vector(vec![3.0, -128.0]).integers(), Some(vec![3, -128]));
        assert_eq!(Vector(vec![0.5]).integers(), None);
    }
}
