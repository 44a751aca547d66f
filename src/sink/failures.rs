//! Dead letters: one JSON object per failed row, in `<uri>/<table>_failures.jsonl` by default.
//!
//! The file describes the run that made the table's current version: a run writes its dead
//! letters aside and swaps them in only when it commits, so a failed or interrupted run leaves
//! the committed version's failures where they were. On a local disk "aside" is
//! `<file>.partial`, renamed over the file. In S3 (no rename, and a container's disk goes with
//! it) the letters stream into a multipart upload at the file's own key: an upload is invisible
//! until it is completed, so completing it is the swap and aborting it the discard.

use crate::clients::store::{explain, Stores};
use crate::util::{FailureKind, Location, S3Uri};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMultipartOptions, WriteMultipart};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Size of the parts of an S3 upload (S3 wants at least 5 MiB, but the last). Fewer letters
/// than this go up in one PUT at commit.
const PART_SIZE: usize = 8 << 20;
/// Parts of an S3 upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// How much of an existing file is read to tell a failures file: a dead letter line is short
/// (messages are capped); a huge first line is someone's data.
const FIRST_LINE_MAX: u64 = 64 * 1024;

/// One failed row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub run_id: String,
    /// Row id, when known.
    pub id: Option<String>,
    /// File the row came from.
    pub source: String,
    /// Row (line for CSV) in that file, when known.
    pub row: Option<u64>,
    /// Embed step, or `read` for rows that could not be read.
    pub step: String,
    /// Why the row failed; written as its text, e.g. `malformed_row`, `not_an_image`,
    /// `empty_input`.
    pub kind: FailureKind,
    pub message: String,
}

/// Longest message a dead letter carries: errors can quote whole request bodies (the row's own
/// text), which belongs in the source, not copied into every failure line.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// Cuts `message` to [`MAX_MESSAGE_CHARS`] characters (on a character boundary).
pub fn cap_message(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message.to_string(),
        Some((cut, _)) => format!(
            "{}… ({} more characters)",
            &message[..cut],
            message[cut..].chars().count()
        ),
    }
}

/// Removes source locations of embedpipe's dependencies (`/root/.cargo/registry/.../x.rs:12:5`,
/// as Lance puts in its errors) from a message: users get what went wrong, not where in a
/// library it was noticed.
pub fn scrub_internal_paths(message: &str) -> String {
    let internal = |token: &str| {
        let t = token.trim_matches(|c: char| matches!(c, ',' | '(' | ')' | '[' | ']' | ';'));
        let is_source = t
            .rsplit_once(".rs:")
            .is_some_and(|(_, pos)| pos.split(':').all(|n| n.parse::<u32>().is_ok()));
        is_source
            && (t.contains("/.cargo/")
                || t.contains("/rustc/")
                || t.starts_with('/')
                || t.starts_with("src/"))
    };
    message
        .lines()
        .map(|line| {
            if !line.contains(".rs:") {
                return line.to_string();
            }
            let kept: Vec<&str> = line.split(' ').filter(|t| !internal(t)).collect();
            let mut out = kept.join(" ");
            while out.ends_with([',', ' ']) {
                out.pop();
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Refuses a failures file location that would overwrite something embedpipe did not write: a
/// source file (or a file inside a source folder), the pipeline file, or any existing file that
/// is not a failures file. S3 needs `stores`, to look at an existing object.
pub async fn check_path(
    location: &Location,
    sources: &[Location],
    pipeline_file: &Path,
    stores: Option<&Stores>,
) -> Result<()> {
    match location {
        Location::Local(path) => {
            // A source in S3 is never a local path.
            let local: Vec<PathBuf> = sources
                .iter()
                .filter_map(|s| s.as_local().map(Path::to_path_buf))
                .collect();
            check_local_path(path, &local, pipeline_file)
        }
        Location::S3(uri) => check_s3_path(uri, sources, s3_client(stores, location)?).await,
    }
}

fn check_local_path(path: &Path, sources: &[PathBuf], pipeline_file: &Path) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    };
    let parent_real = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| p.canonicalize().ok());
    for s in sources {
        let inside_folder = s.is_dir()
            && parent_real
                .as_ref()
                .zip(s.canonicalize().ok())
                .is_some_and(|(p, dir)| p.starts_with(dir));
        if same(path, s) || inside_folder {
            bail!(
                "the failures file {} is {}the source; a run would overwrite it",
                path.display(),
                if inside_folder { "inside " } else { "" }
            );
        }
    }
    if same(path, pipeline_file) {
        bail!(
            "the failures file {} is the pipeline file itself",
            path.display()
        );
    }
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => bail!("the failures file {} is a folder", path.display()),
        Ok(_) if is_failures_file(path) => Ok(()),
        Ok(_) => bail!(
            "{} exists and is not an embedpipe failures file; a run would overwrite it",
            path.display()
        ),
    }
}

