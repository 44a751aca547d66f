//! Deterministic stand-in embeddings: the same input always gives the same vector, and texts that
//! share words get similar vectors (feature hashing of words and character trigrams), so search
//! over emulator vectors behaves sensibly.

/// FNV-1a, 64-bit: stable across platforms and Rust versions.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Models whose vectors are not unit length come back scaled by this.
const UNNORMALIZED_SCALE: f32 = 1.75;

fn finish(mut v: Vec<f32>, normalize: bool) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        let k = if normalize {
            1.0 / n
        } else {
            UNNORMALIZED_SCALE / n
        };
        v.iter_mut().for_each(|x| *x *= k);
    } else {
        v[0] = 1.0;
    }
    v
}

fn add_feature(v: &mut [f32], seed: u64, feature: &[u8], weight: f32) {
    let mut s = seed ^ fnv(feature);
    let dim = v.len() as u64;
    for _ in 0..8 {
        let r = splitmix(&mut s);
        let i = (r % dim) as usize;
        let sign = if (r >> 63) == 0 { 1.0 } else { -1.0 };
        v[i] += sign * weight;
    }
}

/// A text vector from its lowercase words (weight 1) and their character trigrams (weight 0.3).
pub fn text(model: &str, text: &str, dim: usize, normalize: bool) -> Vec<f32> {
    let seed = fnv(model.as_bytes());
    let mut v = vec![0f32; dim];
    // ` word `, and where each of its characters starts (reused across words).
    let mut padded = String::new();
    let mut starts: Vec<usize> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        padded.clear();
        padded.push(' ');
        if word.is_ascii() {
            padded.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
        } else {
            padded.push_str(&word.to_lowercase());
        }
        padded.push(' ');
        add_feature(&mut v, seed, &padded.as_bytes()[1..padded.len() - 1], 1.0);
        starts.clear();
        starts.extend(padded.char_indices().map(|(i, _)| i));
        starts.push(padded.len());
        // Every window of three characters.
        for k in 0..starts.len().saturating_sub(3) {
            let tri = &padded.as_bytes()[starts[k]..starts[k + 3]];
            add_feature(&mut v, seed ^ 0x5555, tri, 0.3);
        }
    }
    finish(v, normalize)
}

/// A dense pseudo-random vector seeded by the content (images, media).
pub fn bytes(model: &str, data: &[u8], dim: usize, normalize: bool) -> Vec<f32> {
    let mut s = fnv(model.as_bytes())
        ^ u64::from_le_bytes(
            blake3::hash(data).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
    let v = (0..dim)
        .map(|_| (splitmix(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    finish(v, normalize)
}

/// The mean of several vectors, re-scaled.
pub fn average(parts: &[Vec<f32>], normalize: bool) -> Vec<f32> {
    let mut v = vec![0f32; parts[0].len()];
    for p in parts {
        v.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    finish(v, normalize)
}

/// Integer embedding types derived from a float vector (Cohere semantics: `binary`/`ubinary`
/// are bit-packed, 8 dimensions per value).
pub fn quantize(v: &[f32], kind: &str) -> Vec<i64> {
    let max = v
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    match kind {
        "int8" => v.iter().map(|x| (x / max * 127.0).round() as i64).collect(),
        "uint8" => v
            .iter()
            .map(|x| (x / max * 127.0).round() as i64 + 128)
            .collect(),
        _ => v
            .chunks(8)
            .map(|c| {
                let byte =
                    c.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, x)| if *x > 0.0 { b | (0x80 >> i) } else { b });
                if kind == "binary" {
                    byte as i8 as i64
                } else {
                    byte as i64
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    #[test]
    fn deterministic_normalised_and_similar_for_similar_text() {
        let a = text("m", "the quick brown fox", 256, true);
        assert_eq!(a, text("m", "the quick brown fox", 256, true));
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
        let b = text("m", "the quick brown foxes", 256, true);
        let c = text("m", "quarterly revenue grew", 256, true);
        assert!(cos(&a, &b) > 0.6, "{}", cos(&a, &b));
        assert!(cos(&a, &b) > cos(&a, &c) + 0.3);
        let u = text("m", "x", 64, false);
        assert!((u.iter().map(|x| x * x).sum::<f32>().sqrt() - UNNORMALIZED_SCALE).abs() < 1e-3);
        assert_ne!(text("other", "x", 64, true), text("m", "x", 64, true));
    }

    /// The straightforward form of [`text`] (one string per trigram): the vectors must not change.
    fn text_reference(model: &str, text: &str, dim: usize, normalize: bool) -> Vec<f32> {
        let seed = fnv(model.as_bytes());
        let mut v = vec![0f32; dim];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let w = word.to_lowercase();
            add_feature(&mut v, seed, w.as_bytes(), 1.0);
            let padded: Vec<char> = format!(" {w} ").chars().collect();
            for t in padded.windows(3) {
                let tri: String = t.iter().collect();
                add_feature(&mut v, seed ^ 0x5555, tri.as_bytes(), 0.3);
            }
        }
        finish(v, normalize)
    }

    #[test]
    fn text_vectors_unchanged() {
        for t in [
            "The Quick brown fox, 42 times!",
            "ÉCOLE naïve Straße ΣΊΣΥΦΟΣ 東京",
            "a I x",
            "",
            "  --  ",
        ] {
            assert_eq!(
                text("m", t, 96, true),
                text_reference("m", t, 96, true),
                "{t}"
            );
        }
    }

    #[test]
    fn quantized_types() {
        let v = [0.5, -1.0, 0.25, 0.0, 1.0, 1.0, -0.1, 0.3, 0.2];
        assert_eq!(quantize(&v, "int8")[..2], [64, -127]);
        assert_eq!(quantize(&v, "ubinary"), vec![0b1010_1101, 0b1000_0000]);
        assert_eq!(quantize(&v, "binary")[0], 0b1010_1101u8 as i8 as i64);
    }
}
