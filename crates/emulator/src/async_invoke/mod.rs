//! The emulator's async invoke: `POST /async-invoke` (StartAsyncInvoke), `GET /async-invoke/{arn}`
//! (GetAsyncInvoke) and `GET /async-invoke` (ListAsyncInvokes), for Nova 2 segmented embeddings
//! and Marengo 2.7 / 3.0 video and audio.
//!
//! Jobs read their input from a real S3-compatible server (`Settings::s3_endpoint`) and, after
//! `async_job_ms`, write their results there in the layout the reference describes (Nova:
//! `segmented-embedding-result.json` + `embedding-<modality>.jsonl`; Marengo: `output.json`),
//! under `<s3Uri>/<invocation id>/`. `clientRequestToken` makes a submit idempotent: the same
//! token and body answer the same ARN (counted as a duplicate), a different body a
//! ConflictException. Inputs whose key contains, or whose bytes end with, `poison` fail;
//! `stall` never finish.
//!
//! This module is the jobs' bookkeeping and the three operations; what each family accepts and
//! writes is in its file (`families/`), running a job in `run`, media durations in `media`.

mod media;
pub(crate) mod run;

pub use media::media_seconds;
pub(crate) use run::Finished;

use crate::catalog::{self, Model};
use crate::server::percent_decode;
use crate::settings::Settings;
use crate::vectors;
use crate::wire::{self, api, ApiError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const ACCOUNT: &str = "123456789012";

/// What the async side received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AsyncCounters {
    /// StartAsyncInvoke calls (accepted, duplicate or refused).
    pub submits: u64,
    /// Jobs created (a duplicate submit creates none).
    pub jobs: u64,
    /// Submits answered with an existing job's ARN (same token and body).
    pub duplicate_submits: u64,
    /// Jobs created per input S3 URI.
    pub jobs_by_input: BTreeMap<String, u64>,
    pub completed: u64,
    pub failed: u64,
    pub gets: u64,
    pub lists: u64,
    /// Refusals by error code.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) arn: String,
    pub(crate) model_id: String,
    token: Option<String>,
    body_hash: u64,
    status: &'static str,
    failure: Option<String>,
    submitted: SystemTime,
    modified: SystemTime,
    ended: Option<SystemTime>,
    pub(crate) output: String,
}

#[derive(Default)]
pub(crate) struct Jobs {
    jobs: Mutex<Vec<Job>>,
    pub(crate) counters: Mutex<AsyncCounters>,
}

impl Jobs {
    pub(crate) fn reset_counters(&self) {
        *self.counters.lock().expect("counters") = AsyncCounters::default();
    }

    fn refuse(&self, e: ApiError) -> Result<Value, ApiError> {
        *self
            .counters
            .lock()
            .expect("counters")
            .errors
            .entry(e.code.to_string())
            .or_default() += 1;
        Err(e)
    }
}

fn time(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

fn summary(j: &Job, region: &str) -> Value {
    let mut v = json!({
        "invocationArn": j.arn,
        "modelArn": format!("arn:aws:bedrock:{region}::foundation-model/{}", j.model_id),
        "status": j.status,
        "submitTime": time(j.submitted),
        "lastModifiedTime": time(j.modified),
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": j.output}},
    });
    if let Some(t) = &j.token {
        v["clientRequestToken"] = json!(t);
    }
    if let Some(m) = &j.failure {
        v["failureMessage"] = json!(m);
    }
    if let Some(e) = j.ended {
        v["endTime"] = json!(time(e));
    }
    v
}

/// What a job must do, checked at submit (by its family's file).
#[derive(Debug, Clone)]
pub(crate) struct Task {
    /// The model the job runs (its row points at the family's async route).
    pub(crate) model: &'static Model,
    pub(crate) input_uri: String,
    pub(crate) modality: &'static str,
    pub(crate) dimension: usize,
    /// Segment length (seconds; Nova text: characters); `None`: the family's own splitting.
    pub(crate) segment: Option<f64>,
    /// Nova video `AUDIO_VIDEO_SEPARATE`.
    pub(crate) separate: bool,
    /// Marengo embedding options.
    pub(crate) options: Vec<String>,
}

/// `GET|POST /async-invoke[/{arn}]`.
pub(crate) async fn handle(
    jobs: &Arc<Jobs>,
    settings: &Settings,
    method: &hyper::Method,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
    region: &str,
) -> Result<Value, ApiError> {
    match (method.as_str(), rest) {
        ("POST", "") => submit(jobs, settings, body, region),
        ("GET", "") => {
            jobs.counters.lock().expect("counters").lists += 1;
            Ok(list(jobs, query, region))
        }
        ("GET", arn) => {
            jobs.counters.lock().expect("counters").gets += 1;
            let arn = percent_decode(arn);
            let all = jobs.jobs.lock().expect("jobs");
            match all.iter().find(|j| j.arn == arn) {
                Some(j) => Ok(summary(j, region)),
                None => Err(wire::validation(format!(
                    "The invocation {arn} does not exist."
                ))),
            }
        }
        _ => Err(api(
            "UnknownOperationException",
            404,
            format!("no such operation: {method} /async-invoke/{rest}"),
        )),
    }
}

fn list(jobs: &Jobs, query: Option<&str>, region: &str) -> Value {
    let params: HashMap<String, String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let max: usize = params
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000);
    let start: usize = params
        .get("nextToken")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let all = jobs.jobs.lock().expect("jobs");
    let matching: Vec<&Job> = all
        .iter()
        .filter(|j| params.get("statusEquals").is_none_or(|s| s == j.status))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(max)
        .map(|j| summary(j, region))
        .collect();
    let mut v = json!({ "asyncInvokeSummaries": page });
    if start + max < matching.len() {
        v["nextToken"] = json!((start + max).to_string());
    }
    v
}