/// The S3 side of [`check_path`]: the pipeline file is local, so only sources and an existing
/// object can be in the way. Any key under a source's prefix is inside it (an images folder's
/// next run would read it as a source file).
async fn check_s3_path(uri: &S3Uri, sources: &[Location], stores: &Stores) -> Result<()> {
    if uri.key.is_empty() || uri.key.ends_with('/') {
        bail!("the failures file {uri} is a folder");
    }
    for s in sources.iter().filter_map(Location::as_s3) {
        if s.bucket != uri.bucket {
            continue;
        }
        let same = s.key.trim_end_matches('/') == uri.key;
        let inside = !same && uri.key.starts_with(&s.folder().key);
        if same || inside {
            bail!(
                "the failures file {uri} is {}the source; a run would overwrite it",
                if inside { "inside " } else { "" }
            );
        }
    }
    let Some(size) = stores.head(uri).await? else {
        return Ok(());
    };
    let head = if size == 0 {
        Bytes::new()
    } else {
        stores.get_range(uri, 0..size.min(FIRST_LINE_MAX)).await?
    };
    if starts_with_dead_letter(&head) {
        Ok(())
    } else {
        bail!("{uri} exists and is not an embedpipe failures file; a run would overwrite it")
    }
}

/// Whether `path` holds dead letters (its first line is one): the only kind of existing file a
/// run may replace.
fn is_failures_file(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::new();
    if f.take(FIRST_LINE_MAX).read_to_end(&mut head).is_err() {
        return false;
    }
    starts_with_dead_letter(&head)
}

/// Whether the first line of `head` is a dead letter.
fn starts_with_dead_letter(head: &[u8]) -> bool {
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(first).is_ok_and(|v| {
        ["run_id", "kind", "step", "message"]
            .iter()
            .all(|k| v.get(k).is_some())
    })
}

/// Where a run's dead letters go until it commits.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn s3_client<'a>(stores: Option<&'a Stores>, location: &Location) -> Result<&'a Stores> {
    stores.ok_or_else(|| {
        anyhow!("internal: the failures file {location} is in S3 but no S3 client was given")
    })
}

/// Writes dead letters aside, creating the file on first use; [`Self::commit`] swaps them in.
pub struct FailureWriter {
    location: Location,
    out: Out,
    count: u64,
    /// Keyed by the kind's text: the summary's `failures_by_kind`, in text order.
    by_kind: BTreeMap<String, u64>,
}

/// Where the letters go until the run commits.
enum Out {
    /// `<file>.partial`, created on the first letter.
    Local {
        path: PathBuf,
        partial: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
    },
    /// Letters held in memory up to a part's size, then a multipart upload at the key itself.
    S3 {
        stores: Stores,
        uri: S3Uri,
        pending: Vec<u8>,
        upload: Option<Upload>,
    },
}

