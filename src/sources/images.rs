//! Image folders, local or S3 prefixes: include/exclude globs, magic-byte format detection, size
//! limits. A local folder is walked recursively, following symlinks only while they stay inside
//! it; an S3 folder is listed page by page, and each batch's objects are fetched concurrently
//! (the folder machinery is [`super::folder`]'s, shared with documents).

use super::folder::{self, Chunk, Chunks, Filters, Object};
use super::{remote_for, BatchIter, ReadFailure, Remote, SourceBatch, SourceFiles};
use crate::resolve::ImageSettings;
use crate::util::FailureKind;
use anyhow::Result;
use arrow::array::{ArrayRef, BinaryBuilder, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// Columns of an image source.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("bytes", DataType::Binary, false),
        Field::new("mime", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
    ]))
}

/// Image formats embedpipe accepts, by magic bytes.
pub fn detect_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

struct Image {
    rel: String,
    bytes: Bytes,
    mime: &'static str,
    width: u32,
    height: u32,
}

/// The setting that limits an image's size, named in messages.
const LIMIT_KEY: &str = "max_image_bytes";

/// The filters of an image source's settings.
pub(super) fn filters(settings: &ImageSettings) -> Result<Filters> {
    Filters::new(
        settings.include.iter().map(String::as_str),
        settings.exclude.iter().map(String::as_str),
    )
}

fn read_image(path: &Path, rel: &str, max: u64, display: &str) -> Result<Image, ReadFailure> {
    let file = format!("{display}/{rel}");
    let bytes = folder::read_local(path, max, LIMIT_KEY)
        .map_err(|(kind, message)| folder::file_failure(&file, rel, kind, message))?;
    check_image(bytes, rel, &file, max)
}

/// Checks the bytes of an image, wherever they were read from: its size, its format (by magic
/// bytes) and the dimensions in its header.
fn check_image(bytes: Bytes, rel: &str, file: &str, max: u64) -> Result<Image, ReadFailure> {
    let fail = |kind: FailureKind, message: String| folder::file_failure(file, rel, kind, message);
    folder::within_limit(bytes.len() as u64, max, LIMIT_KEY)
        .map_err(|m| fail(FailureKind::TooLarge, m))?;
    let Some(mime) = detect_mime(&bytes) else {
        let ext = Path::new(rel)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let msg = if ["png", "jpg", "jpeg", "gif", "webp"].contains(&ext.as_str()) {
            format!("has a .{ext} extension but its content is not a PNG, JPEG, GIF or WebP image")
        } else {
            "not an image: content is not PNG, JPEG, GIF or WebP".to_string()
        };
        return Err(fail(FailureKind::NotAnImage, msg));
    };
    let size = imagesize::blob_size(&bytes).map_err(|e| {
        fail(
            FailureKind::CorruptImage,
            format!("{mime} header cannot be read: {e}"),
        )
    })?;
    Ok(Image {
        rel: rel.to_string(),
        bytes,
        mime,
        width: size.width as u32,
        height: size.height as u32,
    })
}

/// Downloads a batch's objects and checks them. Objects over `max` are refused unread; a
/// failed GET fails that image only. Memory: one batch.
fn fetch_images(
    objects: Vec<Object>,
    remote: &Remote,
    max: u64,
) -> Vec<Result<Image, ReadFailure>> {
    folder::fetch_objects(objects, remote, max, LIMIT_KEY)
        .into_par_iter()
        .map(|(o, got)| {
            let file = o.uri.to_string();
            match got {
                Ok(bytes) => check_image(bytes, &o.rel, &file, max),
                Err((kind, message)) => Err(folder::file_failure(&file, &o.rel, kind, message)),
            }
        })
        .collect()
}

pub fn open(
    settings: &ImageSettings,
    batch_rows: usize,
    survey: &SourceFiles,
    remote: Option<Remote>,
    shard: crate::util::Shard,
) -> Result<BatchIter> {
    let max = settings.max_image_bytes;
    // A lazy walk over every folder: files (or failures) in a stable, sorted order, in chunks
    // bounded by row count and bytes.
    let mut chunks = Chunks::new(
        survey.files.clone(),
        filters(settings)?,
        settings.recursive,
        remote.clone(),
        batch_rows,
        max,
        shard,
    );
    let schema = schema();
    let iter = std::iter::from_fn(move || {
        let Chunk {
            display,
            files,
            objects,
            mut failures,
        } = match chunks.next()? {
            Ok(chunk) => chunk,
            Err(e) => return Some(Err(e)),
        };
        let mut results: Vec<Result<Image, ReadFailure>> = files
            .par_iter()
            .map(|(p, rel)| read_image(p, rel, max, &display))
            .collect();
        if !objects.is_empty() {
            match remote_for(remote.as_ref()) {
                Ok(remote) => results.extend(fetch_images(objects, remote, max)),
                Err(e) => return Some(Err(e)),
            }
        }
        let mut images = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(img) => images.push(img),
                Err(f) => failures.push(f),
            }
        }
        Some(build(&schema, display, images, failures))
    });
    Ok(Box::new(iter))
}

fn build(
    schema: &SchemaRef,
    display: Arc<str>,
    images: Vec<Image>,
    failures: Vec<ReadFailure>,
) -> Result<SourceBatch> {
    let total: usize = images.iter().map(|i| i.bytes.len()).sum();
    let mut bytes = BinaryBuilder::with_capacity(images.len(), total);
    for i in &images {
        bytes.append_value(&i.bytes);
    }
    let paths: StringArray = images.iter().map(|i| Some(i.rel.as_str())).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(paths.clone()),
        Arc::new(bytes.finish()),
        Arc::new(images.iter().map(|i| Some(i.mime)).collect::<StringArray>()),
        Arc::new(
            images
                .iter()
                .map(|i| i.bytes.len() as u64)
                .collect::<UInt64Array>(),
        ),
        Arc::new(images.iter().map(|i| i.width).collect::<UInt32Array>()),
        Arc::new(images.iter().map(|i| i.height).collect::<UInt32Array>()),
    ];
    Ok(SourceBatch {
        file: display,
        batch: RecordBatch::try_new(schema.clone(), columns)?,
        ids: Arc::new(paths),
        // Image rows are located by their path (the id), not a row number.
        rows: vec![0; images.len()],
        failures,
        hidden_elsewhere: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(detect_mime(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(detect_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(detect_mime(b"GIF89a...."), Some("image/gif"));
        assert_eq!(detect_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(detect_mime(b"hello, I am text"), None);
    }
}
