//! The emulator's batch inference (Bedrock's control plane, signing name `bedrock`):
//! `POST /model-invocation-job` (CreateModelInvocationJob), `GET /model-invocation-job/{id}`
//! (GetModelInvocationJob), `GET /model-invocation-jobs` (ListModelInvocationJobs) and
//! `POST /model-invocation-job/{id}/stop` (StopModelInvocationJob), for the embedding models
//! AWS runs batch jobs for (the catalog's `batch` rows: Titan Text v2, Nova 2).
//!
//! A job reads JSONL records from the S3 server (`Settings::s3_endpoint`), answers each
//! record's `modelInput` as InvokeModel would, and writes `<input file>.out` (lines shuffled:
//! AWS keeps no order) and `manifest.json.out` under `<output s3Uri>/<job id>/`, once
//! `batch_job_ms` has passed. A record the model refuses is an error line, not a failed job.
//! `clientRequestToken` makes a create idempotent: the same token and request answer the same
//! ARN (counted as a duplicate), a different request a ConflictException.
//!
//! This module is the jobs' bookkeeping and the four operations; what a create body may hold
//! is in `request`, running a job in `run`, reading and answering records in `records`.

mod records;
mod request;
mod run;

use crate::server::{percent_decode, State};
use crate::wire::{api, validation, ApiError};
use request::CreateRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const ACCOUNT: &str = "123456789012";

// `ModelInvocationJobStatus` (aws-sdk-bedrock).
const SUBMITTED: &str = "Submitted";
const VALIDATING: &str = "Validating";
const SCHEDULED: &str = "Scheduled";
const IN_PROGRESS: &str = "InProgress";
const COMPLETED: &str = "Completed";
const PARTIALLY_COMPLETED: &str = "PartiallyCompleted";
const FAILED: &str = "Failed";
const STOPPING: &str = "Stopping";
const STOPPED: &str = "Stopped";
const EXPIRED: &str = "Expired";

const STATUSES: &[&str] = &[
    SUBMITTED,
    VALIDATING,
    SCHEDULED,
    IN_PROGRESS,
    COMPLETED,
    PARTIALLY_COMPLETED,
    FAILED,
    STOPPING,
    STOPPED,
    EXPIRED,
];

/// A job in one of these statuses has ended (Stopping has not: the job still counts against
/// the quota until it is Stopped).
fn ended(status: &str) -> bool {
    matches!(
        status,
        COMPLETED | PARTIALLY_COMPLETED | FAILED | STOPPED | EXPIRED
    )
}

/// The timeout a job without `timeoutDurationInHours` gets (AWS's default is not documented).
const DEFAULT_TIMEOUT_HOURS: i64 = 24;

/// What the batch side received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchCounters {
    /// CreateModelInvocationJob calls (accepted, duplicate or refused).
    pub creates: u64,
    /// Jobs created (a duplicate create creates none).
    pub jobs: u64,
    /// Creates answered with an existing job's ARN (same token and request).
    pub duplicate_creates: u64,
    pub gets: u64,
    pub lists: u64,
    pub stops: u64,
    /// Records answered by jobs that completed, and of those the error lines.
    pub records: u64,
    pub record_errors: u64,
    /// Jobs by the status they ended in.
    pub jobs_by_status: BTreeMap<String, u64>,
    /// Creates by `clientRequestToken` (refused ones too, once their body was JSON).
    pub tokens: BTreeMap<String, u64>,
    /// Jobs created per input S3 URI.
    pub jobs_by_input: BTreeMap<String, u64>,
    /// Refusals by error code, over the four operations.
    pub errors: BTreeMap<String, u64>,
}

/// A job's record counts, as Get and List report them (0 until known).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) processed: u64,
    pub(crate) success: u64,
    pub(crate) errors: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    arn: String,
    /// The ARN's last part: 12 lowercase letters and digits.
    id: String,
    request: CreateRequest,
    status: &'static str,
    message: Option<String>,
    submitted: SystemTime,
    /// When it was submitted, on the clock `batch_job_ms` is measured with.
    started: Instant,
    modified: SystemTime,
    ended: Option<SystemTime>,
    counts: Counts,
    /// StopModelInvocationJob was called: the job is Stopping.
    stop_requested: bool,
}

impl Job {
    /// Moves to `status` as the job runs (a stop under way keeps it Stopping).
    fn advance(&mut self, status: &'static str) {
        if !self.stop_requested && self.status != status && !ended(self.status) {
            self.status = status;
            self.modified = SystemTime::now();
        }
    }
}

/// Every job since the emulator started (reset clears the counters, not the jobs), and the
/// counters.
#[derive(Default)]
pub(crate) struct Batch {
    jobs: Mutex<Vec<Job>>,
    counters: Mutex<BatchCounters>,
}

