//! The deployment files carry the sharded-run protocol: the shard count the engine runs equals the
//! one the workers are told, the run id of the workers reaches the one commit, the commit waits
//! for the whole run, the scheduled re-indexing is one incremental worker that cannot overlap, and
//! no file holds a credential. These tests parse every YAML and JSON file under `deploy/` (and the
//! Dockerfile) and compare those fields with fixed values; the two scripts run against stand-ins
//! for `kubectl` and `aws` written here. No Docker, kubectl or aws CLI is needed, only `/bin/sh`.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Shards of the example run (Indexed Job completions, Batch array size).
const SHARDS: u64 = 4;
const PIPELINE: &str = "/pipeline/pipeline.toml";
const WORKER_ARGS: [&str; 3] = ["run", "/pipeline/pipeline.toml", "--json"];
const JOB_NAME_FIELD: &str = "metadata.labels['batch.kubernetes.io/job-name']";
/// The run id placeholder of commit-job.yaml, filled in by run-sharded.sh.
const RUN_ID_PLACEHOLDER: &str = "__INDEXED_JOB_NAME__";
const SERVICE_ACCOUNT: &str = "embedpipe";
const PIPELINE_CONFIG_MAP: &str = "embedpipe-pipeline";
/// The image's user (Dockerfile) and the pods' runAsUser.
const UID: u64 = 10001;

const SERVICE_ACCOUNT_YAML: &str = "deploy/kubernetes/serviceaccount.yaml";
const CONFIG_MAP_YAML: &str = "deploy/kubernetes/configmap.yaml";
const INDEXED_JOB_YAML: &str = "deploy/kubernetes/indexed-job.yaml";
const COMMIT_JOB_YAML: &str = "deploy/kubernetes/commit-job.yaml";
const CRONJOB_YAML: &str = "deploy/kubernetes/cronjob.yaml";
const RUN_SHARDED_SH: &str = "deploy/kubernetes/run-sharded.sh";
const WORKER_DEF_JSON: &str = "deploy/aws-batch/job-definition.json";
const COMMIT_DEF_JSON: &str = "deploy/aws-batch/commit-job-definition.json";
const SCHEDULED_DEF_JSON: &str = "deploy/aws-batch/scheduled-job-definition.json";
const SCHEDULED_CE_JSON: &str = "deploy/aws-batch/scheduled-compute-environment.json";
const SCHEDULED_QUEUE_JSON: &str = "deploy/aws-batch/scheduled-job-queue.json";
const SCHEDULE_JSON: &str = "deploy/aws-batch/schedule.json";
const SUBMIT_SH: &str = "deploy/aws-batch/submit.sh";

const YAML_FILES: [&str; 5] = [
    SERVICE_ACCOUNT_YAML,
    CONFIG_MAP_YAML,
    INDEXED_JOB_YAML,
    COMMIT_JOB_YAML,
    CRONJOB_YAML,
];
const JSON_FILES: [&str; 6] = [
    WORKER_DEF_JSON,
    COMMIT_DEF_JSON,
    SCHEDULED_DEF_JSON,
    SCHEDULED_CE_JSON,
    SCHEDULED_QUEUE_JSON,
    SCHEDULE_JSON,
];

// ---- reading -------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a YAML text, as JSON values (empty documents left out).
fn yaml_docs_of(name: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    yaml_docs_of(rel, &read(rel))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not JSON: {e}"))
}

/// The one document of `rel`, which must be of `kind`.
fn only_doc(rel: &str, kind: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: one document expected");
    let doc = docs.remove(0);
    assert_eq!(doc["kind"], kind, "{rel}: kind");
    doc
}

/// Files under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel_of(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn toml_of(name: &str, text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{name}: not TOML: {e}"))
}

/// `table.key1.key2...` of a TOML table.
fn toml_at<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let mut value = table.get(path[0])?;
    for key in &path[1..] {
        value = value.get(*key)?;
    }
    Some(value)
}

/// The `${NAME}` references of a pipeline text that have no default (`${NAME:-x}`) and are not
/// escaped (`$${`): each must be in the environment, or the run stops before any work.
fn required_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        let escaped = pos > 0 && rest.as_bytes()[pos - 1] == b'$';
        let tail = &rest[pos + 2..];
        let end = tail.find('}').expect("unterminated ${ in a pipeline");
        let inner = &tail[..end];
        if !escaped && !inner.contains(":-") {
            out.insert(inner.to_string());
        }
        rest = &tail[end + 1..];
    }
    out
}

// ---- Kubernetes ----------------------------------------------------------------------------------

/// The pod template spec of a Job or a CronJob.
fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("Job") => &workload["spec"]["template"]["spec"],
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        kind => panic!("not a Job or CronJob: {kind:?}"),
    }
}