impl FailureWriter {
    /// Starts a run's dead letters. A partial file left by a killed local run is replaced; a
    /// killed S3 run leaves an incomplete multipart upload, which no reader sees (a bucket
    /// lifecycle rule `AbortIncompleteMultipartUpload` reclaims its parts). S3 needs `stores`.
    pub async fn start(location: &Location, stores: Option<&Stores>) -> Result<Self> {
        let out = match location {
            Location::Local(path) => {
                let partial = partial_path(path);
                remove_if_there(&partial)?;
                Out::Local {
                    path: path.clone(),
                    partial,
                    file: None,
                }
            }
            Location::S3(uri) => Out::S3 {
                stores: s3_client(stores, location)?.clone(),
                uri: uri.clone(),
                pending: Vec::new(),
                upload: None,
            },
        };
        Ok(Self {
            location: location.clone(),
            out,
            count: 0,
            by_kind: BTreeMap::new(),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn by_kind(&self) -> &BTreeMap<String, u64> {
        &self.by_kind
    }

    /// Adds a letter. Synchronous and cheap (the pump calls it per failed row); in S3 a full
    /// part starts uploading in the background, so this must be called on a tokio runtime.
    pub fn write(&mut self, letter: &DeadLetter) -> Result<()> {
        let line = line_of(letter)?;
        match &mut self.out {
            Out::Local { partial, file, .. } => write_local(partial, file, &line)?,
            Out::S3 {
                stores,
                uri,
                pending,
                upload,
            } => {
                pending.extend_from_slice(&line);
                if pending.len() >= PART_SIZE {
                    if upload.is_none() {
                        *upload = Some(Upload::begin(stores, uri)?);
                    }
                    let part = Bytes::from(std::mem::take(pending));
                    upload
                        .as_ref()
                        .expect("begun above")
                        .send(Part::Data(part), uri)?;
                }
            }
        }
        self.count += 1;
        *self
            .by_kind
            .entry(letter.kind.as_str().to_string())
            .or_default() += 1;
        Ok(())
    }

    /// The run committed: its dead letters become the failures file (none: no file).
    pub async fn commit(self) -> Result<()> {
        match self.out {
            Out::Local {
                path,
                partial,
                file,
            } => commit_local(&path, &partial, file),
            Out::S3 {
                stores,
                uri,
                pending,
                upload: None,
            } => {
                if pending.is_empty() {
                    stores.delete(&uri).await
                } else {
                    // A PUT is atomic too: readers see the old file or the new one.
                    stores.put(&uri, pending).await
                }
            }
            Out::S3 {
                uri,
                pending,
                upload: Some(upload),
                ..
            } => upload.complete(pending, &uri).await,
        }
    }

    /// The run did not commit: its dead letters go, the committed version's stay.
    pub async fn discard(self) {
        match self.out {
            Out::Local { partial, file, .. } => {
                if let Some(out) = file {
                    drop(out);
                    let _ = std::fs::remove_file(&partial);
                }
            }
            Out::S3 {
                upload: Some(upload),
                ..
            } => upload.abort().await,
            Out::S3 { upload: None, .. } => {}
        }
    }
}

/// A letter as its line in the file: a long message capped, dependency paths scrubbed.
fn line_of(letter: &DeadLetter) -> Result<Vec<u8>> {
    let mut line =
        if letter.message.chars().count() > MAX_MESSAGE_CHARS || letter.message.contains(".rs:") {
            serde_json::to_vec(&DeadLetter {
                message: cap_message(&scrub_internal_paths(&letter.message)),
                ..letter.clone()
            })?
        } else {
            serde_json::to_vec(letter)?
        };
    line.push(b'\n');
    Ok(line)
}

fn write_local(
    partial: &Path,
    file: &mut Option<std::io::BufWriter<std::fs::File>>,
    line: &[u8],
) -> Result<()> {
    if file.is_none() {
        if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let f = std::fs::File::create(partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        *file = Some(std::io::BufWriter::new(f));
    }
    let out = file.as_mut().expect("opened above");
    out.write_all(line)
        .with_context(|| format!("cannot write {}", partial.display()))
}

fn commit_local(
    path: &Path,
    partial: &Path,
    file: Option<std::io::BufWriter<std::fs::File>>,
) -> Result<()> {
    match file {
        Some(mut out) => {
            out.flush()
                .and_then(|()| out.get_ref().sync_all())
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(partial, path)
                .with_context(|| format!("cannot move the failures into {}", path.display()))
        }
        None => remove_if_there(path),
    }
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("cannot remove old failures file {}", path.display()))
        }
    }
}

/// What [`FailureWriter::write`] hands the upload task.
enum Part {
    Data(Bytes),
    Complete,
}

/// A multipart upload of the failures object, fed by the synchronous
/// [`FailureWriter::write`] through a channel to a task on the runtime (creating the upload and
/// sending parts are requests). Dropped without [`Part::Complete`], the task aborts the upload.
struct Upload {
    parts: mpsc::UnboundedSender<Part>,
    /// Why the task stopped early, for the next write to report.
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Upload {
    fn begin(stores: &Stores, uri: &S3Uri) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            anyhow!("internal: the dead letters for {uri} are written outside the tokio runtime")
        })?;
        let (store, path) = stores.locate(uri)?;
        let (parts, mut rx) = mpsc::unbounded_channel();
        let failed = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&failed);
        let uri = uri.clone();
        let task = runtime.spawn(async move {
            let r = upload_parts(store, path, &uri, &mut rx).await;
            if let Err(e) = &r {
                let why = format!("{e:#}");
                *slot.lock().expect("failures upload") = Some(why);
            }
            // `rx` lives until here: a write that finds the channel closed finds the reason set.
            drop(rx);
            r
        });
        Ok(Self {
            parts,
            failed,
            task,
        })
    }

    fn send(&self, part: Part, uri: &S3Uri) -> Result<()> {
        let failed = self.failed.lock().expect("failures upload").clone();
        if let Some(why) = failed {
            bail!(why);
        }
        self.parts
            .send(part)
            .map_err(|_| anyhow!("cannot write {uri}: its upload stopped"))
    }

    /// Sends the rest and completes the upload: the object appears, whole, at once.
    async fn complete(self, rest: Vec<u8>, uri: &S3Uri) -> Result<()> {
        if !rest.is_empty() {
            self.send(Part::Data(Bytes::from(rest)), uri)?;
        }
        self.send(Part::Complete, uri)?;
        self.task
            .await
            .map_err(|e| anyhow!("cannot write {uri}: {e}"))?
    }

    /// Aborts the upload: the object stays as it was.
    async fn abort(self) {
        let Self { parts, task, .. } = self;
        drop(parts);
        let _ = task.await;
    }
}

