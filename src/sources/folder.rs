//! Folders of files, local or S3 prefixes, shared by the image and document sources: include /
//! exclude globs, the walk of a local folder (following symlinks only while they stay inside it),
//! the page-by-page listing of an S3 prefix, and the batches of entries both sources read, bounded
//! by rows and bytes. What a file's bytes become is each source's own business.

use super::{remote_for, InputFile, ReadFailure, Remote};
use crate::clients::store::{explain, Stores};
use crate::resolve::storage::DEFAULT_S3_CONCURRENCY;
use crate::util::{FailureKind, Location, S3Uri};
use anyhow::Result;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use object_store::ObjectStore;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most bytes of file data held in one batch.
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// `include` / `exclude`, matched against paths relative to the folder, `/`-separated. As in
/// source globs, `*` and `?` stay within one folder level and `**` crosses levels.
#[derive(Clone)]
pub(super) struct Filters {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A name no real entry is expected to have, standing for "anything" inside a folder.
const PROBE: &str = "\u{1}embedpipe-probe";

fn globset<'a>(
    pats: impl IntoIterator<Item = &'a str>,
    case_insensitive: bool,
) -> Result<Option<GlobSet>> {
    let mut b = GlobSetBuilder::new();
    let mut any = false;
    for p in pats {
        b.add(
            GlobBuilder::new(p)
                .literal_separator(true)
                .case_insensitive(case_insensitive)
                .build()?,
        );
        any = true;
    }
    Ok(if any { Some(b.build()?) } else { None })
}

impl Filters {
    pub(super) fn new<'a>(
        include: impl IntoIterator<Item = &'a str>,
        exclude: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        Ok(Filters {
            include: globset(include, false)?,
            exclude: globset(exclude, false)?,
        })
    }

    /// As [`Filters::new`], with `include` matched whatever the case of the names (defaults
    /// that name extensions: `scan.PDF` is a PDF too).
    pub(super) fn with_include_any_case<'a>(
        include: impl IntoIterator<Item = &'a str>,
        exclude: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        Ok(Filters {
            include: globset(include, true)?,
            exclude: globset(exclude, false)?,
        })
    }

    /// Whether the object at `rel` (its key relative to the folder) is read: as a walk keeps the
    /// file at that path (without `recursive`, only the folder's own level).
    pub(super) fn keeps_object(&self, rel: &str, recursive: bool) -> bool {
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

/// `path` relative to `root`, `/`-separated (what filters match and folder row ids are).
fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// One thing a folder's walk or listing yields.
pub(super) enum Entry {
    /// A local file; `rel` is its path relative to the folder (its row id).
    File {
        path: PathBuf,
        rel: String,
    },
    Object(Object),
    /// What the walk could not take (a broken symlink, an unreadable folder).
    Failed(ReadFailure),
}

/// An object of an S3 folder, as its listing says.
pub(super) struct Object {
    pub(super) uri: S3Uri,
    /// The key relative to the folder (the row id, as a local relative path).
    pub(super) rel: String,
    pub(super) size: u64,
}

/// A file that cannot be read: `file` names it in full, `rel` is its id.
pub(super) fn file_failure(
    file: &str,
    rel: &str,
    kind: FailureKind,
    message: String,
) -> ReadFailure {
    ReadFailure {
        hides_later_rows: false,
        file: Arc::from(file),
        row: None,
        id: Some(rel.to_string()),
        kind,
        message,
    }
}

/// Refuses a file over `max` bytes (before it is read, where its size is known); `key` is the
/// setting that sets the limit, named in the message.
pub(super) fn within_limit(size: u64, max: u64, key: &str) -> Result<(), String> {
    if size > max {
        Err(format!(
            "{size} bytes is over the limit of {max} bytes ({key})"
        ))
    } else {
        Ok(())
    }
}

/// Reads a local file of at most `max` bytes (stat'ed first, so a larger one is never read).
pub(super) fn read_local(path: &Path, max: u64, key: &str) -> Result<Bytes, (FailureKind, String)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| (FailureKind::Unreadable, format!("cannot stat: {e}")))?;
    within_limit(meta.len(), max, key).map_err(|m| (FailureKind::TooLarge, m))?;
    let bytes =
        std::fs::read(path).map_err(|e| (FailureKind::Unreadable, format!("cannot read: {e}")))?;
    Ok(Bytes::from(bytes))
}

