//! The job ledger: every async job submitted for a table, persisted next to it before the run
//! polls it, so a run that is killed and started again resumes polling the same ARNs instead of
//! paying for the same jobs twice.
//!
//! Next to a local table it is one file (`<table>_jobs.jsonl`): append-only JSON lines, flushed
//! and fsynced per record; the last record of a key wins, and a torn last line (the process was
//! killed mid-write) is ignored. S3 has no append and no fsync (and a container loses its disk
//! when the job ends), so next to a table in S3 it is a folder of one object per job,
//! `<key>.json`, holding the job's latest record: a PUT is atomic, so nothing is ever torn, and a
//! job's first record is a create-only write, so two runs never both submit it.

use crate::clients::store::{Created, Stores};
use crate::resolve::storage::DEFAULT_S3_CONCURRENCY;
use crate::util::{Location, S3Uri};
use anyhow::{anyhow, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
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
    /// Batch jobs: the record counts of the finished job's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<RecordCounts>,
    /// Batch jobs: a run that used the job's results committed them (a later run does not
    /// look for its records in it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub used: bool,
    /// Batch jobs: records that hold an image (billed per image; the manifest counts tokens).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images: u64,
    /// Batch jobs of a sharded run: the shard (`i/n`) whose records it holds. A rerun looks
    /// for its records only in its own shard's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a batch job's manifest (`manifest.json.out`) reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordCounts {
    #[serde(default)]
    pub total_record_count: u64,
    #[serde(default)]
    pub processed_record_count: u64,
    #[serde(default)]
    pub success_record_count: u64,
    #[serde(default)]
    pub error_record_count: u64,
    #[serde(default)]
    pub input_token_count: u64,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An open ledger.
pub struct Ledger {
    location: Location,
    store: Store,
    /// Every job's latest record. A local file is appended to under this lock too, so the
    /// file's order and the map agree.
    jobs: Mutex<HashMap<String, JobRecord>>,
}

/// Where the records go.
enum Store {
    File(std::fs::File),
    /// The folder holding one object per job (ends with `/`).
    S3 {
        stores: Stores,
        folder: S3Uri,
    },
}

impl Ledger {
    /// Opens the ledger at `location` — a local file (created if missing) or an S3 folder — and
    /// loads what it holds. S3 needs `stores`.
    pub async fn open(location: &Location, stores: Option<&Stores>) -> Result<Self> {
        let (store, jobs) = match location {
            Location::Local(path) => {
                let (file, jobs) = open_file(path)?;
                (Store::File(file), jobs)
            }
            Location::S3(prefix) => {
                let stores = s3_client(stores, location)?;
                let jobs = load_objects(stores, prefix).await?;
                let folder = prefix.folder();
                (
                    Store::S3 {
                        stores: stores.clone(),
                        folder,
                    },
                    jobs,
                )
            }
        };
        Ok(Self {
            location: location.clone(),
            store,
            jobs: Mutex::new(jobs.into_iter().map(|r| (r.key.clone(), r)).collect()),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn get(&self, key: &str) -> Option<JobRecord> {
        self.lock().get(key).cloned()
    }

    /// Every job's latest record, oldest submit first.
    pub fn all(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self.lock().values().cloned().collect();
        jobs.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        jobs
    }

    /// Records `r` over the job's earlier records, durably (fsync, or a completed PUT) before
    /// returning.
    pub async fn record(&self, r: &JobRecord) -> Result<()> {
        match &self.store {
            Store::File(file) => self.append(file, r, false).map(|_| ()),
            Store::S3 { stores, folder } => {
                stores.put(&object_uri(folder, &r.key), encode(r)?).await?;
                self.remember(r);
                Ok(())
            }
        }
    }

    /// Records the first record of an attempt (`Submitting`, before StartAsyncInvoke) unless
    /// someone recorded that attempt already — another run on the same table, or another row
    /// with the same input — and then returns their record instead: the caller follows that
    /// job rather than submitting a second one.
    pub async fn record_new(&self, r: &JobRecord) -> Result<Option<JobRecord>> {
        let (stores, folder) = match &self.store {
            Store::File(file) => return self.append(file, r, true),
            Store::S3 { stores, folder } => (stores, folder),
        };
        let uri = object_uri(folder, &r.key);
        let body = encode(r)?;
        // A job's first attempt is create-only: of two runs, one creates the object, the other
        // finds it.
        if r.attempt == 0 && stores.put_new(&uri, body.clone()).await? == Created::Yes {
            self.remember(r);
            return Ok(None);
        }
        // A later attempt replaces the failed one's record, unless someone recorded this very
        // attempt (same token) already. That check and the PUT are not atomic, but both writers
        // then submit the same token, which the service answers with one job.
        let there = stores
            .get(&uri)
            .await?
            .map(|bytes| parse_object(&uri, &r.key, &bytes))
            .transpose()?;
        match there {
            Some(t) if r.attempt == 0 || t.token == r.token => {
                self.remember(&t);
                Ok(Some(t))
            }
            _ => {
                stores.put(&uri, body).await?;
                self.remember(r);
                Ok(None)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, JobRecord>> {
        self.jobs.lock().expect("ledger")
    }

    /// Keeps `r` as its job's latest record in memory (sync: no lock is held across an await).
    fn remember(&self, r: &JobRecord) {
        self.lock().insert(r.key.clone(), r.clone());
    }

    /// Appends `r` to the local file (fsync) and keeps it. With `only_new`, an attempt already
    /// recorded (same token) is returned instead of appended again.
    fn append(
        &self,
        file: &std::fs::File,
        r: &JobRecord,
        only_new: bool,
    ) -> Result<Option<JobRecord>> {
        let mut jobs = self.lock();
        if only_new {
            if let Some(there) = jobs.get(&r.key).filter(|t| t.token == r.token) {
                return Ok(Some(there.clone()));
            }
        }
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        let mut f = file;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("cannot write the job ledger {}", self.location))?;
        jobs.insert(r.key.clone(), r.clone());
        Ok(None)
    }
}

/// Every job in the ledger at `location` (its latest record), oldest submit first. A missing
/// ledger holds no jobs.
pub async fn read(location: &Location, stores: Option<&Stores>) -> Result<Vec<JobRecord>> {
    let mut jobs = match location {
        Location::Local(path) => read_file(path)?,
        Location::S3(prefix) => load_objects(s3_client(stores, location)?, prefix).await?,
    };
    jobs.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
    Ok(jobs)
}

fn s3_client<'a>(stores: Option<&'a Stores>, location: &Location) -> Result<&'a Stores> {
    stores.ok_or_else(|| {
        anyhow!("internal: the job ledger {location} is in S3 but no S3 client was given")
    })
}

/// Opens (creating) the local ledger file for appending and loads what it holds.
fn open_file(path: &Path) -> Result<(std::fs::File, Vec<JobRecord>)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let jobs = read_file(path)?;
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
    Ok((file, jobs))
}

/// The local ledger's jobs (last record per key), in the order they first appear. A missing
/// file holds no jobs.
fn read_file(path: &Path) -> Result<Vec<JobRecord>> {
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
    Ok(order
        .into_iter()
        .filter_map(|k| by_key.remove(&k))
        .collect())
}

/// The object holding the job `key`.
fn object_uri(folder: &S3Uri, key: &str) -> S3Uri {
    folder.join(&format!("{key}.json"))
}

fn encode(r: &JobRecord) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(r)?)
}

/// Every job object in the S3 folder `prefix`, fetched a few at once, in key order. Objects not
/// named `<key>.json` right in the folder are not the ledger's (e.g. a record moved aside).
async fn load_objects(stores: &Stores, prefix: &S3Uri) -> Result<Vec<JobRecord>> {
    let folder = prefix.folder();
    let named: Vec<(S3Uri, String)> = stores
        .list(&folder)
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.uri.key.strip_prefix(&folder.key)?;
            let key = name.strip_suffix(".json")?;
            (!key.is_empty() && !key.contains('/')).then(|| (o.uri.clone(), key.to_string()))
        })
        .collect();
    let found: Vec<Option<JobRecord>> = futures::stream::iter(named)
        .map(move |(uri, key)| async move {
            // Gone since the listing (moved away by hand): no job.
            stores
                .get(&uri)
                .await?
                .map(|bytes| parse_object(&uri, &key, &bytes))
                .transpose()
        })
        .buffered(DEFAULT_S3_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// The record in the job object `uri`, which must be the job its name says.
fn parse_object(uri: &S3Uri, key: &str, bytes: &[u8]) -> Result<JobRecord> {
    let damaged = |what: String| {
        anyhow!(
            "{uri}: {what}; the ledger was edited by hand or is damaged — delete or move this \
             object away to start the job afresh (it would be submitted again)"
        )
    };
    let r: JobRecord =
        serde_json::from_slice(bytes).map_err(|e| damaged(format!("not a job record ({e})")))?;
    if r.key != key {
        return Err(damaged(format!(
            "holds the record of job `{}`, not `{key}`",
            r.key
        )));
    }
    Ok(r)
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
            counts: None,
            used: false,
            images: 0,
            shard: None,
        }
    }

    #[tokio::test]
    async fn last_record_wins_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = Location::Local(dir.path().join("t_jobs.jsonl"));
        {
            let l = Ledger::open(&path, None).await.unwrap();
            l.record(&rec("a", Status::Submitting)).await.unwrap();
            let mut r = rec("a", Status::InProgress);
            r.arn = Some("arn:1".into());
            l.record(&r).await.unwrap();
            l.record(&rec("b", Status::Submitting)).await.unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path.as_local().unwrap())
            .unwrap();
        f.write_all(b"{\"key\":\"c\",\"tok").unwrap();
        let l = Ledger::open(&path, None).await.unwrap();
        assert_eq!(l.get("a").unwrap().arn.as_deref(), Some("arn:1"));
        assert_eq!(l.get("b").unwrap().status, Status::Submitting);
        assert!(l.get("c").is_none());
        // The torn line is cut off: the next record is readable.
        l.record(&rec("d", Status::Submitting)).await.unwrap();
        assert_eq!(read(&path, None).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn damage_in_the_middle_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_jobs.jsonl");
        let good = serde_json::to_string(&rec("a", Status::Completed)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = read(&Location::Local(path), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("t_jobs.jsonl:2"), "{e}");
    }

    #[tokio::test]
    async fn an_attempt_recorded_already_is_returned_not_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = Location::Local(dir.path().join("t_jobs.jsonl"));
        let l = Ledger::open(&path, None).await.unwrap();
        let first = rec("a", Status::Submitting);
        assert_eq!(l.record_new(&first).await.unwrap(), None);
        let mut submitted = first.clone();
        submitted.arn = Some("arn:1".into());
        submitted.status = Status::InProgress;
        l.record(&submitted).await.unwrap();
        // The same attempt again (another row with the same input): the recorded job comes back.
        assert_eq!(l.record_new(&first).await.unwrap(), Some(submitted));
        // A new attempt (new token) is recorded.
        let mut next = first.clone();
        next.attempt = 1;
        next.token = "a-1".into();
        assert_eq!(l.record_new(&next).await.unwrap(), None);
        assert_eq!(l.get("a").unwrap().token, "a-1");
        let lines = std::fs::read_to_string(path.as_local().unwrap()).unwrap();
        assert_eq!(lines.lines().count(), 3);
    }

    #[test]
    fn a_job_object_must_be_the_job_its_name_says() {
        let uri = S3Uri::parse("s3://b/db/t_jobs/a.json").unwrap();
        let body = serde_json::to_vec(&rec("b", Status::Completed)).unwrap();
        let e = parse_object(&uri, "a", &body).unwrap_err().to_string();
        assert!(
            e.contains("s3://b/db/t_jobs/a.json") && e.contains("`b`"),
            "{e}"
        );
        let e = parse_object(&uri, "a", b"{\"key").unwrap_err().to_string();
        assert!(e.contains("not a job record"), "{e}");
        assert_eq!(parse_object(&uri, "b", &body).unwrap().key, "b");
    }
}