impl Batch {
    pub(crate) fn counters(&self) -> BatchCounters {
        self.counters.lock().expect("counters").clone()
    }

    pub(crate) fn reset_counters(&self) {
        *self.counters.lock().expect("counters") = BatchCounters::default();
    }

    fn count(&self, f: impl FnOnce(&mut BatchCounters)) {
        f(&mut self.counters.lock().expect("counters"));
    }

    fn refuse<T>(&self, e: ApiError) -> Result<T, ApiError> {
        self.count(|c| *c.errors.entry(e.code.to_string()).or_default() += 1);
        Err(e)
    }

    /// Runs `f` on the job `arn` (`None`: no such job).
    fn update<R>(&self, arn: &str, f: impl FnOnce(&mut Job) -> R) -> Option<R> {
        let mut jobs = self.jobs.lock().expect("jobs");
        jobs.iter_mut().find(|j| j.arn == arn).map(f)
    }

    /// Records how a job ended. A job asked to stop ends Stopped whatever its task reached
    /// (a stop that came while the output was being written leaves what was written).
    fn finish(&self, arn: &str, end: run::End) {
        let ended = self.update(arn, |j| {
            let now = SystemTime::now();
            if j.stop_requested {
                j.status = STOPPED;
                j.message = Some(run::STOPPED_MESSAGE.to_string());
            } else {
                j.status = end.status;
                j.message = end.message;
            }
            j.modified = now;
            j.ended = Some(now);
            if let Some(c) = end.counts {
                j.counts = c;
            }
            j.status
        });
        if let Some(status) = ended {
            self.count(|c| {
                *c.jobs_by_status.entry(status.to_string()).or_default() += 1;
                if let Some(n) = end.counts {
                    c.records += n.processed;
                    c.record_errors += n.errors;
                }
            });
        }
    }
}

fn time(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// A job as Get answers it, and as List's summaries show it (the same fields).
fn describe(j: &Job) -> Value {
    let r = &j.request;
    let hours = r.timeout_hours.unwrap_or(DEFAULT_TIMEOUT_HOURS);
    let expires = j.submitted + Duration::from_secs(hours as u64 * 3600);
    let mut v = json!({
        "jobArn": j.arn,
        "jobName": r.name,
        "modelId": r.model_id,
        "roleArn": r.role_arn,
        "status": j.status,
        "submitTime": time(j.submitted),
        "lastModifiedTime": time(j.modified),
        "inputDataConfig": r.input_config,
        "outputDataConfig": r.output_config,
        "timeoutDurationInHours": hours,
        "jobExpirationTime": time(expires),
        "totalRecordCount": j.counts.total,
        "processedRecordCount": j.counts.processed,
        "successRecordCount": j.counts.success,
        "errorRecordCount": j.counts.errors,
    });
    if let Some(t) = &r.token {
        v["clientRequestToken"] = json!(t);
    }
    if let Some(m) = &j.message {
        v["message"] = json!(m);
    }
    if let Some(e) = j.ended {
        v["endTime"] = json!(time(e));
    }
    if let Some(vpc) = &r.vpc {
        v["vpcConfig"] = vpc.clone();
    }
    if let Some(t) = &r.invocation_type {
        v["modelInvocationType"] = json!(t);
    }
    v
}

/// `POST /model-invocation-job`, `GET /model-invocation-jobs`,
/// `GET /model-invocation-job/{jobIdentifier}`, `POST /model-invocation-job/{jobIdentifier}/stop`.
pub(crate) fn handle(
    state: &Arc<State>,
    method: &hyper::Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    region: &str,
) -> Result<Value, ApiError> {
    let batch = &state.batch;
    // `{jobIdentifier}` is percent-encoded: a `/` in the path is the path's own.
    let tail = path.strip_prefix("/model-invocation-job/");
    let get_id = tail.filter(|t| !t.contains('/'));
    let stop_id = tail
        .and_then(|t| t.strip_suffix("/stop"))
        .filter(|id| !id.contains('/'));
    match (method.as_str(), path, get_id, stop_id) {
        ("POST", "/model-invocation-job", ..) => create(state, body, region),
        ("GET", "/model-invocation-jobs", ..) => {
            batch.count(|c| c.lists += 1);
            list(batch, query).or_else(|e| batch.refuse(e))
        }
        ("GET", _, Some(id), _) => {
            batch.count(|c| c.gets += 1);
            get(batch, id).or_else(|e| batch.refuse(e))
        }
        ("POST", _, _, Some(id)) => {
            batch.count(|c| c.stops += 1);
            stop(batch, id).or_else(|e| batch.refuse(e))
        }
        _ => batch.refuse(api(
            "UnknownOperationException",
            404,
            format!("no such operation: {method} {path}"),
        )),
    }
}

fn create(state: &Arc<State>, body: &[u8], region: &str) -> Result<Value, ApiError> {
    let batch = &state.batch;
    batch.count(|c| c.creates += 1);
    let token = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["clientRequestToken"].as_str().map(String::from));
    if let Some(t) = token {
        batch.count(|c| *c.tokens.entry(t).or_default() += 1);
    }
    let request = request::parse(body).or_else(|e| batch.refuse(e))?;
    let limit = state
        .settings
        .read()
        .expect("settings")
        .batch_max_jobs_in_progress;
    let arn = {
        let mut jobs = batch.jobs.lock().expect("jobs");
        if let Some(t) = &request.token {
            if let Some(j) = jobs.iter().find(|j| j.request.token.as_ref() == Some(t)) {
                if j.request.hash != request.hash {
                    drop(jobs);
                    return batch.refuse(api(
                        "ConflictException",
                        400,
                        "The clientRequestToken was already used with a different request.",
                    ));
                }
                let arn = j.arn.clone();
                drop(jobs);
                batch.count(|c| c.duplicate_creates += 1);
                return Ok(json!({ "jobArn": arn }));
            }
        }
        let model = request.model.id;
        let unfinished = jobs
            .iter()
            .filter(|j| j.request.model.id == model && !ended(j.status))
            .count() as u64;
        if unfinished >= limit {
            drop(jobs);
            return batch.refuse(api(
                "ServiceQuotaExceededException",
                400,
                format!(
                    "You have reached the quota of {limit} batch inference jobs in progress for the model {model}. Wait for a job to end, or request a quota increase."
                ),
            ));
        }
        let job = new_job(region, request);
        let arn = job.arn.clone();
        batch.count(|c| {
            c.jobs += 1;
            *c.jobs_by_input
                .entry(job.request.input_uri.clone())
                .or_default() += 1;
        });
        jobs.push(job);
        arn
    };
    // The next `batch_fail_jobs` jobs fail: this one takes a slot if one is left.
    let doomed = {
        let mut s = state.settings.write().expect("settings");
        let take = s.batch_fail_jobs > 0;
        if take {
            s.batch_fail_jobs -= 1;
        }
        take
    };
    run::spawn(Arc::downgrade(state), arn.clone(), doomed);
    Ok(json!({ "jobArn": arn }))
}