fn the_container(pod: &Value) -> &Value {
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn config_map(name: &str) -> Value {
    yaml_docs(CONFIG_MAP_YAML)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{CONFIG_MAP_YAML}: no ConfigMap {name}"))
}

fn config_map_text(name: &str, key: &str) -> String {
    config_map(name)["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
        .to_string()
}

/// The ConfigMap and key that a container sees at `path`: (ConfigMap name, key).
fn mounted_key(pod: &Value, container: &Value, path: &str) -> (String, String) {
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    let cm = &volume["configMap"];
    let name = cm["name"].as_str().expect("a ConfigMap volume").to_string();
    let key = match cm["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == file)
            .unwrap_or_else(|| panic!("no item of ConfigMap {name} is mounted as {file}"))["key"]
            .as_str()
            .expect("item key")
            .to_string(),
        None => file.to_string(),
    };
    (name, key)
}

/// The names of the environment variables a container gets (env and envFrom ConfigMaps).
fn env_names(container: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["name"].as_str().expect("env name").to_string())
        .collect();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let cm = from["configMapRef"]["name"]
            .as_str()
            .expect("envFrom is a configMapRef");
        let data = config_map(cm)["data"].clone();
        names.extend(data.as_object().expect("ConfigMap data").keys().cloned());
    }
    names
}

/// The pipeline a Kubernetes container runs gets every `${VAR}` it needs.
fn assert_env_covers(rel: &str, container: &Value, pipeline: &str) {
    let have = env_names(container);
    let missing: Vec<_> = required_vars(pipeline).difference(&have).cloned().collect();
    assert!(
        missing.is_empty(),
        "{rel}: the pipeline needs {missing:?}, not in the container's environment"
    );
}

fn assert_one_non_indexed_pod(rel: &str, job_spec: &Value) {
    assert!(
        job_spec["completionMode"].is_null() || job_spec["completionMode"] == "NonIndexed",
        "{rel}: not an Indexed Job"
    );
    for key in ["completions", "parallelism"] {
        assert!(
            job_spec[key].is_null() || job_spec[key] == 1,
            "{rel}: {key} must be 1 (one process), is {}",
            job_spec[key]
        );
    }
}

fn assert_runs_as_image_user(rel: &str, pod: &Value) {
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{rel}: runAsNonRoot");
    assert_eq!(sc["runAsUser"].as_u64(), Some(UID), "{rel}: runAsUser");
}

// ---- AWS Batch -----------------------------------------------------------------------------------

fn batch_env(container_properties: &Value, name: &str) -> Option<String> {
    container_properties["environment"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().expect("environment value").to_string())
}

fn batch_resource(container_properties: &Value, kind: &str) -> String {
    container_properties["resourceRequirements"]
        .as_array()
        .expect("resourceRequirements")
        .iter()
        .find(|r| r["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in resourceRequirements"))["value"]
        .as_str()
        .expect("resource value")
        .to_string()
}

/// The number of `SHARDS=<n>` in submit.sh (found without a regex).
fn script_shards(script: &str) -> u64 {
    let lines: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("SHARDS="))
        .collect();
    assert_eq!(lines.len(), 1, "{SUBMIT_SH}: one SHARDS= line");
    let digits: String = lines[0]["SHARDS=".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("SHARDS=<number>")
}

/// The value after `flag` in a command line.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let pos = args.iter().position(|a| a == flag)?;
    args.get(pos + 1).cloned()
}

/// The values after `flag` up to the next `--option`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(pos) => args[pos + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

// ---- the scripts, against stand-ins ----------------------------------------------------------------

/// A stand-in for `aws`: records each call's arguments (one per line) and answers `job-<n>`.
const FAKE_AWS: &str = r#"#!/bin/sh
n=$(cat "$FAKE_DIR/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$FAKE_DIR/count"
for a in "$@"; do printf '%s\n' "$a"; done > "$FAKE_DIR/call-$n"
echo "job-$n"
"#;

/// A stand-in for `kubectl`: `create -f -` keeps the manifest and names the Job after its
/// generateName; `get job NAME -o jsonpath=...` answers from files the test may write
/// (conditions-NAME, completed-NAME), by default a completed Job.
const FAKE_KUBECTL: &str = r#"#!/bin/sh
d=$FAKE_DIR
if [ "$1" = "--namespace" ]; then shift 2; fi
case $1 in
    create)
        n=$(cat "$d/count" 2>/dev/null || echo 0)
        n=$((n + 1))
        echo "$n" > "$d/count"
        cat > "$d/created-$n.yaml"
        echo "job.batch/$(sed -n 's/^  generateName: *//p' "$d/created-$n.yaml")run$n"
        ;;
    get)
        case $5 in
            *conditions*) cat "$d/conditions-$3" 2>/dev/null || echo "Complete " ;;
            *completedIndexes*) cat "$d/completed-$3" 2>/dev/null || echo "" ;;
            *spec.completions*) sed -n 's/^  completions: *//p' "$d/created-1.yaml" 2>/dev/null ;;
            *) exit 1 ;;
        esac
        ;;
    *) exit 1 ;;
esac
"#;

