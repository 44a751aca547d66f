//! Dead letters: one JSON object per failed row, in `<uri>/<table>_failures.jsonl` by default.
//!
//! The file describes the run that made the table's current version: a run writes its dead
//! letters aside (`<file>.partial`) and swaps them in only when it commits, so a failed or
//! interrupted run leaves the committed version's failures where they were.

use crate::util::FailureKind;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

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

/// Refuses a failures file path that would overwrite something embedpipe did not write: a
/// source file (or a file inside a source folder), the pipeline file, or any existing file that
/// is not a failures file.
pub fn check_path(path: &Path, sources: &[PathBuf], pipeline_file: &Path) -> Result<()> {
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

/// Whether `path` holds dead letters (its first line is one): the only kind of existing file a
/// run may replace.
fn is_failures_file(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    // A dead letter line is short (messages are capped); a huge first line is someone's data.
    if std::io::BufReader::new(std::io::Read::take(f, 64 * 1024))
        .read_line(&mut first)
        .is_err()
    {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&first).is_ok_and(|v| {
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

/// Appends dead letters aside, creating the file on first use; [`Self::commit`] swaps it in.
pub struct FailureWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    count: u64,
    /// Keyed by the kind's text: the summary's `failures_by_kind`, in text order.
    by_kind: std::collections::BTreeMap<String, u64>,
}

impl FailureWriter {
    /// Starts a run's dead letters (a partial file left by a killed run is replaced).
    pub fn start(path: &Path) -> Result<Self> {
        let partial = partial_path(path);
        remove_if_there(&partial)?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            out: None,
            count: 0,
            by_kind: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn by_kind(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.by_kind
    }

    pub fn write(&mut self, letter: &DeadLetter) -> Result<()> {
        if self.out.is_none() {
            if let Some(parent) = self.partial.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let f = std::fs::File::create(&self.partial)
                .with_context(|| format!("cannot create {}", self.partial.display()))?;
            self.out = Some(std::io::BufWriter::new(f));
        }
        let out = self.out.as_mut().expect("opened above");
        if letter.message.chars().count() > MAX_MESSAGE_CHARS || letter.message.contains(".rs:") {
            let cleaned = DeadLetter {
                message: cap_message(&scrub_internal_paths(&letter.message)),
                ..letter.clone()
            };
            serde_json::to_writer(&mut *out, &cleaned)?;
        } else {
            serde_json::to_writer(&mut *out, letter)?;
        }
        out.write_all(b"\n")?;
        self.count += 1;
        *self
            .by_kind
            .entry(letter.kind.as_str().to_string())
            .or_default() += 1;
        Ok(())
    }

    /// The run committed: its dead letters become the failures file (none: no file).
    pub fn commit(mut self) -> Result<()> {
        match self.out.take() {
            Some(mut out) => {
                out.flush()
                    .and_then(|()| out.get_ref().sync_all())
                    .with_context(|| format!("cannot write {}", self.partial.display()))?;
                std::fs::rename(&self.partial, &self.path).with_context(|| {
                    format!("cannot move the failures into {}", self.path.display())
                })
            }
            None => remove_if_there(&self.path),
        }
    }

    /// The run did not commit: its dead letters go, the committed version's stay.
    pub fn discard(mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
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

    #[test]
    fn a_run_that_does_not_commit_leaves_the_committed_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_failures.jsonl");
        let mut w = FailureWriter::start(&path).unwrap();
        w.write(&letter("first run")).unwrap();
        w.commit().unwrap();
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(committed.contains("first run"));

        let mut w = FailureWriter::start(&path).unwrap();
        w.write(&letter("second run")).unwrap();
        w.discard();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), committed);
        assert!(!partial_path(&path).exists());

        // A committed run without failures removes the file.
        FailureWriter::start(&path).unwrap().commit().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_dead_letter_is_one_json_line_with_its_kind_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_failures.jsonl");
        let mut w = FailureWriter::start(&path).unwrap();
        w.write(&letter("column `title` is empty")).unwrap();
        assert_eq!(w.by_kind().get("empty_input"), Some(&1));
        w.commit().unwrap();
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

    #[test]
    fn only_failures_files_and_new_paths_may_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data.csv");
        std::fs::write(&src, "id,text\n1,a\n").unwrap();
        let pipeline = dir.path().join("p.toml");
        std::fs::write(&pipeline, "[source]\n").unwrap();
        let sources = vec![src.clone()];
        let e = check_path(&src, &sources, &pipeline).unwrap_err();
        assert!(e.to_string().contains("is the source"), "{e}");
        assert!(check_path(&pipeline, &sources, &pipeline).is_err());
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "my notes\n").unwrap();
        let e = check_path(&other, &sources, &pipeline).unwrap_err();
        assert!(
            e.to_string().contains("not an embedpipe failures file"),
            "{e}"
        );
        assert!(check_path(&dir.path().join("new.jsonl"), &sources, &pipeline).is_ok());
        let ours = dir.path().join("f.jsonl");
        let mut w = FailureWriter::start(&ours).unwrap();
        w.write(&letter("x")).unwrap();
        w.commit().unwrap();
        assert!(check_path(&ours, &sources, &pipeline).is_ok());
        // Inside an images folder: the next run would read it as a source file.
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let e = check_path(
            &images.join("f.jsonl"),
            std::slice::from_ref(&images),
            &pipeline,
        )
        .unwrap_err();
        assert!(e.to_string().contains("inside"), "{e}");
    }
}
