//! Running a batch job, one tokio task per job: `Validating` (the input read from S3 and its
//! records counted against the limits), `Scheduled`, then `InProgress` until `batch_job_ms`
//! has passed since submission (the current setting, looked at every tick, with stop requests
//! and `batch_expire`), then the records answered and the output written. The task holds the
//! server's state weakly: a dropped emulator ends its jobs.

use super::records::{self, Record};
use super::{
    Counts, State, COMPLETED, EXPIRED, FAILED, IN_PROGRESS, PARTIALLY_COMPLETED, SCHEDULED,
    STOPPED, VALIDATING,
};
use crate::invoke::draw;
use crate::s3_client::{S3Client, S3Uri};
use crate::settings::Settings;
use std::sync::Weak;
use std::time::Duration;

/// How often a waiting job looks at the settings and for a stop request.
const TICK: Duration = Duration::from_millis(20);

/// The message of a job stopped by StopModelInvocationJob.
pub(super) const STOPPED_MESSAGE: &str = "The job was stopped by a user.";

/// How a job ended.
#[derive(Debug)]
pub(super) struct End {
    pub(super) status: &'static str,
    pub(super) message: Option<String>,
    pub(super) counts: Option<Counts>,
}

impl End {
    fn failed(message: impl Into<String>) -> Self {
        Self {
            status: FAILED,
            message: Some(message.into()),
            counts: None,
        }
    }

    /// Stopped by StopModelInvocationJob before its output was written: it writes none.
    fn stopped() -> Self {
        Self {
            status: STOPPED,
            message: Some(STOPPED_MESSAGE.into()),
            counts: None,
        }
    }

    fn expired() -> Self {
        Self {
            status: EXPIRED,
            message: Some("The job timed out before it could complete.".into()),
            counts: None,
        }
    }
}

/// Runs the job `arn` in the background; `doomed`: it took one of `batch_fail_jobs`.
pub(super) fn spawn(state: Weak<State>, arn: String, doomed: bool) {
    tokio::spawn(async move {
        if let Some(end) = run(&state, &arn, doomed).await {
            if let Some(state) = state.upgrade() {
                state.batch.finish(&arn, end);
            }
        }
    });
}

/// The current settings (`None`: the emulator is gone).
fn settings(state: &Weak<State>) -> Option<Settings> {
    Some(state.upgrade()?.settings.read().expect("settings").clone())
}

/// Moves the job to `status` (unless a stop is under way); `None`: the emulator is gone.
fn advance(state: &Weak<State>, arn: &str, status: &'static str) -> Option<()> {
    state.upgrade()?.batch.update(arn, |j| j.advance(status))
}

/// A stop request or `batch_expire` ends the job here. `None`: the emulator is gone.
fn interruption(state: &Weak<State>, arn: &str) -> Option<Option<End>> {
    let state = state.upgrade()?;
    let expire = state.settings.read().expect("settings").batch_expire;
    let stop = state.batch.update(arn, |j| j.stop_requested)?;
    Some(if stop {
        Some(End::stopped())
    } else if expire {
        Some(End::expired())
    } else {
        None
    })
}

