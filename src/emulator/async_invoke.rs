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

use super::catalog::{self, Family};
use super::{api, vectors, wire, ApiError, Settings};
use crate::providers::bedrock::Connection;
use crate::providers::s3::{S3Uri, S3};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
struct Job {
    arn: String,
    model_id: String,
    token: Option<String>,
    body_hash: u64,
    status: &'static str,
    failure: Option<String>,
    submitted: SystemTime,
    modified: SystemTime,
    ended: Option<SystemTime>,
    output: String,
}

#[derive(Default)]
pub(super) struct Jobs {
    jobs: Mutex<Vec<Job>>,
    pub(super) counters: Mutex<AsyncCounters>,
}

impl Jobs {
    pub(super) fn reset_counters(&self) {
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

/// What a job must do, checked at submit.
#[derive(Debug, Clone)]
struct Task {
    family: Family,
    input_uri: String,
    modality: &'static str,
    dimension: usize,
    /// Segment length (seconds); `None`: the family's own splitting.
    segment: Option<f64>,
    /// Nova video `AUDIO_VIDEO_SEPARATE`.
    separate: bool,
    /// Marengo embedding options.
    options: Vec<String>,
}

/// `GET|POST /async-invoke[/{arn}]`.
pub(super) async fn handle(
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
            let arn = super::percent_decode(arn);
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
        .map(|(k, v)| (k.to_string(), super::percent_decode(v)))
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
    let task = match check_input(model.family, &req["modelInput"]) {
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
        let id: String = (0..12)
            .map(|_| {
                let c = fastrand::u8(0..36);
                char::from_digit(c as u32, 36).expect("digit")
            })
            .collect();
        let now = SystemTime::now();
        let job = Job {
            arn: format!("arn:aws:bedrock:{region}:{ACCOUNT}:async-invoke/{id}"),
            model_id: model_id.clone(),
            token,
            body_hash,
            status: "InProgress",
            failure: None,
            submitted: now,
            modified: now,
            ended: None,
            output: output.clone(),
        };
        all.push(job.clone());
        job
    };
    {
        let mut c = jobs.counters.lock().expect("counters");
        c.jobs += 1;
        *c.jobs_by_input.entry(task.input_uri.clone()).or_default() += 1;
    }
    let jobs2 = jobs.clone();
    let settings = settings.clone();
    let arn = job.arn.clone();
    tokio::spawn(async move {
        let result = run_job(&settings, &job, &task).await;
        let mut all = jobs2.jobs.lock().expect("jobs");
        if let Some(j) = all.iter_mut().find(|j| j.arn == job.arn) {
            let now = SystemTime::now();
            j.modified = now;
            j.ended = Some(now);
            let mut c = jobs2.counters.lock().expect("counters");
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
    Ok(json!({ "invocationArn": arn }))
}

/// JSON with object keys sorted at every level.
fn canonical(v: &Value) -> String {
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

fn s3_location(v: &Value, what: &str) -> Result<String, ApiError> {
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

fn check_input(family: Family, input: &Value) -> Result<Task, ApiError> {
    match family {
        Family::Nova2 => {
            if input["taskType"] != "SEGMENTED_EMBEDDING" {
                return Err(wire::validation(
                    "taskType must be SEGMENTED_EMBEDDING for async invoke",
                ));
            }
            let p = &input["segmentedEmbeddingParams"];
            let dims = family.dimensions();
            let dimension = p["embeddingDimension"]
                .as_u64()
                .map_or(dims[0], |d| d as usize);
            if !dims.contains(&dimension) {
                return Err(wire::validation(
                    "embeddingDimension must be 256, 384, 1024 or 3072",
                ));
            }
            match p["embeddingPurpose"].as_str() {
                None => return Err(wire::validation("embeddingPurpose is required")),
                Some(purpose) if !catalog::NOVA_PURPOSES.contains(&purpose) => {
                    return Err(wire::validation(format!(
                        "embeddingPurpose {purpose} is not one of {}",
                        catalog::NOVA_PURPOSES.join(", ")
                    )))
                }
                Some(_) => {}
            }
            let (modality, m) = ["video", "audio", "text"]
                .into_iter()
                .find_map(|k| p.get(k).map(|m| (k, m)))
                .ok_or_else(|| wire::validation("one of video, audio or text is required"))?;
            if modality == "text" {
                if !matches!(m["truncationMode"].as_str(), Some("START" | "END" | "NONE")) {
                    return Err(wire::validation(
                        "text.truncationMode must be START, END or NONE",
                    ));
                }
                let Some(seg) = m.get("segmentationConfig") else {
                    return Err(wire::validation("text.segmentationConfig is required"));
                };
                let chars = seg["maxLengthChars"].as_u64().unwrap_or(32_000);
                if !(800..=50_000).contains(&chars) {
                    return Err(wire::validation(
                        "maxLengthChars must be between 800 and 50000",
                    ));
                }
                return Ok(Task {
                    family,
                    input_uri: s3_location(&m["source"], "text.source")?,
                    modality,
                    dimension,
                    segment: Some(chars as f64),
                    separate: false,
                    options: Vec::new(),
                });
            }
            let formats: &[&str] = if modality == "video" {
                &[
                    "mp4", "mov", "mkv", "webm", "flv", "mpeg", "mpg", "wmv", "3gp",
                ]
            } else {
                &["mp3", "wav", "ogg"]
            };
            if !m["format"].as_str().is_some_and(|f| formats.contains(&f)) {
                return Err(wire::validation(format!(
                    "{modality}.format must be one of {}",
                    formats.join(", ")
                )));
            }
            let Some(seg) = m.get("segmentationConfig") else {
                return Err(wire::validation(format!(
                    "{modality}.segmentationConfig is required"
                )));
            };
            let secs = seg["durationSeconds"].as_u64().unwrap_or(5);
            if !(1..=30).contains(&secs) {
                return Err(wire::validation("durationSeconds must be between 1 and 30"));
            }
            let separate = if modality == "video" {
                match m["embeddingMode"].as_str() {
                    Some("AUDIO_VIDEO_COMBINED") => false,
                    Some("AUDIO_VIDEO_SEPARATE") => true,
                    _ => return Err(wire::validation(
                        "video.embeddingMode must be AUDIO_VIDEO_COMBINED or AUDIO_VIDEO_SEPARATE",
                    )),
                }
            } else {
                false
            };
            Ok(Task {
                family,
                input_uri: s3_location(&m["source"], &format!("{modality}.source"))?,
                modality,
                dimension,
                segment: Some(secs as f64),
                separate,
                options: Vec::new(),
            })
        }
        Family::Marengo27 => {
            let modality = match input["inputType"].as_str() {
                Some("video") => "video",
                Some("audio") => "audio",
                _ => {
                    return Err(wire::validation(
                        "inputType must be video or audio for this emulator's async invoke",
                    ))
                }
            };
            let fixed = input.get("useFixedLengthSec").and_then(Value::as_f64);
            if fixed.is_some_and(|f| !(2.0..=10.0).contains(&f)) {
                return Err(wire::validation(
                    "useFixedLengthSec must be between 2 and 10",
                ));
            }
            let valid = ["visual-text", "visual-image", "audio"];
            let options = string_list(&input["embeddingOption"], &valid, "embeddingOption")?;
            no_visual_for_audio(modality, &options)?;
            Ok(Task {
                family,
                input_uri: s3_location(&input["mediaSource"], "mediaSource")?,
                modality,
                dimension: family.dimensions()[0],
                segment: fixed,
                separate: false,
                options: if options.is_empty() {
                    if modality == "audio" {
                        vec!["audio".into()]
                    } else {
                        valid.iter().map(|s| s.to_string()).collect()
                    }
                } else {
                    options
                },
            })
        }
        Family::Marengo30 => {
            let modality = match input["inputType"].as_str() {
                Some("video") => "video",
                Some("audio") => "audio",
                _ => {
                    return Err(wire::validation(
                        "inputType must be video or audio for this emulator's async invoke",
                    ))
                }
            };
            let m = &input[modality];
            for k in [
                "textTruncate",
                "lengthSec",
                "useFixedLengthSec",
                "minClipSec",
            ] {
                if m.get(k).is_some() || input.get(k).is_some() {
                    return Err(wire::validation(format!(
                        "Marengo 3.0 does not accept the Marengo 2.7 parameter {k}"
                    )));
                }
            }
            let segment = match m["segmentation"]["method"].as_str() {
                Some("fixed") => m["segmentation"]["fixed"]["durationSec"].as_f64(),
                _ => None,
            };
            let valid = ["visual", "audio", "transcription"];
            let options = string_list(&m["embeddingOption"], &valid, "embeddingOption")?;
            no_visual_for_audio(modality, &options)?;
            Ok(Task {
                family,
                input_uri: s3_location(&m["mediaSource"], &format!("{modality}.mediaSource"))?,
                modality,
                dimension: family.dimensions()[0],
                segment,
                separate: false,
                options: if options.is_empty() {
                    if modality == "audio" {
                        vec!["audio".into()]
                    } else {
                        vec!["visual".into(), "audio".into()]
                    }
                } else {
                    options
                },
            })
        }
        _ => Err(wire::validation(
            "The provided model doesn't support async inference.",
        )),
    }
}

/// Visual embeddings of an audio file are refused, as the service does.
fn no_visual_for_audio(modality: &str, options: &[String]) -> Result<(), ApiError> {
    match options.iter().find(|o| o.starts_with("visual")) {
        Some(o) if modality == "audio" => Err(wire::validation(format!(
            "embeddingOption {o} needs video; audio inputs take audio embeddings only"
        ))),
        _ => Ok(()),
    }
}

fn string_list(v: &Value, valid: &[&str], what: &str) -> Result<Vec<String>, ApiError> {
    let Some(a) = v.as_array() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(wire::validation(format!("{what} must be a list")))
        };
    };
    a.iter()
        .map(|x| match x.as_str() {
            Some(s) if valid.contains(&s) => Ok(s.to_string()),
            _ => Err(wire::validation(format!(
                "{what} values must be among {}",
                valid.join(", ")
            ))),
        })
        .collect()
}

/// Waits the job's duration, reads the input, writes the results; `Err` is the failure message.
async fn run_job(settings: &Settings, job: &Job, task: &Task) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(settings.async_job_ms)).await;
    let Some(endpoint) = &settings.s3_endpoint else {
        return Err("the emulator has no S3 endpoint configured (s3_endpoint)".into());
    };
    let conn = Connection {
        emulator_credentials: true,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let s3 = S3::connect(&conn, Some(endpoint))
        .await
        .map_err(|e| format!("internal error: {e:#}"))?;
    let input = S3Uri::parse(&task.input_uri).map_err(|e| e.to_string())?;
    let media = s3.get(&input).await.map_err(|_| {
        format!(
            "Unable to access the input {}: the object does not exist or is not readable.",
            task.input_uri
        )
    })?;
    // Test markers, in the key or at the end of the file.
    let marked = |m: &str| task.input_uri.contains(m) || media.ends_with(m.as_bytes());
    if marked("stall") {
        std::future::pending::<()>().await;
    }
    if marked("poison") {
        return Err("The media could not be processed: INVALID_CONTENT".into());
    }
    if settings.async_failure_rate > 0.0 && fastrand::f64() < settings.async_failure_rate {
        return Err("Internal error while processing the job (injected failure).".into());
    }
    let duration = if task.modality == "text" {
        0.0
    } else {
        media_seconds(&media).ok_or_else(|| {
            format!(
                "The input {} is not a supported {} file.",
                task.input_uri, task.modality
            )
        })?
    };
    let id = job.arn.rsplit('/').next().expect("arn");
    let folder = S3Uri::parse(&job.output)
        .map_err(|e| e.to_string())?
        .join(id);
    let files = results(task, &job.model_id, &media, duration, &job.output, &folder);
    for (uri, body) in files {
        s3.put_bytes(&uri, body)
            .await
            .map_err(|e| format!("Unable to write results: {e:#}"))?;
    }
    Ok(())
}

/// Text segments of at most `max` characters, cut at whitespace where there is one:
/// (start, end) character positions, end exclusive.
fn text_segments(text: &str, max: usize) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + max).min(chars.len());
        if end < chars.len() {
            if let Some(ws) = (start + 1..end).rev().find(|&i| chars[i].is_whitespace()) {
                end = ws + 1;
            }
        }
        out.push((start, end));
        start = end;
    }
    out
}

/// Segment bounds: fixed lengths (the last one shorter), over the whole duration.
fn segments(duration: f64, len: f64) -> Vec<(f64, f64)> {
    let n = (duration / len).ceil().max(1.0) as usize;
    (0..n)
        .map(|i| (i as f64 * len, ((i + 1) as f64 * len).min(duration)))
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The result files of a finished job.
fn results(
    task: &Task,
    model: &str,
    media: &[u8],
    duration: f64,
    output: &str,
    folder: &S3Uri,
) -> Vec<(S3Uri, Vec<u8>)> {
    let vector = |kind: &str, i: usize| {
        let mut seed = media[..media.len().min(4096)].to_vec();
        seed.extend_from_slice(format!("{kind}#{i}").as_bytes());
        vectors::bytes(model, &seed, task.dimension, false)
    };
    match task.family {
        Family::Nova2 if task.modality == "text" => {
            let text = String::from_utf8_lossy(media);
            let uri = folder.join("embedding-text.jsonl");
            let mut lines = String::new();
            for (i, (s, e)) in text_segments(&text, task.segment.unwrap_or(32_000.0) as usize)
                .into_iter()
                .enumerate()
            {
                let line = json!({
                    "embedding": vector("TEXT", i),
                    "segmentMetadata": {
                        "segmentIndex": i,
                        "segmentStartCharPosition": s,
                        "segmentEndCharPosition": e,
                    },
                    "status": "SUCCESS",
                });
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
            let result = json!({
                "sourceFileUri": task.input_uri,
                "embeddingDimension": task.dimension,
                "embeddingResults": [{
                    "embeddingType": "TEXT", "status": "SUCCESS", "outputFileUri": uri.to_string(),
                }],
            });
            vec![
                (uri, lines.into_bytes()),
                (
                    folder.join("segmented-embedding-result.json"),
                    result.to_string().into_bytes(),
                ),
            ]
        }
        Family::Nova2 => {
            let kinds: &[&str] = match (task.modality, task.separate) {
                ("video", false) => &["AUDIO_VIDEO_COMBINED"],
                ("video", true) => &["VIDEO", "AUDIO"],
                _ => &["AUDIO"],
            };
            let mut files = Vec::new();
            let mut entries = Vec::new();
            for kind in kinds {
                let name = match *kind {
                    "AUDIO" => "embedding-audio.jsonl",
                    _ => "embedding-video.jsonl",
                };
                let uri = folder.join(name);
                let mut lines = String::new();
                for (i, (s, e)) in segments(duration, task.segment.unwrap_or(5.0))
                    .into_iter()
                    .enumerate()
                {
                    let line = json!({
                        "embedding": vector(kind, i),
                        "segmentMetadata": {
                            "segmentIndex": i,
                            "segmentStartSeconds": round3(s),
                            "segmentEndSeconds": round3(e),
                        },
                        "status": "SUCCESS",
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
                entries.push(json!({
                    "embeddingType": kind, "status": "SUCCESS", "outputFileUri": uri.to_string(),
                }));
                files.push((uri, lines.into_bytes()));
            }
            let result = json!({
                "sourceFileUri": task.input_uri,
                "embeddingDimension": task.dimension,
                "embeddingResults": entries,
            });
            files.push((
                folder.join("segmented-embedding-result.json"),
                result.to_string().into_bytes(),
            ));
            files.push((
                folder.join("manifest.json"),
                json!({"outputDataConfig": output}).to_string().into_bytes(),
            ));
            files
        }
        _ => {
            // Marengo: fixed segments when asked, else ~6 s shots for video, ~10 s for audio.
            let len = task
                .segment
                .unwrap_or(if task.modality == "video" { 6.0 } else { 10.0 });
            let mut data = Vec::new();
            for option in &task.options {
                for (i, (s, e)) in segments(duration, len).into_iter().enumerate() {
                    let mut item = json!({
                        "embedding": vector(option, i),
                        "embeddingOption": option,
                        "startSec": round3(s),
                        "endSec": round3(e),
                    });
                    if task.family == Family::Marengo30 {
                        item["embeddingScope"] = json!("clip");
                    }
                    data.push(item);
                }
            }
            vec![
                (
                    folder.join("output.json"),
                    json!({ "data": data }).to_string().into_bytes(),
                ),
                (
                    folder.join("manifest.json"),
                    json!({"outputDataConfig": output}).to_string().into_bytes(),
                ),
            ]
        }
    }
}

/// The duration of a WAV or MP4/MOV file, from its header.
pub fn media_seconds(b: &[u8]) -> Option<f64> {
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE" {
        return wav_seconds(b);
    }
    mp4_seconds(b)
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn wav_seconds(b: &[u8]) -> Option<f64> {
    let mut at = 12;
    let mut byte_rate = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32::from_le_bytes(b[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"fmt " {
            byte_rate = Some(u32::from_le_bytes(
                b.get(at + 16..at + 20)?.try_into().ok()?,
            ));
        } else if id == b"data" {
            let size = size.min(b.len() - at - 8);
            return Some(size as f64 / byte_rate? as f64);
        }
        at += 8 + size + (size & 1);
    }
    None
}

/// Walks the MP4 box tree to `moov/mvhd` and reads its timescale and duration.
fn mp4_seconds(b: &[u8]) -> Option<f64> {
    fn find(b: &[u8], path: &[&[u8]]) -> Option<usize> {
        let mut at = 0;
        while at + 8 <= b.len() {
            let mut size = u32_be(b, at)? as usize;
            let mut header = 8;
            if size == 1 {
                size = u64_be(b, at + 8)? as usize;
                header = 16;
            } else if size == 0 {
                size = b.len() - at;
            }
            if size < header {
                return None;
            }
            if &b[at + 4..at + 8] == path[0] {
                if path.len() == 1 {
                    return Some(at + header);
                }
                let inner = b.get(at + header..(at + size).min(b.len()))?;
                return find(inner, &path[1..]).map(|i| at + header + i);
            }
            at += size;
        }
        None
    }
    let mvhd = find(b, &[b"moov", b"mvhd"])?;
    let version = *b.get(mvhd)?;
    let (scale, duration) = if version == 1 {
        (u32_be(b, mvhd + 20)?, u64_be(b, mvhd + 24)?)
    } else {
        (u32_be(b, mvhd + 12)?, u32_be(b, mvhd + 16)? as u64)
    };
    (scale > 0).then(|| duration as f64 / scale as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sample_data/media")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn reads_durations_of_the_sample_media() {
        let v = media_seconds(&sample("city_tour.mp4")).unwrap();
        assert!((v - 12.0).abs() < 0.1, "{v}");
        let a = media_seconds(&sample("welcome.wav")).unwrap();
        assert!((a - 9.44).abs() < 0.05, "{a}");
        assert_eq!(media_seconds(b"not media"), None);
    }

    #[test]
    fn text_segments_cut_at_whitespace() {
        assert_eq!(text_segments("aaaa bbbb cccc", 10), vec![(0, 10), (10, 14)]);
        assert_eq!(
            text_segments("abcdefghij", 4),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert!(text_segments("", 5).is_empty());
    }

    #[test]
    fn fixed_segments_cover_the_duration() {
        assert_eq!(
            segments(12.0, 5.0),
            vec![(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
        );
        assert_eq!(segments(0.5, 5.0), vec![(0.0, 0.5)]);
    }

    #[test]
    fn refuses_inline_media_and_missing_segmentation() {
        let inline = json!({"taskType": "SEGMENTED_EMBEDDING", "segmentedEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 1024,
            "video": {"format": "mp4", "embeddingMode": "AUDIO_VIDEO_COMBINED",
                      "segmentationConfig": {"durationSeconds": 5}, "source": {"bytes": "AAAA"}}}});
        let e = check_input(Family::Nova2, &inline).unwrap_err();
        assert!(e.message.contains("only S3"), "{}", e.message);
        let no_seg = json!({"taskType": "SEGMENTED_EMBEDDING", "segmentedEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX",
            "audio": {"format": "wav", "source": {"s3Location": {"uri": "s3://b/a.wav"}}}}});
        let e = check_input(Family::Nova2, &no_seg).unwrap_err();
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
        let t = check_input(Family::Nova2, &nova("GENERIC_INDEX", 384)).unwrap();
        assert_eq!(t.dimension, 384);
        let e = check_input(Family::Nova2, &nova("INDEX", 384)).unwrap_err();
        assert!(
            e.message.contains("embeddingPurpose INDEX"),
            "{}",
            e.message
        );
        assert!(check_input(Family::Nova2, &nova("GENERIC_INDEX", 512)).is_err());
        let video = json!({"inputType": "video",
            "video": {"mediaSource": {"s3Location": {"uri": "s3://b/v.mp4"}}}});
        assert_eq!(
            check_input(Family::Marengo30, &video).unwrap().dimension,
            512
        );
    }
}
