//! Dead letters: one JSON object per failed row, in `<uri>/<table>_failures.jsonl` by default.
//!
//! The file describes the latest run: it is replaced at the start of each run and only created
//! when something fails.

use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
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
    /// Machine-readable error class, e.g. `malformed_row`, `not_an_image`, `empty_input`.
    pub kind: String,
    pub message: String,
}

/// Appends dead letters to the failures file, creating it on first use.
pub struct FailureWriter {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    count: u64,
    by_kind: std::collections::BTreeMap<String, u64>,
}

impl FailureWriter {
    /// Starts a run: removes the previous run's file.
    pub fn start(path: &Path) -> Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove old failures file {}", path.display()))
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
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
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let f = std::fs::File::create(&self.path)
                .with_context(|| format!("cannot create {}", self.path.display()))?;
            self.out = Some(std::io::BufWriter::new(f));
        }
        let out = self.out.as_mut().expect("opened above");
        serde_json::to_writer(&mut *out, letter)?;
        out.write_all(b"\n")?;
        self.count += 1;
        *self.by_kind.entry(letter.kind.clone()).or_default() += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()
                .with_context(|| format!("cannot write {}", self.path.display()))?;
        }
        Ok(())
    }
}