/// Walks one folder lazily, in a stable sorted order: the files `filters` keep, and failures for
/// what could not be walked. Filters apply before anything is read: a left-out entry is skipped
/// silently even when it is a broken or looping symlink. Folders are always walked (so that
/// `**/x.png` finds files deep down); one that cannot be read is a failure unless `exclude`
/// leaves out all it holds. `warn_links` logs the symlinks that leave the folder (once per
/// source: a walk that only counts stays quiet).
pub(super) fn walk_folder(
    folder: PathBuf,
    filters: Filters,
    recursive: bool,
    warn_links: bool,
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
                    if !skipped && warn_links {
                        tracing::warn!(path = %e.path().display(), "symlink leaves the folder; not followed");
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
pub(super) async fn s3_folder_has_files(
    stores: &Stores,
    folder: &S3Uri,
    filters: &Filters,
    recursive: bool,
) -> Result<bool> {
    let mut objects = list_folder(stores, folder)?;
    while let Some(object) = objects.next().await {
        let (rel, _) = object?;
        if filters.keeps_object(&rel, recursive) {
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

/// What the GET of one object gave: its bytes, or why there are none.
pub(super) type Fetched = (Object, Result<Bytes, (FailureKind, String)>);

/// Downloads a batch's objects, `DEFAULT_S3_CONCURRENCY` at a time, in their order. Objects
/// over `max` (the setting `key`) are refused unread; a failed GET fails that object only.
/// Memory: one batch.
pub(super) fn fetch_objects(
    objects: Vec<Object>,
    remote: &Remote,
    max: u64,
    key: &str,
) -> Vec<Fetched> {
    let stores = &remote.stores;
    remote.runtime.block_on(
        futures::stream::iter(objects)
            .map(|o| async move {
                let got = match within_limit(o.size, max, key) {
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
    )
}

/// The entries of one batch: all from one folder (so `display` names it), at most `batch_rows`
/// files and about [`MAX_BATCH_BYTES`] of data.
pub(super) struct Chunk {
    /// The folder, as shown to users.
    pub(super) display: Arc<str>,
    /// Local files to read: path, and path relative to the folder.
    pub(super) files: Vec<(PathBuf, String)>,
    /// S3 objects to fetch.
    pub(super) objects: Vec<Object>,
    /// What the walk could not take.
    pub(super) failures: Vec<ReadFailure>,
}

type Walk = Box<dyn Iterator<Item = (Arc<str>, Result<Entry>)> + Send>;

/// A lazy walk over every folder of a source, cut into [`Chunk`]s in a stable, sorted order.
/// A listing that fails is an error of the source (it ends the iteration's usefulness: what it
/// would have listed is unknown).
/// Whether `shard` reads this entry: by a hash of its relative path (its row id); a walk error
/// that names no file is the first shard's to report.
fn owned(shard: crate::util::Shard, entry: &Result<Entry>) -> bool {
    match entry {
        _ if shard.is_whole() => true,
        Ok(Entry::File { rel, .. }) | Ok(Entry::Object(Object { rel, .. })) => shard.owns(rel),
        Ok(Entry::Failed(f)) => match &f.id {
            Some(id) => shard.owns(id),
            None => shard.index == 0,
        },
        Err(_) => true,
    }
}

pub(super) struct Chunks {
    walk: Peekable<Walk>,
    batch_rows: usize,
    /// The source's per-file limit: a file over it counts for no bytes (it is never read).
    max: u64,
}

impl Chunks {
    pub(super) fn new(
        folders: Vec<InputFile>,
        filters: Filters,
        recursive: bool,
        remote: Option<Remote>,
        batch_rows: usize,
        max: u64,
        shard: crate::util::Shard,
    ) -> Self {
        let walk: Walk = Box::new(folders.into_iter().flat_map(move |folder| {
            let display = folder.display.clone();
            let entries: Box<dyn Iterator<Item = Result<Entry>> + Send> = match folder.location {
                Location::Local(path) => Box::new(
                    walk_folder(path, filters.clone(), recursive, true).map(Ok::<_, anyhow::Error>),
                ),
                Location::S3(uri) => {
                    match list_objects(&uri, remote.as_ref(), filters.clone(), recursive) {
                        Ok(objects) => Box::new(objects),
                        Err(e) => Box::new(std::iter::once(Err::<Entry, _>(e))),
                    }
                }
            };
            entries
                .filter(move |entry| owned(shard, entry))
                .map(move |entry| (display.clone(), entry))
        }));
        Self {
            walk: walk.peekable(),
            batch_rows,
            max,
        }
    }
}

impl Iterator for Chunks {
    type Item = Result<Chunk>;

    /// The next chunk of files (or objects), bounded by row count and bytes.
    fn next(&mut self) -> Option<Result<Chunk>> {
        let mut files = Vec::new();
        let mut objects = Vec::new();
        let mut failures = Vec::new();
        let mut bytes = 0u64;
        let mut display: Option<Arc<str>> = None;
        while files.len() + objects.len() < self.batch_rows && bytes < MAX_BATCH_BYTES {
            // Keep a batch within one folder so `file` names it.
            if let (Some(d), Some((next_d, _))) = (&display, self.walk.peek()) {
                if d != next_d {
                    break;
                }
            }
            let Some((d, entry)) = self.walk.next() else {
                break;
            };
            display.get_or_insert(d);
            match entry {
                Err(e) => return Some(Err(e)),
                Ok(Entry::Failed(f)) => failures.push(f),
                Ok(Entry::File { path, rel }) => {
                    bytes += std::fs::metadata(&path)
                        .map(|m| m.len().min(self.max))
                        .unwrap_or(0);
                    files.push((path, rel));
                }
                Ok(Entry::Object(o)) => {
                    // Objects over the limit are not downloaded.
                    if o.size <= self.max {
                        bytes += o.size;
                    }
                    objects.push(o);
                }
            }
        }
        let display = display?;
        Some(Ok(Chunk {
            display,
            files,
            objects,
            failures,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `dir` with the given filters: the files kept, and the paths that failed (relative).
    #[cfg(unix)]
    fn walked(dir: &Path, include: &[&str], exclude: &[&str]) -> (Vec<String>, Vec<String>) {
        let filters = Filters::new(include.iter().copied(), exclude.iter().copied()).unwrap();
        let (mut files, mut failed) = (Vec::new(), Vec::new());
        for e in walk_folder(dir.to_path_buf(), filters, true, true) {
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

    #[test]
    fn an_any_case_include_keeps_upper_case_names_and_exclude_keeps_its_case() {
        let f = Filters::with_include_any_case(["**/*.pdf"], ["**/DRAFT.pdf"]).unwrap();
        assert!(f.keeps_object("scan.PDF", true));
        assert!(f.keeps_object("a/b.Pdf", true));
        assert!(!f.keeps_object("a/DRAFT.pdf", true));
        assert!(f.keeps_object("a/draft.pdf", true));
        let f = Filters::new(["**/*.pdf"], ["none"]).unwrap();
        assert!(!f.keeps_object("scan.PDF", true));
    }
}