/// The job's life; `None` when the emulator went away meanwhile.
async fn run(state: &Weak<State>, arn: &str, doomed: bool) -> Option<End> {
    let (started, request, id) = state.upgrade()?.batch.update(arn, |j| {
        j.advance(VALIDATING);
        (j.started, j.request.clone(), j.id.clone())
    })?;
    if let Some(end) = interruption(state, arn)? {
        return Some(end);
    }
    let config = settings(state)?;
    let Some(endpoint) = config.s3_endpoint.clone() else {
        return Some(End::failed(
            "the emulator has no S3 endpoint configured (s3_endpoint)",
        ));
    };
    let s3 = S3Client::connect(&endpoint, Duration::from_secs(60)).await;
    let files = match read_input(&s3, &request.input_uri).await {
        Ok(f) => f,
        Err(m) => return Some(End::failed(m)),
    };
    let files: Vec<(String, Vec<Record>)> = files
        .into_iter()
        .map(|(name, text)| (name, records::parse(&text)))
        .collect();
    let total: u64 = files.iter().map(|(_, r)| r.len() as u64).sum();
    if total < config.batch_min_records {
        return Some(End::failed(format!(
            "Batch job {arn} contains less records ({total}) than the required minimum of: {}",
            config.batch_min_records
        )));
    }
    if total > config.batch_max_records {
        return Some(End::failed(format!(
            "Batch job {arn} contains more records ({total}) than the allowed maximum of: {}",
            config.batch_max_records
        )));
    }
    state.upgrade()?.batch.update(arn, |j| {
        j.counts.total = total;
        j.advance(SCHEDULED);
    })?;
    loop {
        tokio::time::sleep(TICK).await;
        if let Some(end) = interruption(state, arn)? {
            return Some(end);
        }
        advance(state, arn, IN_PROGRESS)?;
        let due = Duration::from_millis(settings(state)?.batch_job_ms);
        if started.elapsed() >= due {
            break;
        }
    }
    let config = settings(state)?;
    if doomed {
        return Some(End::failed(
            "Internal error while running the batch inference job (injected: batch_fail_jobs).",
        ));
    }
    if draw(config.batch_job_failure) {
        return Some(End::failed(
            "Internal error while running the batch inference job (injected: batch_job_failure).",
        ));
    }
    let model = request.model;
    let (poison, failure) = (config.poison.clone(), config.batch_record_failure);
    let unprocessed = config.batch_unprocessed;
    let answered = tokio::task::spawn_blocking(move || {
        records::answer_all(model, &files, poison.as_deref(), (failure, unprocessed))
    })
    .await;
    let Ok((outputs, manifest)) = answered else {
        return Some(End::failed("Internal error while answering the records."));
    };
    // A stop (or expiry) that came while the records were answered: no output is written.
    if let Some(end) = interruption(state, arn)? {
        return Some(end);
    }
    let folder = match S3Uri::parse(&request.output_uri) {
        Ok(u) => u.join(&id),
        Err(e) => return Some(End::failed(e.to_string())),
    };
    let manifest_json = serde_json::to_vec(&manifest).expect("json");
    let writes = outputs.into_iter().chain(std::iter::once((
        "manifest.json.out".to_string(),
        manifest_json,
    )));
    for (name, body) in writes {
        if let Err(e) = s3.put_bytes(&folder.join(&name), body).await {
            return Some(End::failed(format!("Unable to write the output: {e:#}")));
        }
    }
    Some(End {
        status: match manifest.processed_record_count < manifest.total_record_count {
            true => PARTIALLY_COMPLETED,
            false => COMPLETED,
        },
        message: None,
        counts: Some(Counts {
            total: manifest.total_record_count,
            processed: manifest.processed_record_count,
            success: manifest.success_record_count,
            errors: manifest.error_record_count,
        }),
    })
}

/// The input's JSONL files, as (output name without `.out`, text): the object the URI names,
/// or every `.jsonl` object under it as a folder (names relative to it).
async fn read_input(s3: &S3Client, uri: &str) -> Result<Vec<(String, String)>, String> {
    let input = S3Uri::parse(uri).map_err(|e| e.to_string())?;
    let unreadable = |e: anyhow::Error| format!("Unable to read the input {uri}: {e:#}");
    let keys = s3.list(&input).await.map_err(unreadable)?;
    let named: Vec<(String, String)> = if !input.key.is_empty() && keys.contains(&input.key) {
        let name = input.key.rsplit('/').next().unwrap_or_default().to_string();
        if !name.ends_with(".jsonl") {
            return Err(format!("The input file {uri} is not a .jsonl file."));
        }
        vec![(input.key.clone(), name)]
    } else {
        let prefix = if input.key.is_empty() || input.key.ends_with('/') {
            input.key.clone()
        } else {
            format!("{}/", input.key)
        };
        keys.into_iter()
            .filter(|k| k.starts_with(&prefix) && k.ends_with(".jsonl"))
            .map(|k| (k.clone(), k[prefix.len()..].to_string()))
            .collect()
    };
    if named.is_empty() {
        return Err(format!("No .jsonl input files were found at {uri}."));
    }
    let mut files = Vec::with_capacity(named.len());
    for (key, name) in named {
        let object = S3Uri {
            bucket: input.bucket.clone(),
            key,
        };
        let bytes = s3.get(&object).await.map_err(unreadable)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("The input file {object} is not UTF-8 text."))?;
        files.push((name, text));
    }
    Ok(files)
}
