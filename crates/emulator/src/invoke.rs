//! InvokeModel as the service runs it, in the service's order: authentication, the model id,
//! access, the body limit, injected faults, the family's reading of the body (or a replayed
//! answer), the quota, and the counters of every outcome. What the body must hold is the
//! families' business ([`crate::wire`]); this module is everything around it.

use crate::auth::authenticate;
use crate::catalog::{self, Called};
use crate::server::{error_response, json_response, Resp, State};
use crate::settings::{Faults, Settings};
use crate::stats::{Arrivals, ModelCounters};
use crate::wire::{self, api, ApiError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use std::time::{Duration, Instant};

/// Request bodies up to this size are answered on the runtime (see [`build_answer`]).
const INLINE_REQUEST_BYTES: usize = 1024;

/// Most request shapes `replay` keeps answers for.
const REPLAY_SHAPES: usize = 256;

/// An accepted request's answer.
#[derive(Clone)]
pub(crate) struct Answer {
    body: Bytes,
    inputs: u64,
    tokens: u64,
    input_type: Option<String>,
}

impl From<wire::Accepted> for Answer {
    fn from(a: wire::Accepted) -> Self {
        Self {
            body: Bytes::from(a.body),
            inputs: a.inputs,
            tokens: a.tokens,
            input_type: a.input_type,
        }
    }
}

/// A request's shape for `replay`: the model, then its body without the inputs' values (the
/// length of each input list stays).
fn shape(model_id: &str, body: &[u8]) -> Option<String> {
    let serde_json::Value::Object(mut o) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    for key in ["texts", "images", "inputs", "inputText", "inputImage"] {
        if let Some(v) = o.get_mut(key) {
            *v = match v {
                serde_json::Value::Array(a) => a.len().into(),
                _ => serde_json::Value::Null,
            };
        }
    }
    Some(format!("{model_id} {}", serde_json::Value::Object(o)))
}

/// `POST /model/{model_id}/invoke`: sets `latency` to hold the answer for once the request is
/// known to name a model.
pub(crate) async fn invoke_model(
    state: &State,
    req: Request<Incoming>,
    model_id: String,
    latency: &mut Duration,
) -> Result<Resp, std::io::Error> {
    let settings = state.settings.read().expect("settings").clone();
    let region = match authenticate(state, &req, &settings) {
        Ok(region) => region,
        Err(refusal) => return Ok(error_response(&refusal)),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let Some(called) = catalog::resolve(&model_id) else {
        return Ok(error_response(&wire::validation(
            "The provided model identifier is invalid.",
        )));
    };
    let base = called.model.id.to_string();
    let count = |f: &dyn Fn(&mut ModelCounters)| {
        let mut s = state.stats.lock().expect("stats");
        let c = s.models.entry(base.clone()).or_default();
        c.requests += 1;
        *c.regions.entry(region.clone()).or_default() += 1;
        f(c);
    };
    record_arrival(state, &base);
    *latency = settings.latency.sample();
    let fail = |code: &'static str| {
        move |c: &mut ModelCounters| *c.errors.entry(code.to_string()).or_default() += 1
    };
    if settings
        .denied_models
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&base) || d.eq_ignore_ascii_case(&model_id))
    {
        count(&fail("AccessDeniedException"));
        return Ok(error_response(&api(
            "AccessDeniedException",
            403,
            format!("You don't have access to the model with the specified model ID {model_id}."),
        )));
    }
    if body.len() > catalog::MAX_BODY_BYTES {
        count(&fail("ValidationException"));
        return Ok(error_response(&wire::validation(
            "Input is too long for requested model.",
        )));
    }
    match draw_fault(&settings.faults) {
        Some(Fault::Reset) => {
            count(&fail("ConnectionReset"));
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        Some(Fault::Refuse(e)) => {
            count(&fail(e.code));
            return Ok(error_response(&e));
        }
        None => {}
    }
    let accepted = match build_answer(state, &settings, &model_id, called, body).await? {
        Ok(a) => a,
        Err(e) => {
            count(&fail(e.code));
            return Ok(error_response(&e));
        }
    };
    let Some((rpm, tpm, rps)) = take_quota(state, &settings, &base, accepted.tokens) else {
        count(&fail("ThrottlingException"));
        return Ok(error_response(&throttling()));
    };
    if draw(settings.faults.malformed) {
        count(&fail("MalformedBody"));
        let cut = accepted.body.len() / 2;
        return Ok(json_response(200, accepted.body.slice(..cut)));
    }
    count(&|c: &mut ModelCounters| {
        c.ok += 1;
        c.inputs += accepted.inputs;
        c.tokens += accepted.tokens;
        c.max_requests_per_minute = c.max_requests_per_minute.max(rpm);
        c.max_tokens_per_minute = c.max_tokens_per_minute.max(tpm);
        c.max_requests_per_second = c.max_requests_per_second.max(rps);
        if let Some(t) = &accepted.input_type {
            *c.input_types.entry(t.clone()).or_default() += 1;
        }
    });
    Ok(json_response(200, accepted.body))
}

