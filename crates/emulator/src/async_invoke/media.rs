//! Media durations from file headers (WAV, MP4/MOV), which decide how many segments a job's
//! results have: no media library, just the few header fields that carry the length.

/// The duration of a WAV or MP4/MOV file, from its header.
pub fn media_seconds(b: &[u8]) -> Option<f64> {
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE" {
        return wav_seconds(b);
    }
    mp4_seconds(b)
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn wav_seconds(b: &[u8]) -> Option<f64> {
    let mut at = 12;
    let mut byte_rate = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32::from_le_bytes(b[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"fmt " {
            byte_rate = Some(u32::from_le_bytes(
                b.get(at + 16..at + 20)?.try_into().ok()?,
            ));
        } else if id == b"data" {
            let size = size.min(b.len() - at - 8);
            return Some(size as f64 / byte_rate? as f64);
        }
        at += 8 + size + (size & 1);
    }
    None
}

/// Walks the MP4 box tree to `moov/mvhd` and reads its timescale and duration.
fn mp4_seconds(b: &[u8]) -> Option<f64> {
    fn find(b: &[u8], path: &[&[u8]]) -> Option<usize> {
        let mut at = 0;
        while at + 8 <= b.len() {
            let mut size = u32_be(b, at)? as usize;
            let mut header = 8;
            if size == 1 {
                size = u64_be(b, at + 8)? as usize;
                header = 16;
            } else if size == 0 {
                size = b.len() - at;
            }
            if size < header {
                return None;
            }
            if &b[at + 4..at + 8] == path[0] {
                if path.len() == 1 {
                    return Some(at + header);
                }
                let inner = b.get(at + header..(at + size).min(b.len()))?;
                return find(inner, &path[1..]).map(|i| at + header + i);
            }
            at += size;
        }
        None
    }
    let mvhd = find(b, &[b"moov", b"mvhd"])?;
    let version = *b.get(mvhd)?;
    let (scale, duration) = if version == 1 {
        (u32_be(b, mvhd + 20)?, u64_be(b, mvhd + 24)?)
    } else {
        (u32_be(b, mvhd + 12)?, u32_be(b, mvhd + 16)? as u64)
    };
    (scale > 0).then(|| duration as f64 / scale as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../sample_data/media")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn reads_durations_of_the_sample_media() {
        let v = media_seconds(&sample("city_tour.mp4")).unwrap();
        assert!((v - 12.0).abs() < 0.1, "{v}");
        let a = media_seconds(&sample("welcome.wav")).unwrap();
        assert!((a - 9.44).abs() < 0.05, "{a}");
        assert_eq!(media_seconds(b"not media"), None);
    }
}