/// A job just submitted, with a fresh ARN.
fn new_job(region: &str, request: CreateRequest) -> Job {
    let id: String = (0..12)
        .map(|_| char::from_digit(fastrand::u32(0..36), 36).expect("digit"))
        .collect();
    let now = SystemTime::now();
    Job {
        arn: format!("arn:aws:bedrock:{region}:{ACCOUNT}:model-invocation-job/{id}"),
        id,
        request,
        status: SUBMITTED,
        message: None,
        submitted: now,
        started: Instant::now(),
        modified: now,
        ended: None,
        counts: Counts::default(),
        stop_requested: false,
    }
}

/// A `jobIdentifier` (percent-encoded in the path): a job's ARN or its bare id, as the
/// service's pattern allows.
fn identifier(raw: &str) -> Result<String, ApiError> {
    let id = percent_decode(raw);
    let bare = |s: &str| {
        s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let arn_ok = id
        .split_once(":model-invocation-job/")
        .is_some_and(|(head, tail)| {
            let parts: Vec<&str> = head.split(':').collect();
            parts.len() == 5
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "bedrock"
                && !parts[3].is_empty()
                && parts[4].len() == 12
                && parts[4].bytes().all(|b| b.is_ascii_digit())
                && bare(tail)
        });
    if bare(&id) || arn_ok {
        Ok(id)
    } else {
        Err(validation(format!(
            "1 validation error detected: Value '{id}' at 'jobIdentifier' failed to satisfy constraint: Member must satisfy regular expression pattern: ^((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{{1,20}}:[0-9]{{12}}:model-invocation-job/)?[a-z0-9]{{12}})$"
        )))
    }
}

fn not_found(id: &str) -> ApiError {
    api(
        "ResourceNotFoundException",
        404,
        format!("The model invocation job {id} could not be found."),
    )
}

/// Runs `f` on the job an identifier names.
fn with_job<R>(batch: &Batch, raw: &str, f: impl FnOnce(&mut Job) -> R) -> Result<R, ApiError> {
    let id = identifier(raw)?;
    let mut jobs = batch.jobs.lock().expect("jobs");
    match jobs.iter_mut().find(|j| j.arn == id || j.id == id) {
        Some(j) => Ok(f(j)),
        None => Err(not_found(&id)),
    }
}

fn get(batch: &Batch, raw: &str) -> Result<Value, ApiError> {
    with_job(batch, raw, |j| describe(j))
}

/// Asks a job to stop: it is Stopping until its task notices (a tick), then Stopped.
fn stop(batch: &Batch, raw: &str) -> Result<Value, ApiError> {
    with_job(batch, raw, |j| {
        if ended(j.status) {
            return Err(validation(format!(
                "The job {} has already ended ({}) and cannot be stopped.",
                j.arn, j.status
            )));
        }
        if !j.stop_requested {
            j.stop_requested = true;
            j.status = STOPPING;
            j.modified = SystemTime::now();
        }
        Ok(json!({}))
    })?
}

/// A query timestamp (the SDK writes RFC 3339).
fn query_time(s: &str, at: &str) -> Result<SystemTime, ApiError> {
    aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime)
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
        .ok_or_else(|| validation(format!("{at}: '{s}' is not a date-time (RFC 3339)")))
}