/// Counts what arrives, refused or not: a client that respects its quota never exceeds it here.
fn record_arrival(state: &State, base: &str) {
    let now = Instant::now();
    let model_minute = state
        .windows
        .lock()
        .expect("windows")
        .entry(base.to_string())
        .or_default()
        .received
        .get_or_insert_with(|| Arrivals::new(Duration::from_secs(60)))
        .arrive(now);
    let (minute, second) = {
        let mut a = state.arrivals.lock().expect("arrivals");
        (a.0.arrive(now), a.1.arrive(now))
    };
    let mut s = state.stats.lock().expect("stats");
    s.max_received_per_minute = s.max_received_per_minute.max(minute);
    s.max_received_per_second = s.max_received_per_second.max(second);
    let c = s.models.entry(base.to_string()).or_default();
    c.max_received_per_minute = c.max_received_per_minute.max(model_minute);
}

/// One independent draw at rate `p` (no draw at all when `p` is zero).
pub(crate) fn draw(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

/// An injected fault.
enum Fault {
    /// The connection is dropped without an answer.
    Reset,
    /// An error answer.
    Refuse(ApiError),
}

/// The faults drawn before the body is read, independently, in this order.
fn draw_fault(f: &Faults) -> Option<Fault> {
    if draw(f.reset) {
        return Some(Fault::Reset);
    }
    if draw(f.throttle) {
        return Some(Fault::Refuse(throttling()));
    }
    if draw(f.server_error) {
        return Some(Fault::Refuse(if fastrand::bool() {
            api(
                "InternalServerException",
                500,
                "The server encountered an internal error while processing the request.",
            )
        } else {
            api(
                "ServiceUnavailableException",
                503,
                "Bedrock is unable to process your request.",
            )
        }));
    }
    if draw(f.model_timeout) {
        return Some(Fault::Refuse(api(
            "ModelTimeoutException",
            408,
            "Model has timed out in processing the request. Try your request again.",
        )));
    }
    if draw(f.not_ready) {
        return Some(Fault::Refuse(api("ModelNotReadyException", 429, "Model is not ready to serve inference requests. The AWS SDK will automatically retry the operation.")));
    }
    None
}

fn throttling() -> ApiError {
    api(
        "ThrottlingException",
        429,
        "Too many requests, please wait before trying again.",
    )
}

/// Validates the body and builds the answer, or takes the answer of its shape when `replay` is
/// on. A one-text call is a few microseconds of CPU and stays on the runtime; a bigger one (96
/// texts × 1,024 floats of JSON, base64 images) takes milliseconds and goes to a blocking
/// thread, so the runtime keeps answering other calls on time meanwhile.
async fn build_answer(
    state: &State,
    settings: &Settings,
    model_id: &str,
    called: Called,
    body: Bytes,
) -> Result<Result<Answer, ApiError>, std::io::Error> {
    let replay = settings.replay.then(|| shape(model_id, &body)).flatten();
    let replayed = replay
        .as_ref()
        .and_then(|k| state.replayed.lock().expect("replayed").get(k).cloned());
    let accepted = if let Some(a) = replayed {
        Ok(a)
    } else if body.len() <= INLINE_REQUEST_BYTES {
        wire::invoke(called, &body, settings.poison.as_deref()).map(Answer::from)
    } else {
        let poison = settings.poison.clone();
        tokio::task::spawn_blocking(move || wire::invoke(called, &body, poison.as_deref()))
            .await
            .map_err(std::io::Error::other)?
            .map(Answer::from)
    };
    if let (Some(k), Ok(a)) = (replay, &accepted) {
        // (Bounded: a family whose inputs sit elsewhere in the body has a shape per request.)
        let mut replayed = state.replayed.lock().expect("replayed");
        if replayed.len() < REPLAY_SHAPES {
            replayed.entry(k).or_insert_with(|| a.clone());
        }
    }
    Ok(accepted)
}

/// Takes an accepted request into its model's sliding one-minute window: the window's requests
/// and tokens and the requests of the last second, or `None` when the quota refuses it.
fn take_quota(
    state: &State,
    settings: &Settings,
    base: &str,
    tokens: u64,
) -> Option<(u64, u64, u64)> {
    let quota = settings
        .model_quotas
        .get(base)
        .copied()
        .unwrap_or(settings.quota);
    let mut windows = state.windows.lock().expect("windows");
    let w = windows.entry(base.to_string()).or_default();
    let now = Instant::now();
    w.prune(now);
    let over_requests = quota
        .requests_per_minute
        .is_some_and(|q| w.events.len() as u64 >= q);
    let over_tokens = quota
        .tokens_per_minute
        .is_some_and(|q| w.tokens + tokens > q);
    if over_requests || over_tokens {
        return None;
    }
    w.events.push_back((now, tokens));
    w.tokens += tokens;
    while w
        .second
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        w.second.pop_front();
    }
    w.second.push_back(now);
    Some((w.events.len() as u64, w.tokens, w.second.len() as u64))
}
