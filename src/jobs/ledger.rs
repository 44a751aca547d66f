//! The job ledger: every async job submitted for a table, persisted next to it
//! (`<table>_jobs.jsonl`) before the run polls it, so a run that is killed and started again
//! resumes polling the same ARNs instead of paying for the same jobs twice.
//!
//! Append-only JSON lines, flushed and fsynced per record; the last record of a key wins. A torn
//! last line (the process was killed mid-write) is ignored.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// About to call StartAsyncInvoke with this token (no ARN known yet).
    Submitting,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitting => "submitting",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// One job, as last recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Content hash of the input (file bytes or S3 object version) + model + parameters.
    pub key: String,
    /// `clientRequestToken` (the key, plus the attempt after failures).
    pub token: String,
    pub attempt: u32,
    pub model: String,
    pub model_id: String,
    /// The input as the row gave it (path or `s3://` URI).
    pub input: String,
    /// The S3 object the job reads.
    pub input_uri: String,
    pub modality: String,
    pub arn: Option<String>,
    pub status: Status,
    pub failure: Option<String>,
    /// Unix seconds.
    pub submitted_at: f64,
    pub updated_at: f64,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An open ledger.
pub struct Ledger {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    jobs: Mutex<HashMap<String, JobRecord>>,
}

impl Ledger {
    /// Opens (creating) the ledger at `path` and loads what it holds.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let jobs = read(path)?
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the job ledger {}", path.display()))?;
        // Cut a torn last line off, so the next record starts on a line of its own.
        let bytes = std::fs::read(path)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)
                .with_context(|| format!("cannot repair the job ledger {}", path.display()))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            jobs: Mutex::new(jobs),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<JobRecord> {
        self.jobs.lock().expect("ledger").get(key).cloned()
    }

    /// Appends `r` durably (fsync) before returning.
    pub fn record(&self, r: &JobRecord) -> Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        {
            let mut f = self.file.lock().expect("ledger file");
            f.write_all(&line)
                .and_then(|()| f.sync_data())
                .with_context(|| format!("cannot write the job ledger {}", self.path.display()))?;
        }
        self.jobs
            .lock()
            .expect("ledger")
            .insert(r.key.clone(), r.clone());
        Ok(())
    }
}

/// Every job in the ledger at `path` (last record per key), oldest submit first. A missing
/// file holds no jobs.
pub fn read(path: &Path) -> Result<Vec<JobRecord>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the job ledger {}", path.display()))
        }
    };
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut by_key: HashMap<String, JobRecord> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<JobRecord>(line) {
            Ok(r) => {
                if !by_key.contains_key(&r.key) {
                    order.push(r.key.clone());
                }
                by_key.insert(r.key.clone(), r);
            }
            // A torn write at the very end (killed mid-append) is expected; elsewhere it is not.
            Err(_) if i + 1 == lines.len() && !text.ends_with(b"\n") => {}
            Err(e) => anyhow::bail!(
                "{}:{}: not a job record ({e}); the ledger was edited by hand or is damaged — \
                 move it away to start afresh (jobs in it would be submitted again)",
                path.display(),
                i + 1
            ),
        }
    }
    let mut jobs: Vec<JobRecord> = order
        .into_iter()
        .filter_map(|k| by_key.remove(&k))
        .collect();
    jobs.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, status: Status) -> JobRecord {
        JobRecord {
            key: key.into(),
            token: key.into(),
            attempt: 0,
            model: "m".into(),
            model_id: "amazon.nova-2-multimodal-embeddings-v1:0".into(),
            input: "a.mp4".into(),
            input_uri: "s3://b/a.mp4".into(),
            modality: "video".into(),
            arn: None,
            status,
            failure: None,
            submitted_at: 1.0,
            updated_at: 1.0,
        }
    }

    #[test]
    fn last_record_wins_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_jobs.jsonl");
        {
            let l = Ledger::open(&path).unwrap();
            l.record(&rec("a", Status::Submitting)).unwrap();
            let mut r = rec("a", Status::InProgress);
            r.arn = Some("arn:1".into());
            l.record(&r).unwrap();
            l.record(&rec("b", Status::Submitting)).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"key\":\"c\",\"tok").unwrap();
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.get("a").unwrap().arn.as_deref(), Some("arn:1"));
        assert_eq!(l.get("b").unwrap().status, Status::Submitting);
        assert!(l.get("c").is_none());
        // The torn line is cut off: the next record is readable.
        l.record(&rec("d", Status::Submitting)).unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
    }

    #[test]
    fn damage_in_the_middle_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_jobs.jsonl");
        let good = serde_json::to_string(&rec("a", Status::Completed)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("t_jobs.jsonl:2"), "{e}");
    }
}