/// `GET /model-invocation-jobs`: filtered, sorted by submission (newest first unless
/// `sortOrder=Ascending`), paginated; `nextToken` is the id of a page's last job.
fn list(batch: &Batch, query: Option<&str>) -> Result<Value, ApiError> {
    let params: HashMap<String, String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(&v.replace('+', " "))))
        .collect();
    let max: usize = match params.get("maxResults") {
        None => 1000,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(validation(format!(
                    "1 validation error detected: Value '{m}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 1000"
                )))
            }
        },
    };
    if let Some(s) = params.get("statusEquals") {
        if !STATUSES.contains(&s.as_str()) {
            return Err(validation(format!(
                "1 validation error detected: Value '{s}' at 'statusEquals' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                STATUSES.join(", ")
            )));
        }
    }
    if let Some(s) = params.get("sortBy").filter(|s| *s != "CreationTime") {
        return Err(validation(format!(
            "1 validation error detected: Value '{s}' at 'sortBy' failed to satisfy constraint: Member must satisfy enum value set: [CreationTime]"
        )));
    }
    let ascending = match params.get("sortOrder").map(String::as_str) {
        None | Some("Descending") => false,
        Some("Ascending") => true,
        Some(s) => {
            return Err(validation(format!(
                "1 validation error detected: Value '{s}' at 'sortOrder' failed to satisfy constraint: Member must satisfy enum value set: [Ascending, Descending]"
            )))
        }
    };
    let after = params
        .get("submitTimeAfter")
        .map(|s| query_time(s, "submitTimeAfter"))
        .transpose()?;
    let before = params
        .get("submitTimeBefore")
        .map(|s| query_time(s, "submitTimeBefore"))
        .transpose()?;
    let jobs = batch.jobs.lock().expect("jobs");
    let mut matching: Vec<&Job> = jobs
        .iter()
        .filter(|j| params.get("statusEquals").is_none_or(|s| s == j.status))
        .filter(|j| {
            params
                .get("nameContains")
                .is_none_or(|n| j.request.name.contains(n.as_str()))
        })
        .filter(|j| after.is_none_or(|t| j.submitted > t))
        .filter(|j| before.is_none_or(|t| j.submitted < t))
        .collect();
    // Jobs are kept in submission order.
    if !ascending {
        matching.reverse();
    }
    let start = match params.get("nextToken") {
        None => 0,
        Some(t) => match matching.iter().position(|j| &j.id == t) {
            Some(i) => i + 1,
            None => return Err(validation("The nextToken is invalid or has expired.")),
        },
    };
    let page: Vec<&Job> = matching.iter().skip(start).take(max).copied().collect();
    let mut v =
        json!({ "invocationJobSummaries": page.iter().map(|j| describe(j)).collect::<Vec<_>>() });
    if start + page.len() < matching.len() {
        if let Some(last) = page.last() {
            v["nextToken"] = json!(last.id);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(identifier("abcdef012345").unwrap(), "abcdef012345");
        let arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdef012345";
        let encoded = arn.replace(':', "%3A").replace('/', "%2F");
        assert_eq!(identifier(&encoded).unwrap(), arn);
        assert!(identifier("ABCDEF012345").is_err());
        assert!(identifier("abc").is_err());
        assert!(
            identifier("arn:aws:bedrock:us-east-1:123:model-invocation-job/abcdef012345").is_err()
        );
    }

    #[test]
    fn statuses() {
        assert!(!ended(STOPPING));
        assert!(ended(EXPIRED) && ended(PARTIALLY_COMPLETED));
        assert_eq!(STATUSES.len(), 10);
    }
}
