//! Image folders: recursive walk, include/exclude globs, magic-byte format detection, size limits.
//! Symlinks are followed only while they stay inside the folder.

use super::{BatchIter, InputFile, ReadFailure, SourceBatch, SourceFiles};
use crate::resolve::ImageSettings;
use crate::util::FailureKind;
use anyhow::Result;
use arrow::array::{ArrayRef, BinaryBuilder, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
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

/// `include` / `exclude`, matched against paths relative to the folder, `/`-separated. As in
/// source globs, `*` and `?` stay within one folder level and `**` crosses levels.
#[derive(Clone)]
struct Filters {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A name no real entry is expected to have, standing for "anything" inside a folder.
const PROBE: &str = "\u{1}embedpipe-probe";

fn globset<'a>(pats: impl IntoIterator<Item = &'a str>) -> Result<Option<GlobSet>> {
    let mut b = GlobSetBuilder::new();
    let mut any = false;
    for p in pats {
        b.add(GlobBuilder::new(p).literal_separator(true).build()?);
        any = true;
    }
    Ok(if any { Some(b.build()?) } else { None })
}

impl Filters {
    fn new<'a>(
        include: impl IntoIterator<Item = &'a str>,
        exclude: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        Ok(Filters {
            include: globset(include)?,
            exclude: globset(exclude)?,
        })
    }

    /// Whether the file (or symlink, followed or not) at `rel` is left out.
    fn skips_file(&self, rel: &str) -> bool {
        self.include.as_ref().is_some_and(|g| !g.is_match(rel))
            || self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }

    /// Whether the folder at `rel` is left out with all it holds: it is excluded itself, or
    /// everything one and two levels inside it is (`cache/**`). `include` names files, and any
    /// folder may hold some, so it never leaves a folder out.
    fn skips_folder(&self, rel: &str) -> bool {
        self.exclude.as_ref().is_some_and(|g| {
            g.is_match(rel)
                || (g.is_match(format!("{rel}/{PROBE}"))
                    && g.is_match(format!("{rel}/{PROBE}/{PROBE}")))
        })
    }

    /// Whether an entry the walk could not take (broken or looping symlink, unreadable folder)
    /// is left out, so that no failure is reported for it.
    fn skips_failed(&self, path: &Path, rel: &str, looped: bool) -> bool {
        // A looping symlink stands for a folder already walked under its own path.
        let real_folder =
            !looped && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir());
        if real_folder {
            self.skips_folder(rel)
        } else {
            self.skips_file(rel)
        }
    }
}

/// `path` relative to `root`, `/`-separated (what filters match and image ids are).
fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
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
    let fail = |kind: FailureKind, message: String| ReadFailure {
        hides_later_rows: false,
        file: Arc::from(format!("{display}/{rel}").as_str()),
        row: None,
        id: Some(rel.to_string()),
        kind,
        message,
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(FailureKind::Unreadable, format!("cannot stat: {e}")))?;
    if meta.len() > max {
        return Err(fail(
            FailureKind::TooLarge,
            format!(
                "{} bytes is over the limit of {max} bytes (max_image_bytes)",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| fail(FailureKind::Unreadable, format!("cannot read: {e}")))?;
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

/// Walks one folder lazily, in a stable sorted order: the files `filters` keep, and failures for
/// what could not be walked. Filters apply before anything is read: a left-out entry is skipped
/// silently even when it is a broken or looping symlink. Folders are always walked (so that
/// `**/x.png` finds files deep down); one that cannot be read is a failure unless `exclude`
/// leaves out all it holds.
fn walk_folder(
    folder: InputFile,
    filters: Filters,
    recursive: bool,
) -> impl Iterator<Item = Entry> + Send {
    let root = std::fs::canonicalize(&folder.path).unwrap_or(folder.path.clone());
    let base = folder.path.clone();
    let link_filters = filters.clone();
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
                Ok(target) if target.starts_with(&root) => true,
                _ => {
                    let rel = relative(e.path(), &base);
                    let skipped = if e.file_type().is_dir() {
                        link_filters.skips_folder(&rel)
                    } else {
                        link_filters.skips_file(&rel)
                    };
                    if !skipped {
                        tracing::warn!(path = %e.path().display(), "symlink leaves the image folder; not followed");
                    }
                    false
                }
            }
        })
        .filter_map(move |entry| match entry {
            Ok(e) if e.file_type().is_file() => {
                let rel = relative(e.path(), &folder.path);
                if filters.skips_file(&rel) {
                    return None;
                }
                Some(Entry::File {
                    path: e.path().to_path_buf(),
                    rel,
                })
            }
            Ok(_) => None,
            Err(err) => {
                if let Some(p) = err.path().filter(|p| *p != folder.path.as_path()) {
                    let rel = relative(p, &folder.path);
                    if filters.skips_failed(p, &rel, err.loop_ancestor().is_some()) {
                        return None;
                    }
                }
                let path = err.path().map(|p| p.display().to_string()).unwrap_or_default();
                Some(Entry::Failed(ReadFailure {
                    hides_later_rows: false,
                    file: Arc::from(path.as_str()),
                    row: None,
                    id: None,
                    kind: FailureKind::Unreadable,
                    message: format!("cannot walk: {err}"),
                }))
            }
        })
}

