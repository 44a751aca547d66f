//! Resolve layer: which shard of which run this process is, from the command line or from the
//! engine that started it (Kubernetes Indexed Jobs, AWS Batch array jobs), decided once.

use crate::util::{Shard, MAX_SHARDS};

/// One worker of a sharded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRun {
    pub shard: Shard,
    /// Shared by every worker of the run and by its commit.
    pub run_id: String,
}

/// The shard index set by Kubernetes Indexed Jobs.
pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";
/// The shard index set by AWS Batch array jobs.
pub const BATCH_INDEX: &str = "AWS_BATCH_JOB_ARRAY_INDEX";
pub const SHARDS_ENV: &str = "EMBEDPIPE_SHARDS";
pub const RUN_ID_ENV: &str = "EMBEDPIPE_RUN_ID";
/// The Job's name, given to the pod through the downward API (see `deploy/kubernetes`).
pub const JOB_NAME_ENV: &str = "EMBEDPIPE_JOB_NAME";
pub const BATCH_JOB_ID: &str = "AWS_BATCH_JOB_ID";

/// A run id names a folder of the table's staging area: letters, digits, `.`, `_`, `-`.
pub fn check_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "run id `{id}` must be 1-128 letters, digits, `.`, `_` or `-` (not starting with `.`)"
        )),
    }
}

/// The run id given explicitly (`--run`, then `EMBEDPIPE_RUN_ID`), else the engine's: the
/// Kubernetes Job's name, or the array parent of an AWS Batch child (`<parent>:<index>`).
pub fn run_id(arg: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    arg.map(str::to_string)
        .or_else(|| set(env(RUN_ID_ENV)))
        .or_else(|| set(env(JOB_NAME_ENV)))
        .or_else(|| {
            set(env(BATCH_JOB_ID)).map(|id| id.split(':').next().unwrap_or_default().to_string())
        })
}

