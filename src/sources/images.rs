//! Image folders, local or S3 prefixes: include/exclude globs, magic-byte format detection, size
//! limits. A local folder is walked recursively, following symlinks only while they stay inside
//! it; an S3 folder is listed page by page, and each batch's objects are fetched concurrently.

use super::{remote_for, BatchIter, InputFile, ReadFailure, Remote, SourceBatch, SourceFiles};
use crate::clients::store::{explain, Stores};
use crate::resolve::storage::DEFAULT_S3_CONCURRENCY;
use crate::resolve::ImageSettings;
use crate::util::{FailureKind, Location, S3Uri};
use anyhow::Result;
use arrow::array::{ArrayRef, BinaryBuilder, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use object_store::ObjectStore;
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

    /// The filters of an image source's settings.
    fn of(settings: &ImageSettings) -> Result<Self> {
        Self::new(
            settings.include.iter().map(String::as_str),
            settings.exclude.iter().map(String::as_str),
        )
    }

    /// Whether the object at `rel` (its key relative to the folder) is read: as a walk keeps the
    /// file at that path (without `recursive`, only the folder's own level).
    fn keeps_object(&self, rel: &str, recursive: bool) -> bool {
        !rel.is_empty()
            && !rel.ends_with('/')
            && (recursive || !rel.contains('/'))
            && !self.skips_file(rel)
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
    Object(Object),
    Failed(ReadFailure),
}

/// An object of an S3 image folder, as its listing says.
struct Object {
    uri: S3Uri,
    /// The key relative to the folder (the image's id, as a local relative path).
    rel: String,
    size: u64,
}

struct Image {
    rel: String,
    bytes: Bytes,
    mime: &'static str,
    width: u32,
    height: u32,
}

/// An image that cannot be read: `file` names it in full, `rel` is its id.
fn image_failure(file: &str, rel: &str, kind: FailureKind, message: String) -> ReadFailure {
    ReadFailure {
        hides_later_rows: false,
        file: Arc::from(file),
        row: None,
        id: Some(rel.to_string()),
        kind,
        message,
    }
}

/// Refuses an image over `max_image_bytes` (before it is read, where its size is known).
fn within_limit(size: u64, max: u64) -> Result<(), String> {
    if size > max {
        Err(format!(
            "{size} bytes is over the limit of {max} bytes (max_image_bytes)"
        ))
    } else {
        Ok(())
    }
}

fn read_image(path: &Path, rel: &str, max: u64, display: &str) -> Result<Image, ReadFailure> {
    let file = format!("{display}/{rel}");
    let fail = |kind: FailureKind, message: String| image_failure(&file, rel, kind, message);
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(FailureKind::Unreadable, format!("cannot stat: {e}")))?;
    within_limit(meta.len(), max).map_err(|m| fail(FailureKind::TooLarge, m))?;
    let bytes = std::fs::read(path)
        .map_err(|e| fail(FailureKind::Unreadable, format!("cannot read: {e}")))?;
    check_image(Bytes::from(bytes), rel, &file, max)
}

