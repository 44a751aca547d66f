//! Media inputs of async jobs: telling video from audio, identifying content, and staging local
//! files in S3 under content-addressed keys (so re-runs never upload twice).

use crate::clients::s3::S3;
use crate::util::{FailureKind, S3Uri};
use embedpipe_wire::Modality;
use std::path::Path;

/// A media input resolved to an S3 object the job can read.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub uri: S3Uri,
    pub modality: Modality,
    pub format: &'static str,
    /// Identifies the content: the file's BLAKE3 (local files) or the object's ETag (`s3://`).
    pub content: String,
    /// The file was uploaded by this run (false: already staged, or an `s3://` input).
    pub uploaded: bool,
}

/// Why an input cannot be used: (why, message).
pub type Refusal = (FailureKind, String);

/// Container format and modality from a file name's extension.
pub fn from_extension(name: &str) -> Option<(Modality, &'static str)> {
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    let found = [
        (Modality::Video, "mp4"),
        (Modality::Video, "mov"),
        (Modality::Video, "mkv"),
        (Modality::Video, "webm"),
        (Modality::Video, "flv"),
        (Modality::Video, "mpeg"),
        (Modality::Video, "mpg"),
        (Modality::Video, "wmv"),
        (Modality::Video, "3gp"),
        (Modality::Audio, "mp3"),
        (Modality::Audio, "wav"),
        (Modality::Audio, "ogg"),
    ]
    .into_iter()
    .find(|(_, e)| *e == ext)
    .or(match ext.as_str() {
        "m4v" => Some((Modality::Video, "mp4")),
        "mpga" => Some((Modality::Audio, "mp3")),
        "txt" | "text" | "md" => Some((Modality::Text, "txt")),
        "oga" | "opus" => Some((Modality::Audio, "ogg")),
        _ => None,
    });
    found
}

/// Container format and modality from a file's first bytes.
pub fn from_magic(b: &[u8]) -> Option<(Modality, &'static str)> {
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE" {
        Some((Modality::Audio, "wav"))
    } else if b.starts_with(b"OggS") {
        Some((Modality::Audio, "ogg"))
    } else if b.starts_with(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0) {
        Some((Modality::Audio, "mp3"))
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        Some(if &b[8..10] == b"qt" {
            (Modality::Video, "mov")
        } else if &b[8..11] == b"3gp" {
            (Modality::Video, "3gp")
        } else {
            (Modality::Video, "mp4")
        })
    } else if b.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        Some((Modality::Video, "mkv"))
    } else if b.starts_with(b"FLV") {
        Some((Modality::Video, "flv"))
    } else {
        None
    }
}

/// Picks modality and format: the step's or the row's modality if given, the extension, then
/// (local files) the magic bytes.
pub fn classify(
    name: &str,
    head: Option<&[u8]>,
    wanted: Option<Modality>,
) -> Result<(Modality, &'static str), Refusal> {
    let found = from_extension(name).or_else(|| head.and_then(from_magic));
    match (found, wanted) {
        (Some((m, f)), None) => Ok((m, f)),
        (Some((m, f)), Some(w)) if m == w => Ok((m, f)),
        // An mp4 holding only sound, say: the container stays, the modality is the row's.
        (Some((_, f)), Some(w)) if embedpipe_wire::media_formats(w).contains(&f) => Ok((w, f)),
        (Some((m, f)), Some(w)) => Err((
            FailureKind::WrongModality,
            format!(
                "`{name}` looks like {} ({f}), but the step says {}; fix the `modality` setting or the row",
                m.as_str(),
                w.as_str()
            ),
        )),
        (None, _) => Err((
            FailureKind::UnsupportedMedia,
            format!(
                "`{name}` is not a video, audio or text format embedpipe can send (video: {}; audio: {}; text: .txt, .md)",
                embedpipe_wire::media_formats(Modality::Video).join(", "),
                embedpipe_wire::media_formats(Modality::Audio).join(", ")
            ),
        )),
    }
}

/// BLAKE3 of a local file, streamed (call on rayon: it is CPU and disk work).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(hex::encode(&h.finalize().as_bytes()[..16]))
}

/// Resolves one input: an `s3://` URI as it is (its ETag identifies the content), or a local
/// file uploaded once to `staging/<blake3>.<format>`.
pub async fn resolve(
    s3: &S3,
    input: &str,
    wanted: Option<Modality>,
    staging: &S3Uri,
    base_dir: &Path,
) -> Result<Resolved, Refusal> {
    if input.starts_with("s3://") {
        let uri = S3Uri::parse(input).map_err(|e| (FailureKind::BadMediaUri, e.to_string()))?;
        let (modality, format) = classify(input, None, wanted)?;
        let info = s3
            .head(&uri)
            .await
            .map_err(|e| (FailureKind::MediaUnreadable, format!("{e:#}")))?
            .ok_or_else(|| {
                (
                    FailureKind::MediaNotFound,
                    format!("{input} does not exist"),
                )
            })?;
        return Ok(Resolved {
            uri,
            modality,
            format,
            content: format!("s3:{input}:{}:{}", info.etag, info.size),
            uploaded: false,
        });
    }
    let path = base_dir.join(input);
    let (head, hash) = {
        let p = path.clone();
        crate::util::cpu(move || -> std::io::Result<(Vec<u8>, String)> {
            use std::io::Read;
            let mut head = vec![0u8; 64];
            let n = std::fs::File::open(&p)?.read(&mut head)?;
            head.truncate(n);
            Ok((head, hash_file(&p)?))
        })
        .await
        .map_err(|e| (FailureKind::MediaUnreadable, e.to_string()))?
        .map_err(|e| {
            (
                FailureKind::MediaUnreadable,
                format!("cannot read {}: {e}", path.display()),
            )
        })?
    };
    let (modality, format) = classify(input, Some(&head), wanted)?;
    let uri = staging.join(&format!("{hash}.{format}"));
    let staged = s3
        .head(&uri)
        .await
        .map_err(|e| (FailureKind::StagingFailed, format!("{e:#}")))?;
    let uploaded = staged.is_none();
    if uploaded {
        s3.put_file(&uri, &path)
            .await
            .map_err(|e| (FailureKind::StagingFailed, format!("{e:#}")))?;
    }
    Ok(Resolved {
        uri,
        modality,
        format,
        content: format!("blake3:{hash}"),
        uploaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_from_extension_magic_and_the_step() {
        assert_eq!(from_extension("a/b.MP4"), Some((Modality::Video, "mp4")));
        assert_eq!(from_extension("x.wav"), Some((Modality::Audio, "wav")));
        assert_eq!(from_extension("x.txt"), Some((Modality::Text, "txt")));
        assert_eq!(from_extension("x.docx"), None);
        assert_eq!(
            from_magic(b"RIFF\0\0\0\0WAVEfmt "),
            Some((Modality::Audio, "wav"))
        );
        assert_eq!(
            from_magic(b"\0\0\0\x20ftypisom\0\0"),
            Some((Modality::Video, "mp4"))
        );
        assert_eq!(
            classify("clip", Some(b"ID3\x04"), None).unwrap(),
            (Modality::Audio, "mp3")
        );
        let e = classify("a.wav", None, Some(Modality::Video)).unwrap_err();
        assert_eq!(e.0, FailureKind::WrongModality);
        assert!(e.1.contains("a.wav"), "{}", e.1);
        assert_eq!(
            classify("notes.docx", None, None).unwrap_err().0,
            FailureKind::UnsupportedMedia
        );
    }
}
