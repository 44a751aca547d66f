//! The staging area of sharded runs, next to the table: `<database>/_embedpipe/runs/<run id>/`
//! holds the run's manifest (`run.json`, written once by the first worker), each shard's report
//! (`shard-<I>.json`, written last: its presence means the shard is done), its dead letters
//! (`shard-<I>.failures.jsonl`), its progress while it runs (`shard-<I>.progress.json`), the
//! staged rows of incremental shards (LanceDB tables `shard-<I>` in that folder) and, once
//! committed, `committed.json`.
//!
//! Everything lives where the table does (a local folder or S3), so workers on other machines
//! and the commit see the same files. Objects are small JSON documents; a PUT is atomic.

use crate::clients::store::{Created, Stores};
use crate::resolve::Target;
use crate::util::{Location, S3Uri};
use anyhow::{anyhow, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// The folder under the database that holds embedpipe's own files.
pub const STAGING_DIR: &str = "_embedpipe/runs";

/// One run's staging folder.
#[derive(Clone)]
pub struct RunStage {
    pub run_id: String,
    dir: Location,
    db: Target,
    stores: Option<Stores>,
}

impl RunStage {
    pub fn new(target: &Target, run_id: &str, stores: Option<&Stores>) -> Self {
        Self {
            run_id: run_id.to_string(),
            dir: target.database().join(STAGING_DIR).join(run_id),
            db: target.clone(),
            stores: stores.cloned(),
        }
    }

    /// The folder, as shown to users.
    pub fn location(&self) -> &Location {
        &self.dir
    }

    pub fn report_name(shard: u32) -> String {
        format!("shard-{shard}.json")
    }

    pub fn progress_name(shard: u32) -> String {
        format!("shard-{shard}.progress.json")
    }

    /// Where shard `shard` keeps its dead letters until the commit merges them.
    pub fn failures_location(&self, shard: u32) -> Location {
        self.dir.join(&format!("shard-{shard}.failures.jsonl"))
    }

    /// The LanceDB database (the staging folder) and table holding an incremental shard's rows.
    pub fn staged_rows_target(&self, shard: u32) -> Target {
        let mut t = self.db.clone();
        match &self.dir {
            Location::Local(p) => {
                t.local_dir = Some(p.clone());
                t.uri = p.to_string_lossy().into_owned();
            }
            Location::S3(u) => {
                let key = u.key.trim_end_matches('/').to_string();
                let u = S3Uri { key, ..u.clone() };
                t.uri = u.to_string();
                t.remote = Some(u);
            }
        }
        t.table = format!("shard-{shard}");
        t
    }

    fn stores(&self) -> Result<&Stores> {
        self.stores
            .as_ref()
            .ok_or_else(|| anyhow!("internal: {} is in S3 but no S3 client was given", self.dir))
    }

    /// Reads `name` as JSON; `None` when it is not there.
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let at = self.dir.join(name);
        let bytes = match &at {
            Location::Local(p) => match std::fs::read(p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
            },
            Location::S3(u) => match self.stores()?.get(u).await? {
                Some(b) => b.to_vec(),
                None => return Ok(None),
            },
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{at} is not a valid staging file; was it edited by hand?"))
    }

    /// Writes `name` (replacing it), atomically.
    pub async fn put<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)?;
        match &self.dir.join(name) {
            Location::Local(p) => write_atomic(p, &bytes),
            Location::S3(u) => self.stores()?.put(u, bytes).await,
        }
    }

    /// Writes `name` only if it is not there yet.
    pub async fn put_new<T: Serialize>(&self, name: &str, value: &T) -> Result<Created> {
        let bytes = serde_json::to_vec_pretty(value)?;
        match &self.dir.join(name) {
            Location::Local(p) => {
                std::fs::create_dir_all(p.parent().expect("inside the run folder"))
                    .with_context(|| format!("cannot create {}", self.dir))?;
                // Written aside, then linked: a reader never sees a half-written manifest, and
                // of two workers only one link succeeds.
                let tmp = tmp_path(p);
                std::fs::write(&tmp, &bytes)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                let linked = std::fs::hard_link(&tmp, p);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Created::Yes),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Ok(Created::AlreadyThere)
                    }
                    Err(e) => Err(e).with_context(|| format!("cannot write {}", p.display())),
                }
            }
            Location::S3(u) => self.stores()?.put_new(u, bytes).await,
        }
    }

    /// Removes `name` (none there is no error).
    pub async fn remove(&self, name: &str) -> Result<()> {
        match &self.dir.join(name) {
            Location::Local(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", p.display()))
                }
                _ => Ok(()),
            },
            Location::S3(u) => self.stores()?.delete(u).await,
        }
    }

    /// Copies every shard's dead letters, in shard order, into `to` (replacing it); returns
    /// how many lines it holds.
    pub async fn merge_failures(&self, shards: u32, to: &Location) -> Result<u64> {
        let mut all: Vec<u8> = Vec::new();
        for shard in 0..shards {
            let part = self.failures_location(shard);
            let bytes = match &part {
                Location::Local(p) => match std::fs::read(p) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("cannot read {part}")),
                },
                Location::S3(u) => match self.stores()?.get(u).await? {
                    Some(b) => b.to_vec(),
                    None => continue,
                },
            };
            all.extend_from_slice(&bytes);
            if !all.is_empty() && !all.ends_with(b"\n") {
                all.push(b'\n');
            }
        }
        let lines = all.iter().filter(|&&b| b == b'\n').count() as u64;
        match to {
            Location::Local(p) => {
                if all.is_empty() {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("cannot remove {}", p.display()))
                        }
                        _ => {}
                    }
                } else {
                    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    write_atomic(p, &all)?;
                }
            }
            Location::S3(u) => match all.is_empty() {
                true => self.stores()?.delete(u).await?,
                false => self.stores()?.put(u, all).await?,
            },
        }
        Ok(lines)
    }
}