/// This process's place in a sharded run, or `None` for an ordinary run. `--shard I/N` comes
/// first; otherwise a shard count (`--shards N`, then `EMBEDPIPE_SHARDS`) makes the run
/// sharded, with the index from `JOB_COMPLETION_INDEX` or `AWS_BATCH_JOB_ARRAY_INDEX`.
pub fn shard_run(
    shard_arg: Option<&str>,
    shards_arg: Option<u32>,
    run_arg: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShardRun>, String> {
    let shard = match shard_arg {
        Some(s) => {
            let shard = Shard::parse(s)?;
            if let Some(n) = shards_arg.filter(|&n| n != shard.count) {
                return Err(format!(
                    "--shard {s} says {} shards, --shards says {n}: give one of them",
                    shard.count
                ));
            }
            shard
        }
        None => {
            let count = match shards_arg {
                Some(n) => n,
                None => match env(SHARDS_ENV).filter(|s| !s.trim().is_empty()) {
                    None => {
                        if run_arg.is_some() {
                            return Err("--run names the run of a sharded worker: give --shard I/N, or --shards N with the index in JOB_COMPLETION_INDEX / AWS_BATCH_JOB_ARRAY_INDEX".into());
                        }
                        return Ok(None);
                    }
                    Some(v) => v.trim().parse().map_err(|_| {
                        format!(
                            "{SHARDS_ENV}=`{v}` is not a shard count: write a whole number, e.g. 4"
                        )
                    })?,
                },
            };
            if count == 0 || count > MAX_SHARDS {
                return Err(format!(
                    "the shard count must be 1 to {MAX_SHARDS}, not {count}"
                ));
            }
            let (var, value) = [K8S_INDEX, BATCH_INDEX]
                .into_iter()
                .find_map(|v| env(v).filter(|s| !s.trim().is_empty()).map(|x| (v, x)))
                .ok_or_else(|| format!("a run of {count} shards needs this worker's index: give --shard I/{count}, or run it where {K8S_INDEX} (Kubernetes Indexed Job) or {BATCH_INDEX} (AWS Batch array job) is set"))?;
            let index: u32 = value.trim().parse().map_err(|_| {
                format!("{var}=`{value}` is not a shard index: expected a whole number")
            })?;
            if index >= count {
                return Err(format!(
                    "{var}={index} is not a shard of {count} (0 to {}): the Job's completions / the array size must equal the shard count",
                    count - 1
                ));
            }
            Shard { index, count }
        }
    };
    let run_id = run_id(run_arg, env).ok_or_else(|| {
        format!("shard {shard} needs the run id its workers share: give --run RUN_ID or set {RUN_ID_ENV} (on Kubernetes, {JOB_NAME_ENV} from the Job's name; on AWS Batch, {BATCH_JOB_ID} is used)")
    })?;
    check_run_id(&run_id)?;
    Ok(Some(ShardRun { shard, run_id }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn ordinary_runs_are_not_sharded() {
        assert_eq!(shard_run(None, None, None, &env(&[])), Ok(None));
        // An index alone (a one-job Indexed Job without a count) does not shard.
        assert_eq!(
            shard_run(None, None, None, &env(&[(K8S_INDEX, "0")])),
            Ok(None)
        );
    }

    #[test]
    fn kubernetes_index_and_job_name() {
        let e = env(&[
            (K8S_INDEX, "3"),
            (SHARDS_ENV, "4"),
            (JOB_NAME_ENV, "embed-xyz"),
        ]);
        let r = shard_run(None, None, None, &e).unwrap().unwrap();
        assert_eq!(r.shard, Shard { index: 3, count: 4 });
        assert_eq!(r.run_id, "embed-xyz");
    }

    #[test]
    fn batch_array_parent_is_the_run() {
        let e = env(&[(BATCH_INDEX, "1"), (BATCH_JOB_ID, "4c2e-91:1")]);
        let r = shard_run(None, Some(2), None, &e).unwrap().unwrap();
        assert_eq!(r.shard, Shard { index: 1, count: 2 });
        assert_eq!(r.run_id, "4c2e-91");
    }

    #[test]
    fn explicit_values_come_first() {
        let e = env(&[(K8S_INDEX, "3"), (SHARDS_ENV, "4"), (RUN_ID_ENV, "env-run")]);
        let r = shard_run(Some("1/2"), None, Some("cli-run"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(r.shard, Shard { index: 1, count: 2 });
        assert_eq!(r.run_id, "cli-run");
        let r = shard_run(None, None, None, &e).unwrap().unwrap();
        assert_eq!(r.run_id, "env-run");
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = env(&[]);
        let err = shard_run(None, Some(4), Some("r"), &e).unwrap_err();
        assert!(err.contains("JOB_COMPLETION_INDEX"), "{err}");
        let err = shard_run(Some("0/4"), None, None, &e).unwrap_err();
        assert!(err.contains("--run RUN_ID"), "{err}");
        let err = shard_run(None, Some(4), Some("r"), &env(&[(K8S_INDEX, "4")])).unwrap_err();
        assert!(err.contains("not a shard of 4"), "{err}");
        let err = shard_run(Some("0/4"), Some(3), Some("r"), &e).unwrap_err();
        assert!(err.contains("give one of them"), "{err}");
        let err = shard_run(Some("0/4"), None, Some("a/b"), &e).unwrap_err();
        assert!(err.contains("letters, digits"), "{err}");
        let err = shard_run(None, None, Some("r"), &e).unwrap_err();
        assert!(err.contains("--shard I/N"), "{err}");
    }

    #[test]
    fn each_shard_takes_its_share_of_a_job_quota() {
        use crate::resolve::RateSettings;
        let job = RateSettings {
            requests_per_minute: Some(1000),
            tokens_per_minute: Some(300_000),
            per_shard: false,
        };
        let share = job.shard_share(4);
        assert_eq!(share.requests_per_minute, Some(250));
        assert_eq!(share.tokens_per_minute, Some(75_000));
        // Never below one per minute; unlimited stays unlimited.
        let tiny = RateSettings {
            requests_per_minute: Some(3),
            ..Default::default()
        };
        assert_eq!(tiny.shard_share(8).requests_per_minute, Some(1));
        assert_eq!(tiny.shard_share(8).tokens_per_minute, None);
        // `quota_scope = "shard"`: the file's value is each shard's.
        let own = RateSettings {
            per_shard: true,
            ..job
        };
        assert_eq!(own.shard_share(4), own);
        assert_eq!(job.shard_share(1), job);
    }

    #[test]
    fn quota_scope_is_read_from_the_file() {
        let text = r#"
[source]
type = "csv"
path = "x.csv"

[[quota]]
name = "acct"
requests_per_minute = 600
quota_scope = "shard"

[[model]]
name = "m"
provider = "bedrock"
id = "amazon.titan-embed-text-v2:0"
quota = "acct"
requests_per_minute = 100

[[embed]]
model = "m"
column = "title"

[sink]
uri = "db"
table = "t"
"#;
        let p = crate::resolve::parse(std::path::Path::new("p.toml"), text).unwrap();
        let s = crate::resolve::Settings::resolve(&p, &Default::default())
            .unwrap()
            .for_shards(4);
        assert_eq!(s.models[0].rates.requests_per_minute, Some(25));
        assert_eq!(s.quotas[0].rates.requests_per_minute, Some(600));
    }
}