struct ScriptRun {
    dir: tempfile::TempDir,
    ok: bool,
    stderr: String,
}

impl ScriptRun {
    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(name)).ok()
    }
}

/// Runs `script` with `args` and `env`, with `fake` on PATH as `tool`; `setup` may write files the
/// fake reads.
fn run_script(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    tool: &str,
    fake: &str,
    setup: &[(&str, &str)],
) -> ScriptRun {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool_path = bin.join(tool);
    std::fs::write(&tool_path, fake).unwrap();
    std::fs::set_permissions(&tool_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in setup {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg(repo().join(script))
        .args(args)
        .env("PATH", path)
        .env("FAKE_DIR", dir.path())
        .env("EMBEDPIPE_POLL_SECONDS", "0")
        .env_remove("NAMESPACE")
        .env_remove("EMBEDPIPE_IMAGE")
        .env_remove("EMBEDPIPE_JOB_QUEUE")
        .env_remove("EMBEDPIPE_WORKER_DEFINITION")
        .env_remove("EMBEDPIPE_COMMIT_DEFINITION")
        .envs(env.iter().copied())
        .output()
        .expect("running sh");
    ScriptRun {
        dir,
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The calls a submit.sh run made to `aws`, each as its arguments.
fn aws_calls(run: &ScriptRun) -> Vec<Vec<String>> {
    (1..)
        .map_while(|n| run.file(&format!("call-{n}")))
        .map(|text| text.lines().map(str::to_string).collect())
        .collect()
}

/// The Jobs a run-sharded.sh run created, parsed.
fn created_jobs(run: &ScriptRun) -> Vec<Value> {
    (1..)
        .map_while(|n| run.file(&format!("created-{n}.yaml")))
        .map(|text| {
            let mut docs = yaml_docs_of("created manifest", &text);
            assert_eq!(docs.len(), 1);
            docs.remove(0)
        })
        .collect()
}

// ---- credentials -----------------------------------------------------------------------------------

const CREDENTIAL_NAMES: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// Why `text` holds a credential, if it does: an access key id (`AKIA...`), or a credential
/// variable or key followed by `=` or `:` and a value.
fn credential_in(text: &str) -> Option<String> {
    if let Some(pos) = text.find("AKIA") {
        return Some(format!("an AWS access key id at byte {pos}"));
    }
    let quote_or_blank = |c: char| matches!(c, '"' | '\'' | ' ' | '\t');
    let lower = text.to_ascii_lowercase();
    for name in CREDENTIAL_NAMES {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(name) {
            let end = from + pos + name.len();
            let after = lower[end..].trim_start_matches(quote_or_blank);
            if let Some(value) = after.strip_prefix('=').or_else(|| after.strip_prefix(':')) {
                let value = value.trim_start_matches(quote_or_blank);
                if value.starts_with(|c: char| c.is_ascii_alphanumeric() || "$/+{".contains(c)) {
                    return Some(format!("{name} with a value at byte {}", from + pos));
                }
            }
            from = end;
        }
    }
    None
}

/// Credential variables named anywhere in a parsed file: an env entry `name`, or a key.
fn credential_names_in(value: &Value, at: &str, found: &mut Vec<String>) {
    let is_credential = |s: &str| CREDENTIAL_NAMES.contains(&s.to_ascii_lowercase().as_str());
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if is_credential(key.as_str())
                    || (key == "name" && v.as_str().is_some_and(is_credential))
                {
                    found.push(format!("{at}/{key}"));
                }
                credential_names_in(v, &format!("{at}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                credential_names_in(v, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

// ---- Dockerfile ------------------------------------------------------------------------------------

/// Dockerfile instructions (keyword in capitals, the rest), comments left out and continued lines
/// joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((current.as_str(), ""));
                out.push((keyword.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// `"1.94"` -> (1, 94).
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| {
        p.parse::<u32>()
            .unwrap_or_else(|_| panic!("version {version}"))
    });
    (parts.next().unwrap(), parts.next().unwrap_or(0))
}

// ---- tests -----------------------------------------------------------------------------------------

#[test]
fn every_deploy_file_parses() {
    for rel in YAML_FILES.iter().chain(JSON_FILES.iter()) {
        assert!(repo().join(rel).is_file(), "{rel} is missing");
    }
    let (mut yaml, mut json) = (0, 0);
    for path in files_under(&repo().join("deploy")) {
        let rel = rel_of(&path);
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let docs = yaml_docs(&rel);
                assert!(!docs.is_empty(), "{rel}: no document");
                for doc in &docs {
                    assert!(
                        doc["apiVersion"].is_string() && doc["kind"].is_string(),
                        "{rel}: a document without apiVersion and kind"
                    );
                }
                yaml += 1;
            }
            Some("json") => {
                assert!(json_file(&rel).is_object(), "{rel}: not a JSON object");
                json += 1;
            }
            _ => {}
        }
    }
    assert!(yaml >= YAML_FILES.len() && json >= JSON_FILES.len());
}

#[test]
fn indexed_job_runs_one_shard_per_index() {
    let job = only_doc(INDEXED_JOB_YAML, "Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert!(
        job["metadata"]["generateName"].is_string() && job["metadata"]["name"].is_null(),
        "a generated name: every run is a new Job, so a new run id"
    );
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"].as_u64(), Some(SHARDS));
    assert_eq!(spec["parallelism"], spec["completions"]);
    assert_eq!(spec["backoffLimitPerIndex"].as_u64(), Some(2));
    let max_failed = spec["maxFailedIndexes"].as_u64().expect("maxFailedIndexes");
    assert!(
        max_failed < SHARDS,
        "maxFailedIndexes {max_failed} never stops the Job"
    );

    let pod = pod_spec(&job);
    assert_eq!(
        pod["restartPolicy"], "Never",
        "backoffLimitPerIndex needs Never"
    );
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_runs_as_image_user(INDEXED_JOB_YAML, pod);
    let c = the_container(pod);
    let args = args_of(c);
    assert_eq!(args, WORKER_ARGS);
    assert!(
        !args.iter().any(|a| a.starts_with("--shard")),
        "the index comes from JOB_COMPLETION_INDEX"
    );

    let shards = env_entry(c, "EMBEDPIPE_SHARDS").expect("EMBEDPIPE_SHARDS")["value"]
        .as_str()
        .expect("EMBEDPIPE_SHARDS is a literal string");
    assert_eq!(
        shards.parse::<u64>().ok(),
        spec["completions"].as_u64(),
        "EMBEDPIPE_SHARDS must equal completions"
    );
    let job_name = env_entry(c, "EMBEDPIPE_JOB_NAME").expect("EMBEDPIPE_JOB_NAME");
    assert_eq!(
        job_name["valueFrom"]["fieldRef"]["fieldPath"],
        JOB_NAME_FIELD
    );
    for fixed in ["EMBEDPIPE_RUN_ID", "JOB_COMPLETION_INDEX"] {
        assert!(
            env_entry(c, fixed).is_none(),
            "{fixed} must not be fixed in the manifest (every run would share it)"
        );
    }

    let (cm, key) = mounted_key(pod, c, &args[1]);
    assert_eq!(
        (cm.as_str(), key.as_str()),
        (PIPELINE_CONFIG_MAP, "pipeline.toml")
    );
    let text = config_map_text(&cm, &key);
    let pipeline = toml_of("pipeline.toml", &text);
    assert_eq!(
        toml_at(&pipeline, &["sink", "mode"]).and_then(|m| m.as_str()),
        Some("overwrite")
    );
    assert_env_covers(INDEXED_JOB_YAML, c, &text);
}

#[test]
fn commit_job_commits_the_indexed_jobs_run() {
    let job = only_doc(COMMIT_JOB_YAML, "Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_one_non_indexed_pod(COMMIT_JOB_YAML, &job["spec"]);
    let pod = pod_spec(&job);
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_runs_as_image_user(COMMIT_JOB_YAML, pod);
    let c = the_container(pod);
    let args = args_of(c);
    assert_eq!(args, ["commit", PIPELINE, "--run", "$(EMBEDPIPE_RUN_ID)"]);
    assert_eq!(
        env_entry(c, "EMBEDPIPE_RUN_ID").expect("EMBEDPIPE_RUN_ID")["value"],
        RUN_ID_PLACEHOLDER
    );
    assert!(
        read(RUN_SHARDED_SH).contains(&format!("PLACEHOLDER={RUN_ID_PLACEHOLDER}")),
        "run-sharded.sh fills in the run id placeholder"
    );
    assert!(env_entry(c, "EMBEDPIPE_SHARDS").is_none());

    // The same pipeline, environment, image and resources as the workers (a shard that is run
    // again uses this pod).
    let workers = only_doc(INDEXED_JOB_YAML, "Job");
    let worker_pod = pod_spec(&workers);
    let worker = the_container(worker_pod);
    assert_eq!(
        mounted_key(pod, c, &args[1]),
        mounted_key(worker_pod, worker, &args_of(worker)[1])
    );
    for key in ["envFrom", "image", "resources"] {
        assert_eq!(c[key], worker[key], "{key} differs from the workers'");
    }
    assert_env_covers(
        COMMIT_JOB_YAML,
        c,
        &config_map_text(PIPELINE_CONFIG_MAP, "pipeline.toml"),
    );
}

#[test]
fn cronjob_runs_one_incremental_worker() {
    let cron = only_doc(CRONJOB_YAML, "CronJob");
    assert_eq!(cron["apiVersion"], "batch/v1");
    let spec = &cron["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert!(spec["schedule"].is_string());
    assert!(spec["startingDeadlineSeconds"]
        .as_u64()
        .is_some_and(|s| s > 0));
    assert!(spec["successfulJobsHistoryLimit"].as_u64().is_some());
    assert_one_non_indexed_pod(CRONJOB_YAML, &spec["jobTemplate"]["spec"]);

    let pod = pod_spec(&cron);
    assert!(matches!(
        pod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_runs_as_image_user(CRONJOB_YAML, pod);
    let c = the_container(pod);
    let args = args_of(c);
    assert_eq!(args, WORKER_ARGS);
    for sharding in ["EMBEDPIPE_SHARDS", "EMBEDPIPE_JOB_NAME", "EMBEDPIPE_RUN_ID"] {
        assert!(
            env_entry(c, sharding).is_none(),
            "one worker: no {sharding}"
        );
    }

    let (cm, key) = mounted_key(pod, c, &args[1]);
    assert_eq!(
        (cm.as_str(), key.as_str()),
        (PIPELINE_CONFIG_MAP, "scheduled.toml")
    );
    let text = config_map_text(&cm, &key);
    let pipeline = toml_of("scheduled.toml", &text);
    assert_eq!(
        toml_at(&pipeline, &["sink", "mode"]).and_then(|m| m.as_str()),
        Some("incremental")
    );
    assert!(toml_at(&pipeline, &["source", "id_column"]).is_some_and(|v| v.is_str()));
    assert_env_covers(CRONJOB_YAML, c, &text);
}

#[test]
fn both_pipelines_index_the_same_table() {
    let bulk = toml_of(
        "pipeline.toml",
        &config_map_text(PIPELINE_CONFIG_MAP, "pipeline.toml"),
    );
    let scheduled = toml_of(
        "scheduled.toml",
        &config_map_text(PIPELINE_CONFIG_MAP, "scheduled.toml"),
    );
    let paths: [&[&str]; 6] = [
        &["source"],
        &["model"],
        &["embed"],
        &["sink", "uri"],
        &["sink", "table"],
        &["sink", "metadata"],
    ];
    for path in paths {
        let value = toml_at(&bulk, path);
        assert!(value.is_some(), "pipeline.toml: no {path:?}");
        assert_eq!(value, toml_at(&scheduled, path), "{path:?} differs");
    }
    // A real bucket through the environment, not a path baked into the file.
    assert_eq!(
        toml_at(&bulk, &["source", "path"]).and_then(|v| v.as_str()),
        Some("${EMBEDPIPE_SOURCE_URI}")
    );
    assert_eq!(
        toml_at(&bulk, &["sink", "uri"]).and_then(|v| v.as_str()),
        Some("${EMBEDPIPE_DB}")
    );
    let env = config_map("embedpipe-env");
    for name in ["EMBEDPIPE_SOURCE_URI", "EMBEDPIPE_DB"] {
        assert!(
            env["data"][name]
                .as_str()
                .is_some_and(|v| v.starts_with("s3://")),
            "embedpipe-env: {name} is an s3:// URI"
        );
    }
}

#[test]
fn service_account_assumes_an_iam_role() {
    let sa = only_doc(SERVICE_ACCOUNT_YAML, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], SERVICE_ACCOUNT);
    let arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .expect("the IRSA annotation");
    assert!(
        arn.starts_with("arn:aws:iam::") && arn.contains(":role/"),
        "{arn}"
    );
}

#[test]
fn run_sharded_commits_after_the_workers_completed() {
    let run = run_script(RUN_SHARDED_SH, &[], &[], "kubectl", FAKE_KUBECTL, &[]);
    assert!(run.ok, "run-sharded.sh failed: {}", run.stderr);
    let jobs = created_jobs(&run);
    assert_eq!(jobs.len(), 2, "the workers, then the commit");
    assert_eq!(
        jobs[0],
        only_doc(INDEXED_JOB_YAML, "Job"),
        "the workers as written"
    );
    let commit = &jobs[1];
    let c = the_container(pod_spec(commit));
    assert_eq!(args_of(c)[0], "commit");
    // The fake names a Job <generateName>run<n>: the workers' Job is the first.
    assert_eq!(
        env_entry(c, "EMBEDPIPE_RUN_ID").unwrap()["value"],
        "embedpipe-index-run1",
        "the commit's run id is the workers' Job name"
    );
}

#[test]
fn run_sharded_commits_nothing_when_a_shard_failed() {
    let setup = [
        ("conditions-embedpipe-index-run1", "FailureTarget Failed "),
        ("completed-embedpipe-index-run1", "0,2"),
    ];
    let run = run_script(RUN_SHARDED_SH, &[], &[], "kubectl", FAKE_KUBECTL, &setup);
    assert!(!run.ok, "a failed Job must fail the script");
    assert_eq!(created_jobs(&run).len(), 1, "no commit Job: {}", run.stderr);
    assert!(
        run.stderr.contains("rerun embedpipe-index-run1 1 3"),
        "names the shards to run again: {}",
        run.stderr
    );
}

#[test]
fn run_sharded_reruns_a_shard_with_the_same_run_id() {
    // With another image too (EMBEDPIPE_IMAGE), which every created Job must use.
    let image = "registry.example/embedpipe@sha256:0123abcd";
    let run = run_script(
        RUN_SHARDED_SH,
        &["rerun", "embedpipe-index-abcde", "2"],
        &[("EMBEDPIPE_IMAGE", image)],
        "kubectl",
        FAKE_KUBECTL,
        &[],
    );
    assert!(run.ok, "rerun failed: {}", run.stderr);
    let jobs = created_jobs(&run);
    assert_eq!(jobs.len(), 2, "the shard, then the commit");
    for job in &jobs {
        assert_eq!(the_container(pod_spec(job))["image"], image);
    }
    let shard = the_container(pod_spec(&jobs[0]));
    let shard_flag = format!("2/{SHARDS}");
    assert_eq!(
        args_of(shard),
        [
            "run",
            PIPELINE,
            "--json",
            "--shard",
            shard_flag.as_str(),
            "--run",
            "$(EMBEDPIPE_RUN_ID)"
        ]
    );
    for job in &jobs {
        let c = the_container(pod_spec(job));
        assert_eq!(
            env_entry(c, "EMBEDPIPE_RUN_ID").unwrap()["value"],
            "embedpipe-index-abcde"
        );
    }
    assert_eq!(args_of(the_container(pod_spec(&jobs[1])))[0], "commit");
}

#[test]
fn batch_array_size_is_the_shard_count() {
    let worker = json_file(WORKER_DEF_JSON);
    assert_eq!(worker["type"], "container");
    let cp = &worker["containerProperties"];
    assert_eq!(cp["command"], json!(WORKER_ARGS));
    let shards: u64 = batch_env(cp, "EMBEDPIPE_SHARDS")
        .expect("EMBEDPIPE_SHARDS")
        .parse()
        .expect("EMBEDPIPE_SHARDS is a number");
    let script = read(SUBMIT_SH);
    assert_eq!(
        shards,
        script_shards(&script),
        "EMBEDPIPE_SHARDS = array size"
    );
    assert_eq!(shards, SHARDS);
    assert_eq!(script.matches("--array-properties").count(), 1);
    assert!(script.contains("--array-properties \"size=$SHARDS\""));
    assert!(
        batch_env(cp, "EMBEDPIPE_RUN_ID").is_none(),
        "the run id is the array's id"
    );
    assert!(cp["jobRoleArn"]
        .as_str()
        .is_some_and(|a| a.starts_with("arn:aws:iam::")));
    batch_resource(cp, "VCPU");
    batch_resource(cp, "MEMORY");

    // Retried on host errors only: every RETRY matches a `Host EC2...` status reason, and the
    // last entry ends every other failure (no match would mean a retry).
    let retry = &worker["retryStrategy"];
    assert_eq!(retry["attempts"].as_u64(), Some(2));
    let rules = retry["evaluateOnExit"].as_array().expect("evaluateOnExit");
    let (last, retries) = rules.split_last().expect("rules");
    assert_eq!(*last, json!({ "onReason": "*", "action": "EXIT" }));
    assert!(!retries.is_empty());
    for rule in retries {
        assert_eq!(rule["action"], "RETRY");
        assert!(rule["onStatusReason"]
            .as_str()
            .is_some_and(|r| r.starts_with("Host EC2")));
        assert!(rule["onExitCode"].is_null() && rule["onReason"].is_null());
    }

    // The script submits exactly that: the array of SHARDS workers.
    let run = run_script(SUBMIT_SH, &[], &[], "aws", FAKE_AWS, &[]);
    assert!(run.ok, "submit.sh failed: {}", run.stderr);
    let calls = aws_calls(&run);
    assert_eq!(calls.len(), 2, "the workers, then the commit");
    assert_eq!(calls[0][..2], ["batch", "submit-job"]);
    assert_eq!(
        flag_value(&calls[0], "--array-properties"),
        Some(format!("size={shards}"))
    );
    assert_eq!(
        flag_value(&calls[0], "--job-definition").as_deref(),
        worker["jobDefinitionName"].as_str()
    );
}

#[test]
fn batch_commit_depends_on_the_whole_array() {
    let commit = json_file(COMMIT_DEF_JSON);
    let cp = &commit["containerProperties"];
    assert_eq!(
        cp["command"],
        json!(["commit", PIPELINE, "--run", "Ref::run_id"])
    );
    assert!(batch_env(cp, "EMBEDPIPE_SHARDS").is_none());
    let code: String = read(SUBMIT_SH)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for per_child in ["N_TO_N", "SEQUENTIAL", "type="] {
        assert!(!code.contains(per_child), "submit.sh: {per_child}");
    }

    let run = run_script(SUBMIT_SH, &[], &[], "aws", FAKE_AWS, &[]);
    assert!(run.ok, "submit.sh failed: {}", run.stderr);
    let calls = aws_calls(&run);
    assert_eq!(calls.len(), 2);
    // The fake answers job-<n>: the array job is job-1.
    let array_id = "job-1";
    let call = &calls[1];
    assert_eq!(
        flag_value(call, "--job-definition").as_deref(),
        commit["jobDefinitionName"].as_str()
    );
    assert!(flag_value(call, "--array-properties").is_none());
    assert_eq!(
        flag_values(call, "--depends-on"),
        [format!("jobId={array_id}")]
    );
    assert_eq!(
        flag_value(call, "--parameters"),
        Some(format!("run_id={array_id}"))
    );
    let overrides: Value =
        serde_json::from_str(&flag_value(call, "--container-overrides").expect("overrides"))
            .expect("container overrides are JSON");
    assert_eq!(
        overrides["environment"],
        json!([{ "name": "EMBEDPIPE_RUN_ID", "value": array_id }])
    );
}

#[test]
fn batch_rerun_runs_the_shards_then_commits() {
    let run = run_script(
        SUBMIT_SH,
        &["rerun", "run-abc", "1", "3"],
        &[],
        "aws",
        FAKE_AWS,
        &[],
    );
    assert!(run.ok, "submit.sh rerun failed: {}", run.stderr);
    let calls = aws_calls(&run);
    assert_eq!(calls.len(), 3, "two shards, then the commit");
    for (call, index) in calls.iter().zip([1, 3]) {
        assert!(flag_value(call, "--array-properties").is_none());
        let overrides: Value =
            serde_json::from_str(&flag_value(call, "--container-overrides").unwrap()).unwrap();
        assert_eq!(
            overrides["command"],
            json!([
                "run",
                PIPELINE,
                "--json",
                "--shard",
                format!("{index}/{SHARDS}"),
                "--run",
                "run-abc"
            ])
        );
    }
    assert_eq!(
        flag_values(&calls[2], "--depends-on"),
        ["jobId=job-1", "jobId=job-2"]
    );
    assert_eq!(
        flag_value(&calls[2], "--parameters").as_deref(),
        Some("run_id=run-abc")
    );
}

#[test]
fn batch_definitions_agree() {
    let defs: Vec<Value> = [WORKER_DEF_JSON, COMMIT_DEF_JSON, SCHEDULED_DEF_JSON]
        .iter()
        .map(|rel| json_file(rel))
        .collect();
    let first = &defs[0]["containerProperties"];
    for def in &defs[1..] {
        let cp = &def["containerProperties"];
        for key in ["image", "jobRoleArn"] {
            assert_eq!(cp[key], first[key], "{}: {key}", def["jobDefinitionName"]);
        }
        for var in ["EMBEDPIPE_SOURCE_URI", "EMBEDPIPE_DB", "AWS_REGION"] {
            assert_eq!(
                batch_env(cp, var),
                batch_env(first, var),
                "{}: {var}",
                def["jobDefinitionName"]
            );
        }
    }
    // Every ${VAR} of the pipeline a definition runs is in its environment.
    for (def, key) in defs
        .iter()
        .zip(["pipeline.toml", "pipeline.toml", "scheduled.toml"])
    {
        let cp = &def["containerProperties"];
        let command = cp["command"].as_array().unwrap();
        assert_eq!(command[1], format!("/pipeline/{key}"));
        for var in required_vars(&config_map_text(PIPELINE_CONFIG_MAP, key)) {
            assert!(
                batch_env(cp, &var).is_some(),
                "{}: {var} is not set",
                def["jobDefinitionName"]
            );
        }
    }
}

#[test]
fn scheduled_batch_run_is_one_worker_that_cannot_overlap() {
    let schedule = json_file(SCHEDULE_JSON);
    assert_eq!(
        schedule["Target"]["Arn"],
        "arn:aws:scheduler:::aws-sdk:batch:submitJob"
    );
    assert_eq!(schedule["FlexibleTimeWindow"]["Mode"], "OFF");
    let input: Value = serde_json::from_str(
        schedule["Target"]["Input"]
            .as_str()
            .expect("Input is the SubmitJob request as a JSON string"),
    )
    .expect("Input is JSON");
    assert!(input.get("ArrayProperties").is_none(), "one worker");

    let def = json_file(SCHEDULED_DEF_JSON);
    let queue = json_file(SCHEDULED_QUEUE_JSON);
    let ce = json_file(SCHEDULED_CE_JSON);
    assert_eq!(input["JobDefinition"], def["jobDefinitionName"]);
    assert_eq!(input["JobQueue"], queue["jobQueueName"]);
    let cp = &def["containerProperties"];
    assert_eq!(
        cp["command"],
        json!(["run", "/pipeline/scheduled.toml", "--json"])
    );
    for sharding in ["EMBEDPIPE_SHARDS", "EMBEDPIPE_RUN_ID"] {
        assert!(
            batch_env(cp, sharding).is_none(),
            "one worker: no {sharding}"
        );
    }

    // Non-overlap is capacity: a queue of its own (not the workers' `embedpipe`), over one
    // Fargate compute environment with room for one such job and not two.
    assert!(read(SUBMIT_SH).contains("JOB_QUEUE=${EMBEDPIPE_JOB_QUEUE:-embedpipe}"));
    assert_ne!(queue["jobQueueName"], "embedpipe");
    let order = queue["computeEnvironmentOrder"]
        .as_array()
        .expect("computeEnvironmentOrder");
    assert_eq!(
        order.len(),
        1,
        "the scheduled queue feeds one compute environment"
    );
    assert_eq!(order[0]["computeEnvironment"], ce["computeEnvironmentName"]);
    assert_eq!(ce["computeResources"]["type"], "FARGATE");
    assert_eq!(def["platformCapabilities"], json!(["FARGATE"]));
    let max_vcpus = ce["computeResources"]["maxvCpus"]
        .as_f64()
        .expect("maxvCpus");
    let vcpus: f64 = batch_resource(cp, "VCPU").parse().expect("VCPU");
    assert!(
        vcpus <= max_vcpus && 2.0 * vcpus > max_vcpus,
        "maxvCpus {max_vcpus} must fit one job of {vcpus} vCPU, not two"
    );
}

#[test]
fn no_credentials_in_any_deploy_file() {
    // The scanner itself finds what it must (strings built here, so no key sits in this file).
    assert!(credential_in(&format!("key: {}{}", "AK", "IAIOSFODNN7EXAMPLE")).is_some());
    assert!(credential_in("AWS_SECRET_ACCESS_KEY=abc").is_some());
    assert!(credential_in("aws_access_key_id = \"x\"").is_some());
    assert!(credential_in("never set AWS_SECRET_ACCESS_KEY in a pod").is_none());
    let mut found = Vec::new();
    credential_names_in(
        &json!({ "env": [{ "name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {} }] }),
        "",
        &mut found,
    );
    assert_eq!(found.len(), 1);

    let mut files = files_under(&repo().join("deploy"));
    files.push(repo().join("Dockerfile"));
    for path in files {
        let rel = rel_of(&path);
        let text = read(&rel);
        if let Some(why) = credential_in(&text) {
            panic!("{rel}: {why}");
        }
        let docs = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => yaml_docs(&rel),
            Some("json") => vec![json_file(&rel)],
            _ => Vec::new(),
        };
        let mut found = Vec::new();
        for doc in &docs {
            credential_names_in(doc, "", &mut found);
        }
        assert!(found.is_empty(), "{rel}: credential variables at {found:?}");
    }
}

#[test]
fn dockerfile_builds_the_binary_and_runs_it_as_non_root() {
    let steps = dockerfile_instructions(&read("Dockerfile"));
    let froms: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    let stage = |n: usize| {
        let end = froms.get(n + 1).copied().unwrap_or(steps.len());
        &steps[froms[n]..end]
    };

    // Builder: a Rust image at least as new as Cargo.toml's rust-version, a locked release build.
    let builder = stage(0);
    let image = builder[0].1.split_whitespace().next().unwrap();
    let version = image
        .strip_prefix("rust:")
        .expect("the builder is the official rust image")
        .split('-')
        .next()
        .unwrap();
    let manifest = toml_of("Cargo.toml", &read("Cargo.toml"));
    let needed = toml_at(&manifest, &["package", "rust-version"])
        .and_then(|v| v.as_str())
        .expect("rust-version");
    assert!(
        major_minor(version) >= major_minor(needed),
        "builder {image} is older than rust-version {needed}"
    );
    assert!(builder
        .iter()
        .any(|(k, rest)| k == "RUN"
            && rest.contains("cargo build --release --locked --bin embedpipe")));
    // protoc comes from the vendored crate (Cargo.toml [patch.crates-io]), not from apt.
    assert!(steps
        .iter()
        .all(|(_, rest)| !rest.contains("protobuf-compiler")));

    // Runtime: debian slim with CA certificates, the binary, a non-root user, embedpipe as
    // entrypoint.
    let runtime = stage(froms.len() - 1);
    assert_eq!(runtime[0].1, "debian:bookworm-slim");
    assert!(runtime
        .iter()
        .any(|(k, rest)| k == "RUN" && rest.contains("ca-certificates")));
    assert!(runtime.iter().any(|(k, rest)| k == "COPY"
        && rest.starts_with("--from=builder")
        && rest.ends_with("/usr/local/bin/embedpipe")));
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, rest)| rest.as_str())
        .expect("a USER in the final stage");
    let uid = user.split(':').next().unwrap();
    assert_eq!(uid, UID.to_string(), "the final stage runs as uid {UID}");
    assert!(runtime
        .iter()
        .any(|(k, rest)| k == "WORKDIR" && rest == "/work"));
    let entrypoint = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entrypoint: Value = serde_json::from_str(&entrypoint.1).expect("exec form");
    assert_eq!(entrypoint, json!(["embedpipe"]));
}