fn submit(
    jobs: &Arc<Jobs>,
    settings: &Settings,
    body: &[u8],
    region: &str,
) -> Result<Value, ApiError> {
    jobs.counters.lock().expect("counters").submits += 1;
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return jobs.refuse(wire::validation(format!("Malformed request: {e}"))),
    };
    let model_id = req["modelId"].as_str().unwrap_or_default().to_string();
    let output = match req["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"].as_str() {
        Some(u) if u.starts_with("s3://") => u.to_string(),
        _ => {
            return jobs.refuse(wire::validation(
                "outputDataConfig.s3OutputDataConfig.s3Uri must be an s3:// URI",
            ))
        }
    };
    // Only a base id with an async route: a profile id is refused like a model without one.
    let Some(model) = catalog::asynchronous(&model_id) else {
        return jobs.refuse(wire::validation(
            "The provided model doesn't support async inference.",
        ));
    };
    let task = match check_input(model, &req["modelInput"]) {
        Ok(t) => t,
        Err(e) => return jobs.refuse(e),
    };
    let token = req["clientRequestToken"].as_str().map(String::from);
    // Key order is the client's business (the SDK sends a hash map): hash a canonical form.
    let body_hash =
        vectors::fnv(canonical(&json!([req["modelId"], req["modelInput"], output])).as_bytes());
    let job = {
        let mut all = jobs.jobs.lock().expect("jobs");
        if let Some(t) = &token {
            if let Some(j) = all.iter().find(|j| j.token.as_ref() == Some(t)) {
                if j.body_hash != body_hash {
                    drop(all);
                    return jobs.refuse(api(
                        "ConflictException",
                        400,
                        "The clientRequestToken was already used with a different request.",
                    ));
                }
                jobs.counters.lock().expect("counters").duplicate_submits += 1;
                return Ok(json!({ "invocationArn": j.arn }));
            }
        }
        let job = new_job(region, model_id, token, body_hash, output);
        all.push(job.clone());
        job
    };
    {
        let mut c = jobs.counters.lock().expect("counters");
        c.jobs += 1;
        *c.jobs_by_input.entry(task.input_uri.clone()).or_default() += 1;
    }
    let arn = job.arn.clone();
    spawn(jobs.clone(), settings.clone(), job, task);
    Ok(json!({ "invocationArn": arn }))
}

/// A job just submitted, with a fresh ARN.
fn new_job(
    region: &str,
    model_id: String,
    token: Option<String>,
    body_hash: u64,
    output: String,
) -> Job {
    let id: String = (0..12)
        .map(|_| {
            let c = fastrand::u8(0..36);
            char::from_digit(c as u32, 36).expect("digit")
        })
        .collect();
    let now = SystemTime::now();
    Job {
        arn: format!("arn:aws:bedrock:{region}:{ACCOUNT}:async-invoke/{id}"),
        model_id,
        token,
        body_hash,
        status: "InProgress",
        failure: None,
        submitted: now,
        modified: now,
        ended: None,
        output,
    }
}