/// The run ids with a staging folder under the table's database, in name order.
pub async fn list_runs(target: &Target, stores: Option<&Stores>) -> Result<Vec<String>> {
    let root = target.database().join(STAGING_DIR);
    let mut ids: Vec<String> = match &root {
        Location::Local(p) => match std::fs::read_dir(p) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("run.json").exists())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect(),
            Err(_) => Vec::new(),
        },
        Location::S3(u) => {
            let stores = stores.ok_or_else(|| anyhow!("internal: no S3 client for {root}"))?;
            let prefix = u.key.trim_end_matches('/').to_string() + "/";
            stores
                .list(u)
                .await?
                .into_iter()
                .filter_map(|o| {
                    let rest = o.uri.key.strip_prefix(&prefix)?;
                    let (run, file) = rest.split_once('/')?;
                    (file == "run.json").then(|| run.to_string())
                })
                .collect()
        }
    };
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn tmp_path(p: &Path) -> std::path::PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    p.with_file_name(name)
}

/// Writes a local file whole or not at all (temp file, fsync, rename).
fn write_atomic(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = tmp_path(p);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> Target {
        Target {
            uri: dir.to_string_lossy().into_owned(),
            table: "t".into(),
            local_dir: Some(dir.to_path_buf()),
            remote: None,
            storage: Default::default(),
        }
    }

    #[tokio::test]
    async fn manifest_is_created_once_and_reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let stage = RunStage::new(&target(dir.path()), "r1", None);
        let first = serde_json::json!({"shards": 4});
        assert_eq!(
            stage.put_new("run.json", &first).await.unwrap(),
            Created::Yes
        );
        let second = serde_json::json!({"shards": 3});
        assert_eq!(
            stage.put_new("run.json", &second).await.unwrap(),
            Created::AlreadyThere
        );
        let got: serde_json::Value = stage.get("run.json").await.unwrap().unwrap();
        assert_eq!(got, first);
        assert!(stage
            .get::<serde_json::Value>("shard-0.json")
            .await
            .unwrap()
            .is_none());
        assert_eq!(list_runs(&target(dir.path()), None).await.unwrap(), ["r1"]);
    }

    #[tokio::test]
    async fn failures_merge_in_shard_order() {
        let dir = tempfile::tempdir().unwrap();
        let stage = RunStage::new(&target(dir.path()), "r", None);
        for (i, text) in [(1u32, "b\n"), (0, "a\n")] {
            let p = stage.failures_location(i);
            let p = p.as_local().unwrap();
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let out = Location::Local(dir.path().join("failures.jsonl"));
        assert_eq!(stage.merge_failures(3, &out).await.unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(out.as_local().unwrap()).unwrap(),
            "a\nb\n"
        );
    }
}