pub fn open(
    settings: &ImageSettings,
    batch_rows: usize,
    survey: &SourceFiles,
) -> Result<BatchIter> {
    let filters = Filters::new(
        settings.include.iter().map(String::as_str),
        settings.exclude.iter().map(String::as_str),
    )?;
    let recursive = settings.recursive;
    let max = settings.max_image_bytes;
    let folders: Vec<InputFile> = survey.files.clone();
    let schema = schema();

    // A lazy walk over every folder: yields files (or failures) in a stable, sorted order.
    let mut walk = folders
        .into_iter()
        .flat_map(move |folder| {
            let display = folder.display.clone();
            walk_folder(folder, filters.clone(), recursive)
                .map(move |entry| (display.clone(), entry))
        })
        .peekable();
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

    /// Walks `dir` with the given filters: the files kept, and the paths that failed (relative).
    #[cfg(unix)]
    fn walked(dir: &Path, include: &[&str], exclude: &[&str]) -> (Vec<String>, Vec<String>) {
        let folder = InputFile {
            path: dir.to_path_buf(),
            display: Arc::from(dir.to_string_lossy().as_ref()),
            id_prefix: String::new(),
        };
        let filters = Filters::new(include.iter().copied(), exclude.iter().copied()).unwrap();
        let (mut files, mut failed) = (Vec::new(), Vec::new());
        for e in walk_folder(folder, filters, true) {
            match e {
                Entry::File { rel, .. } => files.push(rel),
                Entry::Failed(f) => failed.push(relative(Path::new(&*f.file), dir)),
            }
        }
        (files, failed)
    }

    #[cfg(unix)]
    #[test]
    fn filters_apply_before_walk_failures_and_star_stays_in_one_folder() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("imgs");
        std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
        for f in ["a.png", "notes.txt", "sub/b.png", "sub/deep/c.png"] {
            std::fs::write(dir.join(f), b"not read by the walk").unwrap();
        }
        // A broken symlink and a symlink looping back to the folder.
        symlink(dir.join("missing.png"), dir.join("gone.png")).unwrap();
        symlink(&dir, dir.join("sub/loop")).unwrap();
        let all = ["a.png", "notes.txt", "sub/b.png", "sub/deep/c.png"];

        // Without filters both are failures.
        let (files, failed) = walked(&dir, &[], &[]);
        assert_eq!(files, all);
        assert_eq!(failed, ["gone.png", "sub/loop"]);

        // Excluded: skipped silently.
        let (files, failed) = walked(&dir, &[], &["gone.png", "**/loop"]);
        assert_eq!(files, all);
        assert!(failed.is_empty(), "{failed:?}");

        // Not included: skipped silently; `**` crosses folders, which are still walked.
        let (files, failed) = walked(&dir, &["sub/**/*.png"], &[]);
        assert_eq!(files, ["sub/b.png", "sub/deep/c.png"]);
        assert!(failed.is_empty(), "{failed:?}");

        // `*` stays within one folder level, in `include` and in `exclude`.
        let (files, failed) = walked(&dir, &["*.png"], &[]);
        assert_eq!(files, ["a.png"]);
        assert_eq!(failed, ["gone.png"]);
        let (files, failed) = walked(&dir, &[], &["sub/*", "*.txt"]);
        assert_eq!(files, ["a.png", "sub/deep/c.png"]);
        assert_eq!(failed, ["gone.png"]);
    }

    #[test]
    fn a_folder_is_left_out_only_when_all_it_holds_is_excluded() {
        let none: [&str; 0] = [];
        let f = Filters::new(none, ["cache/**", "tmp", "only/*"]).unwrap();
        assert!(f.skips_folder("cache"));
        assert!(f.skips_folder("tmp"));
        // `only/*` leaves out files directly in `only`, not those in its sub-folders.
        assert!(!f.skips_folder("only"));
        assert!(f.skips_file("only/x.png"));
        assert!(!f.skips_file("only/sub/x.png"));
        // `include` names files: it never leaves a folder out.
        let f = Filters::new(["**/*.png"], none).unwrap();
        assert!(!f.skips_folder("photos"));
        assert!(f.skips_file("photos"));
        assert!(!f.skips_file("photos/x.png"));
    }
}
