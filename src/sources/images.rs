//! Image folders: recursive walk, include/exclude globs, magic-byte format detection, size limits.
//! Symlinks are followed only while they stay inside the folder.

use super::{BatchIter, InputFile, ReadFailure, SourceBatch, SourcePlan};
use crate::config::{Pipeline, DEFAULT_MAX_IMAGE_BYTES};
use anyhow::Result;
use arrow::array::{ArrayRef, BinaryBuilder, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most bytes of image data held in one batch.
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

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

fn globset(pats: Option<&Vec<toml::Spanned<String>>>) -> Result<Option<GlobSet>> {
    let Some(pats) = pats.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let mut b = GlobSetBuilder::new();
    for p in pats {
        b.add(Glob::new(p.get_ref())?);
    }
    Ok(Some(b.build()?))
}

enum Entry {
    File { path: PathBuf, rel: String },
    Failed(ReadFailure),
}

struct Image {
    rel: String,
    bytes: Vec<u8>,
    mime: &'static str,
    width: u32,
    height: u32,
}

fn read_image(path: &Path, rel: &str, max: u64, display: &Arc<str>) -> Result<Image, ReadFailure> {
    let fail = |kind: &'static str, message: String| ReadFailure {
        file: Arc::from(format!("{display}/{rel}").as_str()),
        row: None,
        id: Some(rel.to_string()),
        kind,
        message,
    };
    let meta =
        std::fs::metadata(path).map_err(|e| fail("unreadable", format!("cannot stat: {e}")))?;
    if meta.len() > max {
        return Err(fail(
            "too_large",
            format!(
                "{} bytes is over the limit of {max} bytes (max_image_bytes)",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| fail("unreadable", format!("cannot read: {e}")))?;
    let Some(mime) = detect_mime(&bytes) else {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let msg = if ["png", "jpg", "jpeg", "gif", "webp"].contains(&ext.as_str()) {
            format!("has a .{ext} extension but its content is not a PNG, JPEG, GIF or WebP image")
        } else {
            "not an image: content is not PNG, JPEG, GIF or WebP".to_string()
        };
        return Err(fail("not_an_image", msg));
    };
    let size = imagesize::blob_size(&bytes).map_err(|e| {
        fail(
            "corrupt_image",
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

pub fn open(pipeline: &Pipeline, plan: &SourcePlan) -> Result<BatchIter> {
    let src = pipeline.source();
    let include = globset(src.include.as_ref())?;
    let exclude = globset(src.exclude.as_ref())?;
    let recursive = src.recursive.as_ref().is_none_or(|r| *r.get_ref());
    let max = src
        .max_image_bytes
        .as_ref()
        .map_or(DEFAULT_MAX_IMAGE_BYTES, |m| *m.get_ref());
    let batch_rows = pipeline.batch_rows();
    let folders: Vec<InputFile> = plan.files.clone();
    let schema = schema();

    // A lazy walk over every folder: yields files (or failures) in a stable, sorted order.
    let walk = folders.into_iter().flat_map(move |folder| {
        let root = std::fs::canonicalize(&folder.path).unwrap_or(folder.path.clone());
        let display = folder.display.clone();
        let include = include.clone();
        let exclude = exclude.clone();
        let root_for_filter = root.clone();
        walkdir::WalkDir::new(&folder.path)
            .follow_links(true)
            .max_depth(if recursive { usize::MAX } else { 1 })
            .sort_by_file_name()
            .into_iter()
            .filter_entry(move |e| {
                if !e.path_is_symlink() {
                    return true;
                }
                match std::fs::canonicalize(e.path()) {
                    Ok(target) if target.starts_with(&root_for_filter) => true,
                    _ => {
                        tracing::warn!(path = %e.path().display(), "symlink leaves the image folder; not followed");
                        false
                    }
                }
            })
            .filter_map(move |entry| match entry {
                Ok(e) if e.file_type().is_file() => {
                    let rel = e.path().strip_prefix(&folder.path).unwrap_or(e.path());
                    let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                    if include.as_ref().is_some_and(|g| !g.is_match(&rel)) || exclude.as_ref().is_some_and(|g| g.is_match(&rel)) {
                        return None;
                    }
                    Some((display.clone(), Entry::File { path: e.path().to_path_buf(), rel }))
                }
                Ok(_) => None,
                Err(err) => {
                    let path = err.path().map(|p| p.display().to_string()).unwrap_or_default();
                    Some((
                        display.clone(),
                        Entry::Failed(ReadFailure {
                            file: Arc::from(path.as_str()),
                            row: None,
                            id: None,
                            kind: "unreadable",
                            message: format!("cannot walk: {err}"),
                        }),
                    ))
                }
            })
    });
    let mut walk = walk.peekable();
    let iter = std::iter::from_fn(move || {
        // Take the next chunk of paths, bounded by row count and bytes on disk.
        let mut chunk = Vec::new();
        let mut failures = Vec::new();
        let mut bytes = 0u64;
        let mut display: Option<Arc<str>> = None;
        while chunk.len() < batch_rows && bytes < MAX_BATCH_BYTES {
            // Keep a batch within one folder so `file` names it.
            if let (Some(d), Some((next_d, _))) = (&display, walk.peek()) {
                if d != next_d {
                    break;
                }
            }
            let Some((d, entry)) = walk.next() else { break };
            display.get_or_insert(d);
            match entry {
                Entry::Failed(f) => failures.push(f),
                Entry::File { path, rel } => {
                    bytes += std::fs::metadata(&path)
                        .map(|m| m.len().min(max))
                        .unwrap_or(0);
                    chunk.push((path, rel));
                }
            }
        }
        let display = display?;
        let results: Vec<Result<Image, ReadFailure>> = chunk
            .par_iter()
            .map(|(p, rel)| read_image(p, rel, max, &display))
            .collect();
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