/// Feeds parts into a multipart upload at `path`: completed on [`Part::Complete`], aborted when
/// the writer goes without completing (a discarded run, or one that stopped on an error).
async fn upload_parts(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    uri: &S3Uri,
    parts: &mut mpsc::UnboundedReceiver<Part>,
) -> Result<()> {
    let upload = store
        .put_multipart_opts(&path, PutMultipartOptions::default())
        .await
        .map_err(|e| explain(e, "write", uri))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    while let Some(part) = parts.recv().await {
        match part {
            Part::Data(bytes) => {
                // A few parts in flight: S3 is not flooded when failures come faster.
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = w.abort().await;
                    return Err(explain(e, "write", uri));
                }
                w.put(bytes);
            }
            Part::Complete => {
                return w
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| explain(e, "write", uri));
            }
        }
    }
    w.abort()
        .await
        .map_err(|e| explain(e, "abort the upload of", uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(message: &str) -> DeadLetter {
        DeadLetter {
            run_id: "r".into(),
            id: Some("1".into()),
            source: "s.csv".into(),
            row: Some(2),
            step: "vector".into(),
            kind: FailureKind::EmptyInput,
            message: message.into(),
        }
    }

    #[tokio::test]
    async fn a_run_that_does_not_commit_leaves_the_committed_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_failures.jsonl");
        let at = Location::Local(path.clone());
        let mut w = FailureWriter::start(&at, None).await.unwrap();
        w.write(&letter("first run")).unwrap();
        w.commit().await.unwrap();
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(committed.contains("first run"));

        let mut w = FailureWriter::start(&at, None).await.unwrap();
        w.write(&letter("second run")).unwrap();
        w.discard().await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), committed);
        assert!(!partial_path(&path).exists());

        // A committed run without failures removes the file.
        FailureWriter::start(&at, None)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_dead_letter_is_one_json_line_with_its_kind_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_failures.jsonl");
        let mut w = FailureWriter::start(&Location::Local(path.clone()), None)
            .await
            .unwrap();
        w.write(&letter("column `title` is empty")).unwrap();
        assert_eq!(w.by_kind().get("empty_input"), Some(&1));
        w.commit().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"run_id\":\"r\",\"id\":\"1\",\"source\":\"s.csv\",\"row\":2,\"step\":\"vector\",\"kind\":\"empty_input\",\"message\":\"column `title` is empty\"}\n"
        );
    }

    #[test]
    fn dependency_source_paths_are_scrubbed() {
        let lance = "LanceError(IO): Not found: /tmp/db/t.lance/_versions, /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-table-1.0.0/src/io/commit.rs:512:37\n  help: run it";
        assert_eq!(
            scrub_internal_paths(lance),
            "LanceError(IO): Not found: /tmp/db/t.lance/_versions\n  help: run it"
        );
        let plain = "column `a.rs` is empty";
        assert_eq!(scrub_internal_paths(plain), plain);
    }

    #[test]
    fn messages_are_capped() {
        let long = "é".repeat(10_000);
        let capped = cap_message(&long);
        assert!(capped.chars().count() < MAX_MESSAGE_CHARS + 40, "{capped}");
        assert!(capped.ends_with("(9500 more characters)"), "{capped}");
        assert_eq!(cap_message("short"), "short");
    }

    #[tokio::test]
    async fn only_failures_files_and_new_paths_may_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data.csv");
        std::fs::write(&src, "id,text\n1,a\n").unwrap();
        let pipeline = dir.path().join("p.toml");
        std::fs::write(&pipeline, "[source]\n").unwrap();
        let sources = vec![
            Location::Local(src.clone()),
            Location::S3(S3Uri::parse("s3://b/data.csv").unwrap()),
        ];
        let check = |path: &Path, sources: &[Location]| {
            let at = Location::Local(path.to_path_buf());
            let (sources, pipeline) = (sources.to_vec(), pipeline.clone());
            async move { check_path(&at, &sources, &pipeline, None).await }
        };
        let e = check(&src, &sources).await.unwrap_err();
        assert!(e.to_string().contains("is the source"), "{e}");
        assert!(check(&pipeline, &sources).await.is_err());
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "my notes\n").unwrap();
        let e = check(&other, &sources).await.unwrap_err();
        assert!(
            e.to_string().contains("not an embedpipe failures file"),
            "{e}"
        );
        assert!(check(&dir.path().join("new.jsonl"), &sources).await.is_ok());
        let ours = dir.path().join("f.jsonl");
        let mut w = FailureWriter::start(&Location::Local(ours.clone()), None)
            .await
            .unwrap();
        w.write(&letter("x")).unwrap();
        w.commit().await.unwrap();
        assert!(check(&ours, &sources).await.is_ok());
        // Inside an images folder: the next run would read it as a source file.
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let e = check(&images.join("f.jsonl"), &[Location::Local(images.clone())])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("inside"), "{e}");
    }

    #[test]
    fn only_dead_letters_make_a_failures_file() {
        let line = String::from_utf8(line_of(&letter("x")).unwrap()).unwrap();
        assert!(starts_with_dead_letter(line.as_bytes()));
        assert!(starts_with_dead_letter(
            format!("{line}not json").as_bytes()
        ));
        assert!(!starts_with_dead_letter(b"id,text\n1,a\n"));
        assert!(!starts_with_dead_letter(b""));
    }
}