/// Checks the bytes of an image, wherever they were read from: its size, its format (by magic
/// bytes) and the dimensions in its header.
fn check_image(bytes: Bytes, rel: &str, file: &str, max: u64) -> Result<Image, ReadFailure> {
    let fail = |kind: FailureKind, message: String| image_failure(file, rel, kind, message);
    within_limit(bytes.len() as u64, max).map_err(|m| fail(FailureKind::TooLarge, m))?;
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

/// Walks one folder lazily, in a stable sorted order: the files `filters` keep, and failures for
/// what could not be walked. Filters apply before anything is read: a left-out entry is skipped
/// silently even when it is a broken or looping symlink. Folders are always walked (so that
/// `**/x.png` finds files deep down); one that cannot be read is a failure unless `exclude`
/// leaves out all it holds.
fn walk_folder(
    folder: PathBuf,
    filters: Filters,
    recursive: bool,
) -> impl Iterator<Item = Entry> + Send {
    let root = std::fs::canonicalize(&folder).unwrap_or_else(|_| folder.clone());
    let base = folder.clone();
    let link_filters = filters.clone();
    walkdir::WalkDir::new(&folder)
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
                let rel = relative(e.path(), &folder);
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
                if let Some(p) = err.path().filter(|p| *p != folder.as_path()) {
                    let rel = relative(p, &folder);
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

/// The objects under the S3 folder `folder` (a key ending in `/`, or the bucket root), in key
/// order, streamed page by page so that a folder of millions is never held at once: each
/// object's key relative to the folder, and its size.
fn list_folder(
    stores: &Stores,
    folder: &S3Uri,
) -> Result<BoxStream<'static, Result<(String, u64)>>> {
    let (store, path) = stores.locate(folder)?;
    let prefix = (!path.as_ref().is_empty()).then_some(path);
    let folder = folder.clone();
    Ok(store
        .list(prefix.as_ref())
        .map(move |meta| -> Result<(String, u64)> {
            let meta = meta.map_err(|e| explain(e, "list", &folder))?;
            let key = meta.location.to_string();
            let rel = key
                .strip_prefix(folder.key.as_str())
                .unwrap_or(key.as_str());
            Ok((rel.to_string(), meta.size))
        })
        .boxed())
}

/// Whether the S3 folder holds an object the filters keep (the listing stops at the first), so
/// that a wrong prefix fails the survey rather than reading nothing.
pub(super) async fn s3_folder_has_images(
    stores: &Stores,
    folder: &S3Uri,
    settings: &ImageSettings,
) -> Result<bool> {
    let filters = Filters::of(settings)?;
    let mut objects = list_folder(stores, folder)?;
    while let Some(object) = objects.next().await {
        let (rel, _) = object?;
        if filters.keeps_object(&rel, settings.recursive) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The objects of an S3 folder that the filters keep, listed as the batches ask for them. A
/// listing that fails ends the source (what it would have listed is unknown).
fn list_objects(
    folder: &S3Uri,
    remote: Option<&Remote>,
    filters: Filters,
    recursive: bool,
) -> Result<impl Iterator<Item = Result<Entry>> + Send + 'static> {
    let remote = remote_for(remote)?;
    let mut objects = list_folder(&remote.stores, folder)?;
    let runtime = remote.runtime.clone();
    let folder = folder.clone();
    Ok(std::iter::from_fn(move || loop {
        match runtime.block_on(objects.next())? {
            Ok((rel, size)) if filters.keeps_object(&rel, recursive) => {
                return Some(Ok(Entry::Object(Object {
                    uri: folder.join(&rel),
                    rel,
                    size,
                })));
            }
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
    }))
}

/// Downloads a batch's objects, `DEFAULT_S3_CONCURRENCY` at a time, and checks them. Objects
/// over `max` are refused unread; a failed GET fails that image only. Memory: one batch.
fn fetch_images(
    objects: Vec<Object>,
    remote: &Remote,
    max: u64,
) -> Vec<Result<Image, ReadFailure>> {
    let stores = &remote.stores;
    let fetched: Vec<_> = remote.runtime.block_on(
        futures::stream::iter(objects)
            .map(|o| async move {
                let got = match within_limit(o.size, max) {
                    Err(m) => Err((FailureKind::TooLarge, m)),
                    Ok(()) => match stores.get(&o.uri).await {
                        Ok(Some(bytes)) => Ok(bytes),
                        Ok(None) => Err((
                            FailureKind::Unreadable,
                            "the object is gone (deleted after the folder was listed)".to_string(),
                        )),
                        Err(e) => Err((FailureKind::Unreadable, format!("{e:#}"))),
                    },
                };
                (o, got)
            })
            .buffered(DEFAULT_S3_CONCURRENCY)
            .collect(),
    );
    fetched
        .into_par_iter()
        .map(|(o, got)| {
            let file = o.uri.to_string();
            match got {
                Ok(bytes) => check_image(bytes, &o.rel, &file, max),
                Err((kind, message)) => Err(image_failure(&file, &o.rel, kind, message)),
            }
        })
        .collect()
}

pub fn open(
    settings: &ImageSettings,
    batch_rows: usize,
    survey: &SourceFiles,
    remote: Option<Remote>,
) -> Result<BatchIter> {
    let filters = Filters::of(settings)?;
    let recursive = settings.recursive;
    let max = settings.max_image_bytes;
    let folders: Vec<InputFile> = survey.files.clone();
    let schema = schema();

    // A lazy walk over every folder: yields files (or failures) in a stable, sorted order.
    let listing = remote.clone();
    let mut walk = folders
        .into_iter()
        .flat_map(move |folder| {
            let display = folder.display.clone();
            let entries: Box<dyn Iterator<Item = Result<Entry>> + Send> = match folder.location {
                Location::Local(path) => Box::new(
                    walk_folder(path, filters.clone(), recursive).map(Ok::<_, anyhow::Error>),
                ),
                Location::S3(uri) => {
                    match list_objects(&uri, listing.as_ref(), filters.clone(), recursive) {
                        Ok(objects) => Box::new(objects),
                        Err(e) => Box::new(std::iter::once(Err::<Entry, _>(e))),
                    }
                }
            };
            entries.map(move |entry| (display.clone(), entry))
        })
        .peekable();
    let iter = std::iter::from_fn(move || {
        // Take the next chunk of files (or objects), bounded by row count and bytes.
        let mut files = Vec::new();
        let mut objects = Vec::new();
        let mut failures = Vec::new();
        let mut bytes = 0u64;
        let mut display: Option<Arc<str>> = None;
        while files.len() + objects.len() < batch_rows && bytes < MAX_BATCH_BYTES {
            // Keep a batch within one folder so `file` names it.
            if let (Some(d), Some((next_d, _))) = (&display, walk.peek()) {
                if d != next_d {
                    break;
                }
            }
            let Some((d, entry)) = walk.next() else { break };
            display.get_or_insert(d);
            match entry {
                Err(e) => return Some(Err(e)),
                Ok(Entry::Failed(f)) => failures.push(f),
                Ok(Entry::File { path, rel }) => {
                    bytes += std::fs::metadata(&path)
                        .map(|m| m.len().min(max))
                        .unwrap_or(0);
                    files.push((path, rel));
                }
                Ok(Entry::Object(o)) => {
                    // Objects over the limit are not downloaded.
                    if o.size <= max {
                        bytes += o.size;
                    }
                    objects.push(o);
                }
            }
        }
        let display = display?;
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
        let filters = Filters::new(include.iter().copied(), exclude.iter().copied()).unwrap();
        let (mut files, mut failed) = (Vec::new(), Vec::new());
        for e in walk_folder(dir.to_path_buf(), filters, true) {
            match e {
                Entry::File { rel, .. } => files.push(rel),
                Entry::Failed(f) => failed.push(relative(Path::new(&*f.file), dir)),
                Entry::Object(o) => panic!("a local walk listed the object {}", o.uri),
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
    fn objects_are_kept_as_a_walk_keeps_files() {
        let f = Filters::new(["**/*.png"], ["cache/**"]).unwrap();
        assert!(f.keeps_object("a.png", true));
        assert!(f.keeps_object("sub/b.png", true));
        // Without `recursive`, only the folder's own level.
        assert!(!f.keeps_object("sub/b.png", false));
        assert!(!f.keeps_object("cache/c.png", true));
        assert!(!f.keeps_object("notes.txt", true));
        // Folder markers are no images.
        assert!(!f.keeps_object("sub/", true));
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