/// Runs `job` in the background and records how it ended.
fn spawn(jobs: Arc<Jobs>, settings: Settings, job: Job, task: Task) {
    tokio::spawn(async move {
        let result = run::run_job(&settings, &job, &task).await;
        let mut all = jobs.jobs.lock().expect("jobs");
        if let Some(j) = all.iter_mut().find(|j| j.arn == job.arn) {
            let now = SystemTime::now();
            j.modified = now;
            j.ended = Some(now);
            let mut c = jobs.counters.lock().expect("counters");
            match result {
                Ok(()) => {
                    j.status = "Completed";
                    c.completed += 1;
                }
                Err(m) => {
                    j.status = "Failed";
                    j.failure = Some(m);
                    c.failed += 1;
                }
            }
        }
    });
}

/// JSON with object keys sorted at every level (idempotency hashes: batch jobs use it too).
pub(crate) fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&o[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The family's check of a job's `modelInput`.
fn check_input(model: &'static Model, input: &Value) -> Result<Task, ApiError> {
    match &model.service.async_route {
        Some(route) => (route.task)(model, input),
        None => Err(wire::validation(
            "The provided model doesn't support async inference.",
        )),
    }
}

/// A media `source`'s S3 URI: async invoke reads only from S3 (`what` names the field).
pub(crate) fn s3_location(v: &Value, what: &str) -> Result<String, ApiError> {
    match v["s3Location"]["uri"].as_str() {
        Some(u) if u.starts_with("s3://") => Ok(u.to_string()),
        _ if v.get("base64String").is_some() || v.get("bytes").is_some() => Err(wire::validation(
            format!("{what}: async invoke accepts only S3 sources"),
        )),
        _ => Err(wire::validation(format!(
            "{what}.s3Location.uri is required (an s3:// URI)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA: &str = "amazon.nova-2-multimodal-embeddings-v1:0";
    const MARENGO_30: &str = "twelvelabs.marengo-embed-3-0-v1:0";

    /// The model a StartAsyncInvoke id names.
    fn model(id: &str) -> &'static Model {
        catalog::asynchronous(id).unwrap_or_else(|| panic!("{id} has no async route"))
    }

    #[test]
    fn refuses_inline_media_and_missing_segmentation() {
        let inline = json!({"taskType": "SEGMENTED_EMBEDDING", "segmentedEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 1024,
            "video": {"format": "mp4", "embeddingMode": "AUDIO_VIDEO_COMBINED",
                      "segmentationConfig": {"durationSeconds": 5}, "source": {"bytes": "AAAA"}}}});
        let e = check_input(model(NOVA), &inline).unwrap_err();
        assert!(e.message.contains("only S3"), "{}", e.message);
        let no_seg = json!({"taskType": "SEGMENTED_EMBEDDING", "segmentedEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX",
            "audio": {"format": "wav", "source": {"s3Location": {"uri": "s3://b/a.wav"}}}}});
        let e = check_input(model(NOVA), &no_seg).unwrap_err();
        assert!(e.message.contains("segmentationConfig"), "{}", e.message);
    }

    #[test]
    fn purposes_and_dimensions_come_from_the_catalog() {
        let nova = |purpose: &str, dim: u64| {
            json!({"taskType": "SEGMENTED_EMBEDDING", "segmentedEmbeddingParams": {
                "embeddingPurpose": purpose, "embeddingDimension": dim,
                "audio": {"format": "wav", "source": {"s3Location": {"uri": "s3://b/a.wav"}},
                          "segmentationConfig": {"durationSeconds": 5}}}})
        };
        let t = check_input(model(NOVA), &nova("GENERIC_INDEX", 384)).unwrap();
        assert_eq!(t.dimension, 384);
        let e = check_input(model(NOVA), &nova("INDEX", 384)).unwrap_err();
        assert!(
            e.message.contains("embeddingPurpose INDEX"),
            "{}",
            e.message
        );
        assert!(check_input(model(NOVA), &nova("GENERIC_INDEX", 512)).is_err());
        let video = json!({"inputType": "video",
            "video": {"mediaSource": {"s3Location": {"uri": "s3://b/v.mp4"}}}});
        assert_eq!(
            check_input(model(MARENGO_30), &video).unwrap().dimension,
            512
        );
    }
}
