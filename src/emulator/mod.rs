//! A Bedrock Runtime emulator: `POST /model/{modelId}/invoke` for every embedding model in its
//! [`catalog`], speaking Bedrock's wire protocol (restJson, `x-amzn-ErrorType` errors), so tests,
//! benchmarks and newcomers can run Bedrock pipelines with no AWS account.
//!
//! It shares no facts with the client: its facts (ids, profiles, routes, dimensions, formats, the
//! body limit) are its own tables in [`catalog`], and the request validation and response bodies
//! in [`wire`] are written from the reference on their own. Configurable latency, quotas
//! (requests and tokens per minute per model → 429 `ThrottlingException`) and fault injection;
//! counts what it received (`GET /_emulator/stats`).
//!
//! Control endpoints: `GET /_emulator/stats`, `POST /_emulator/reset` (zero the counters),
//! `PUT /_emulator/config` (JSON, any subset of [`Settings`]).

pub mod async_invoke;
pub mod catalog;
mod json;
pub mod s3;
mod timer;
pub mod vectors;
pub mod wire;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use wire::ApiError;

/// Simulated service latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Latency {
    #[default]
    None,
    Fixed {
        ms: f64,
    },
    Uniform {
        min_ms: f64,
        max_ms: f64,
    },
    Normal {
        mean_ms: f64,
        sd_ms: f64,
    },
}

impl Latency {
    /// Parses `50`, `20..80` (uniform) or `normal:50,10` (milliseconds).
    pub fn parse(s: &str) -> Result<Self> {
        let num = |x: &str| -> Result<f64> {
            let v: f64 = x
                .trim()
                .trim_end_matches("ms")
                .parse()
                .with_context(|| format!("`{x}` is not a number of milliseconds"))?;
            if !(v >= 0.0 && v.is_finite()) {
                bail!("latency must be zero or positive");
            }
            Ok(v)
        };
        if let Some(rest) = s.strip_prefix("normal:") {
            let (m, sd) = rest
                .split_once(',')
                .context("normal latency is `normal:MEAN,SD`")?;
            return Ok(Latency::Normal {
                mean_ms: num(m)?,
                sd_ms: num(sd)?,
            });
        }
        if let Some((a, b)) = s.split_once("..") {
            let (min_ms, max_ms) = (num(a)?, num(b)?);
            if min_ms > max_ms {
                bail!("uniform latency `{s}`: the minimum is above the maximum");
            }
            return Ok(Latency::Uniform { min_ms, max_ms });
        }
        let ms = num(s)?;
        Ok(if ms == 0.0 {
            Latency::None
        } else {
            Latency::Fixed { ms }
        })
    }

    fn sample(&self) -> Duration {
        let ms = match *self {
            Latency::None => 0.0,
            Latency::Fixed { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => min_ms + (max_ms - min_ms) * fastrand::f64(),
            Latency::Normal { mean_ms, sd_ms } => {
                // Box-Muller.
                let (u1, u2) = (fastrand::f64().max(1e-12), fastrand::f64());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean_ms + sd_ms * z).max(0.0)
            }
        };
        Duration::from_secs_f64(ms / 1000.0)
    }
}

/// Fault injection rates (0..1), drawn independently per request in this order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// 429 ThrottlingException (besides quota throttling).
    pub throttle: f64,
    /// 500 InternalServerException / 503 ServiceUnavailableException.
    pub server_error: f64,
    /// 408 ModelTimeoutException.
    pub model_timeout: f64,
    /// 429 ModelNotReadyException.
    pub not_ready: f64,
    /// 200 with a truncated JSON body.
    pub malformed: f64,
    /// The connection is dropped without an answer.
    pub reset: f64,
}

/// Per-model quotas (per minute, sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// Everything configurable, changeable at runtime through `PUT /_emulator/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub latency: Latency,
    pub faults: Faults,
    /// Quota applied to every model without its own entry.
    pub quota: Quota,
    /// Quotas per model id (base id; profiles share their model's quota).
    pub model_quotas: BTreeMap<String, Quota>,
    /// Only this access key id is accepted (default: any well-formed SigV4 request).
    pub access_key_id: Option<String>,
    /// Models the caller has no access to (403 AccessDeniedException).
    pub denied_models: Vec<String>,
    /// Text inputs containing this string are refused with ValidationException.
    pub poison: Option<String>,
    /// How long an async-invoke job runs before its results are written (ms).
    pub async_job_ms: u64,
    /// Share (0..1) of async-invoke jobs that end `Failed` (drawn per job).
    pub async_failure_rate: f64,
    /// The S3-compatible server async jobs read inputs from and write results to.
    pub s3_endpoint: Option<String>,
    /// Answer each request with the answer of the first request of its shape (model, number of
    /// inputs, parameters): inputs are read and vectors and JSON made only once per shape, and
    /// repeats are neither validated nor embedded again. A nearly free service, for measuring
    /// the client's own speed; never for checking what the client sends.
    pub replay: bool,
}

/// What the emulator received, per model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelCounters {
    pub requests: u64,
    pub ok: u64,
    pub inputs: u64,
    pub tokens: u64,
    /// Answers by error code (`ThrottlingException`, ...), plus `ConnectionReset` and
    /// `MalformedBody`.
    pub errors: BTreeMap<String, u64>,
    /// Most successful requests seen in any trailing 60-second window.
    pub max_requests_per_minute: u64,
    /// Most tokens seen in any trailing 60-second window.
    pub max_tokens_per_minute: u64,
    /// Most successful requests seen in any trailing 1-second window.
    pub max_requests_per_second: u64,
    /// Most requests received (answered or refused) in any trailing 60-second window.
    pub max_received_per_minute: u64,
    /// Requests by the region in their SigV4 credential scope.
    pub regions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// Most model requests received, over all models, in any trailing 60-second window.
    pub max_received_per_minute: u64,
    /// The same over any trailing 1-second window.
    pub max_received_per_second: u64,
    pub unauthenticated: u64,
    /// Answers held for a simulated latency, and by how much (in all, µs; negative: early) they
    /// missed their due time: the emulator's own timing error.
    pub timed_answers: u64,
    pub timed_error_micros: i64,
    pub models: BTreeMap<String, ModelCounters>,
    /// StartAsyncInvoke / GetAsyncInvoke / ListAsyncInvokes.
    pub async_invoke: async_invoke::AsyncCounters,
}

/// Arrival times within a trailing window.
struct Arrivals {
    span: Duration,
    times: VecDeque<Instant>,
}

impl Arrivals {
    fn new(span: Duration) -> Self {
        Self {
            span,
            times: VecDeque::new(),
        }
    }

    /// Records an arrival now; returns how many arrived within the trailing window.
    fn arrive(&mut self, now: Instant) -> u64 {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() as u64
    }
}

#[derive(Default)]
struct Window {
    /// (time, tokens) of accepted requests within the last minute.
    events: VecDeque<(Instant, u64)>,
    tokens: u64,
    /// Accepted requests within the last second.
    second: VecDeque<Instant>,
    /// Every request received within the last minute.
    received: Option<Arrivals>,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some(&(t, k)) = self.events.front() {
            if now.duration_since(t) >= Duration::from_secs(60) {
                self.events.pop_front();
                self.tokens -= k;
            } else {
                break;
            }
        }
    }
}

struct State {
    settings: RwLock<Settings>,
    stats: Mutex<Stats>,
    windows: Mutex<HashMap<String, Window>>,
    /// Requests to any model in the last minute and the last second.
    arrivals: Mutex<(Arrivals, Arrivals)>,
    jobs: Arc<async_invoke::Jobs>,
    /// Answers by request shape, when `replay` is on.
    replayed: Mutex<HashMap<String, Answer>>,
    /// How much earlier than due to ask the timer for an answer.
    lead: timer::Lead,
}

/// An accepted request's answer.
#[derive(Clone)]
struct Answer {
    body: Bytes,
    inputs: u64,
    tokens: u64,
}

impl From<wire::Accepted> for Answer {
    fn from(a: wire::Accepted) -> Self {
        Self {
            body: Bytes::from(a.body),
            inputs: a.inputs,
            tokens: a.tokens,
        }
    }
}

/// Most request shapes `replay` keeps answers for.
const REPLAY_SHAPES: usize = 256;

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

impl State {
    fn stats(&self) -> Stats {
        let mut s = self.stats.lock().expect("stats").clone();
        s.async_invoke = self.jobs.counters.lock().expect("counters").clone();
        s
    }

    fn reset(&self) {
        *self.stats.lock().expect("stats") = Stats::default();
        self.windows.lock().expect("windows").clear();
        *self.arrivals.lock().expect("arrivals") = all_arrivals().into_inner().expect("new");
        self.jobs.reset_counters();
    }
}

fn all_arrivals() -> Mutex<(Arrivals, Arrivals)> {
    Mutex::new((
        Arrivals::new(Duration::from_secs(60)),
        Arrivals::new(Duration::from_secs(1)),
    ))
}

/// A running emulator.
pub struct Emulator {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub async fn start(addr: SocketAddr, settings: Settings) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            settings: RwLock::new(settings),
            stats: Mutex::new(Stats::default()),
            windows: Mutex::new(HashMap::new()),
            arrivals: all_arrivals(),
            jobs: Arc::default(),
            replayed: Mutex::default(),
            lead: timer::Lead::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Zeroes the counters and the quota windows.
    pub fn reset(&self) {
        self.state.reset();
    }

    pub fn set(&self, settings: Settings) {
        *self.state.settings.write().expect("settings") = settings;
        self.state.replayed.lock().expect("replayed").clear();
    }

    /// Serves until the task ends (it does not, short of a panic).
    pub async fn wait(mut self) -> Result<()> {
        (&mut self.task).await?;
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", request_id())
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn request_id() -> String {
    format!(
        "{:08x}-emul-{:012x}",
        fastrand::u32(..),
        fastrand::u64(..) >> 16
    )
}

fn error_response(e: &ApiError) -> Resp {
    let body = serde_json::to_vec(&serde_json::json!({ "message": e.message })).expect("json");
    let mut r = json_response(e.status, body);
    r.headers_mut().insert(
        "x-amzn-errortype",
        format!(
            "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            e.code
        )
        .parse()
        .expect("header"),
    );
    r
}

fn api(code: &'static str, status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        status,
        message: message.into(),
    }
}

/// A well-formed SigV4 Authorization header for service `bedrock`; returns the access key id
/// and the region of the credential scope.
fn check_sigv4<B>(req: &Request<B>) -> Result<(String, String), ApiError> {
    let missing = || {
        api(
            "MissingAuthenticationTokenException",
            403,
            "Missing Authentication Token",
        )
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(missing)?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        api(
            "IncompleteSignatureException",
            403,
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm",
        )
    })?;
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let incomplete = |what: &str| {
        api(
            "IncompleteSignatureException",
            403,
            format!("Authorization header requires '{what}' parameter"),
        )
    };
    let cred = cred.ok_or_else(|| incomplete("Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("SignedHeaders"))?;
    let sig = sig.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = cred.split('/').collect();
    if scope.len() != 5 || scope[3] != "bedrock" || scope[4] != "aws4_request" {
        return Err(api(
            "InvalidSignatureException",
            403,
            "Credential should be scoped to a valid region and the service 'bedrock'",
        ));
    }
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(api(
            "InvalidSignatureException",
            403,
            "The request signature we calculated does not match the signature you provided",
        ));
    }
    if !signed.split(';').any(|h| h == "host") || req.headers().get("x-amz-date").is_none() {
        return Err(api(
            "InvalidSignatureException",
            403,
            "The host and x-amz-date headers must be signed",
        ));
    }
    Ok((scope[0].to_string(), scope[2].to_string()))
}

/// Request bodies up to this size are answered on the runtime (see [`answer`]).
const INLINE_REQUEST_BYTES: usize = 1024;

/// Answers a request the configured latency after it arrived: the work of answering
/// (validation, vectors, JSON) is part of the latency, not added to it, and so is the timer's
/// own delay in resuming the task (learned, and asked for that much earlier: see
/// [`timer::Lead`]), so answers leave on time on average.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let arrived = Instant::now();
    let mut latency = Duration::ZERO;
    let result = answer(state.clone(), req, &mut latency).await;
    if !latency.is_zero() {
        let due = arrived + latency;
        let target = state.lead.target(arrived, due);
        timer::sleep_until(target).await;
        let woke = Instant::now();
        state.lead.observe(target, woke);
        let error = if woke >= due {
            (woke - due).as_micros() as i64
        } else {
            -((due - woke).as_micros() as i64)
        };
        let mut s = state.stats.lock().expect("stats");
        s.timed_answers += 1;
        s.timed_error_micros += error;
    }
    result
}

/// Checks the SigV4 header (and the allowed key, if one is set): the request's region, or why
/// it is refused (counted as unauthenticated).
fn authenticate<B>(
    state: &State,
    req: &Request<B>,
    settings: &Settings,
) -> Result<String, ApiError> {
    let checked = check_sigv4(req).and_then(|(key, region)| {
        if settings.access_key_id.as_deref().is_some_and(|k| k != key) {
            Err(api(
                "UnrecognizedClientException",
                403,
                "The security token included in the request is invalid.",
            ))
        } else {
            Ok(region)
        }
    });
    if checked.is_err() {
        state.stats.lock().expect("stats").unauthenticated += 1;
    }
    checked
}

/// StartAsyncInvoke, GetAsyncInvoke, ListAsyncInvokes (signed like every operation).
async fn async_route(
    state: &State,
    req: Request<Incoming>,
    rest: String,
) -> Result<Resp, std::io::Error> {
    let settings = state.settings.read().expect("settings").clone();
    let region = match authenticate(state, &req, &settings) {
        Ok(region) => region,
        Err(refusal) => return Ok(error_response(&refusal)),
    };
    let method = req.method().clone();
    let query = req.uri().query().map(String::from);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    Ok(
        match async_invoke::handle(
            &state.jobs,
            &settings,
            &method,
            &rest,
            query.as_deref(),
            &body,
            &region,
        )
        .await
        {
            Ok(v) => json_response(200, serde_json::to_vec(&v).expect("json")),
            Err(e) => error_response(&e),
        },
    )
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
    latency: &mut Duration,
) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_string();
    // Control plane (unsigned, loopback only).
    if let Some(ctl) = path.strip_prefix("/_emulator/") {
        return Ok(control(&state, ctl, req).await);
    }
    state.stats.lock().expect("stats").requests += 1;
    if let Some(rest) = path
        .strip_prefix("/async-invoke")
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        return async_route(&state, req, rest.trim_start_matches('/').to_string()).await;
    }
    let Some(model_id) = path
        .strip_prefix("/model/")
        .and_then(|p| p.strip_suffix("/invoke"))
        .map(percent_decode)
    else {
        let e = api(
            "UnknownOperationException",
            404,
            format!("no such operation: {} {path}", req.method()),
        );
        return Ok(error_response(&e));
    };
    if req.method() != hyper::Method::POST {
        return Ok(error_response(&api(
            "UnknownOperationException",
            404,
            "InvokeModel is POST",
        )));
    }
    let settings = state.settings.read().expect("settings").clone();
    let region = match authenticate(&state, &req, &settings) {
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
    // What arrives, refused or not: a client that respects its quota never exceeds it here.
    {
        let now = Instant::now();
        let model_minute = state
            .windows
            .lock()
            .expect("windows")
            .entry(base.clone())
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
        let c = s.models.entry(base.clone()).or_default();
        c.max_received_per_minute = c.max_received_per_minute.max(model_minute);
    }
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
    // Faults, independent draws.
    let f = settings.faults;
    let draw = |p: f64| p > 0.0 && fastrand::f64() < p;
    if draw(f.reset) {
        count(&fail("ConnectionReset"));
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        ));
    }
    if draw(f.throttle) {
        count(&fail("ThrottlingException"));
        return Ok(error_response(&api(
            "ThrottlingException",
            429,
            "Too many requests, please wait before trying again.",
        )));
    }
    if draw(f.server_error) {
        return Ok(if fastrand::bool() {
            count(&fail("InternalServerException"));
            error_response(&api(
                "InternalServerException",
                500,
                "The server encountered an internal error while processing the request.",
            ))
        } else {
            count(&fail("ServiceUnavailableException"));
            error_response(&api(
                "ServiceUnavailableException",
                503,
                "Bedrock is unable to process your request.",
            ))
        });
    }
    if draw(f.model_timeout) {
        count(&fail("ModelTimeoutException"));
        return Ok(error_response(&api(
            "ModelTimeoutException",
            408,
            "Model has timed out in processing the request. Try your request again.",
        )));
    }
    if draw(f.not_ready) {
        count(&fail("ModelNotReadyException"));
        return Ok(error_response(&api("ModelNotReadyException", 429, "Model is not ready to serve inference requests. The AWS SDK will automatically retry the operation.")));
    }
    // Validate and build the answer. A one-text call is a few microseconds of CPU and stays on
    // the runtime; a bigger one (96 texts × 1,024 floats of JSON, base64 images) takes
    // milliseconds and goes to a blocking thread, so the runtime keeps answering other calls
    // on time meanwhile.
    let replay = settings.replay.then(|| shape(&model_id, &body)).flatten();
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
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            count(&fail(e.code));
            return Ok(error_response(&e));
        }
    };
    if let Some(k) = replay {
        // (Bounded: a family whose inputs sit elsewhere in the body has a shape per request.)
        let mut replayed = state.replayed.lock().expect("replayed");
        if replayed.len() < REPLAY_SHAPES {
            replayed.entry(k).or_insert_with(|| accepted.clone());
        }
    }
    // Quotas: a sliding one-minute window per model.
    let quota = settings
        .model_quotas
        .get(&base)
        .copied()
        .unwrap_or(settings.quota);
    let (rpm, tpm, rps) = {
        let mut windows = state.windows.lock().expect("windows");
        let w = windows.entry(base.clone()).or_default();
        let now = Instant::now();
        w.prune(now);
        let over_requests = quota
            .requests_per_minute
            .is_some_and(|q| w.events.len() as u64 >= q);
        let over_tokens = quota
            .tokens_per_minute
            .is_some_and(|q| w.tokens + accepted.tokens > q);
        if over_requests || over_tokens {
            drop(windows);
            count(&fail("ThrottlingException"));
            return Ok(error_response(&api(
                "ThrottlingException",
                429,
                "Too many requests, please wait before trying again.",
            )));
        }
        w.events.push_back((now, accepted.tokens));
        w.tokens += accepted.tokens;
        while w
            .second
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            w.second.pop_front();
        }
        w.second.push_back(now);
        (w.events.len() as u64, w.tokens, w.second.len() as u64)
    };
    if draw(f.malformed) {
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
    });
    Ok(json_response(200, accepted.body))
}

async fn control(state: &State, ctl: &str, req: Request<Incoming>) -> Resp {
    match (req.method().as_str(), ctl) {
        ("GET", "stats") => {
            let s = state.stats();
            json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
        }
        ("POST", "reset") => {
            state.reset();
            // (same as Emulator::reset)
            json_response(200, b"{}".to_vec())
        }
        ("GET", "config") => {
            let s = state.settings.read().expect("settings").clone();
            json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
        }
        ("PUT", "config") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json_response(400, format!("{{\"message\":\"{e}\"}}").into_bytes())
                }
            };
            // Merge: keys present in the body replace the current ones.
            let current = serde_json::to_value(state.settings.read().expect("settings").clone())
                .expect("json");
            let patch: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return json_response(
                        400,
                        serde_json::to_vec(&serde_json::json!({"message": e.to_string()}))
                            .expect("json"),
                    )
                }
            };
            let mut merged = current;
            if let (Some(m), Some(p)) = (merged.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    m.insert(k.clone(), v.clone());
                }
            }
            match serde_json::from_value::<Settings>(merged) {
                Ok(s) => {
                    *state.settings.write().expect("settings") = s.clone();
                    state.replayed.lock().expect("replayed").clear();
                    json_response(200, serde_json::to_vec_pretty(&s).expect("json"))
                }
                Err(e) => json_response(
                    400,
                    serde_json::to_vec(&serde_json::json!({"message": e.to_string()}))
                        .expect("json"),
                ),
            }
        }
        _ => json_response(404, b"{\"message\":\"unknown control endpoint\"}".to_vec()),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_forms() {
        assert_eq!(Latency::parse("0").unwrap(), Latency::None);
        assert_eq!(Latency::parse("50").unwrap(), Latency::Fixed { ms: 50.0 });
        assert_eq!(
            Latency::parse("20..80").unwrap(),
            Latency::Uniform {
                min_ms: 20.0,
                max_ms: 80.0
            }
        );
        assert_eq!(
            Latency::parse("normal:50,10").unwrap(),
            Latency::Normal {
                mean_ms: 50.0,
                sd_ms: 10.0
            }
        );
        assert!(Latency::parse("80..20").is_err());
        assert!(Latency::parse("fast").is_err());
    }

    #[tokio::test]
    async fn replay_answers_each_shape_once() {
        use crate::providers::bedrock::Bedrock;
        let emu = Emulator::start(
            ([127, 0, 0, 1], 0).into(),
            Settings {
                replay: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let bedrock = Bedrock::to_emulator(&emu.endpoint()).await;
        let call = |model: &'static str, body: serde_json::Value| {
            let bedrock = bedrock.clone();
            async move {
                let body = serde_json::to_vec(&body).unwrap();
                bedrock.invoke(model, body, || {}).await
            }
        };
        let cohere = "cohere.embed-english-v3";
        let texts = |t: &[&str]| serde_json::json!({"texts": t, "input_type": "search_document"});
        let emb = |body: Vec<u8>| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["embeddings"].clone()
        };
        let a = emb(call(cohere, texts(&["alpha", "beta"])).await.unwrap());
        let b = emb(call(cohere, texts(&["gamma", "delta"])).await.unwrap());
        assert_eq!(a, b, "same shape: the same answer");
        let c = emb(call(cohere, texts(&["alpha", "beta", "gamma"]))
            .await
            .unwrap());
        assert_eq!(
            (a.as_array().unwrap().len(), c.as_array().unwrap().len()),
            (2, 3),
            "another number of inputs is another shape"
        );
        let query = serde_json::json!({"texts": ["gamma", "delta"], "input_type": "search_query"});
        let q = emb(call(cohere, query).await.unwrap());
        assert_ne!(a, q, "other parameters are another shape");
        // A refused request is not kept: its shape is answered afresh.
        let titan = "amazon.titan-embed-text-v2:0";
        let refused = call(titan, serde_json::json!({"inputText": ""})).await;
        assert!(refused.is_err());
        call(titan, serde_json::json!({"inputText": "x"}))
            .await
            .unwrap();
        assert_eq!(emu.stats().models[titan].ok, 1);

        // Without replay, the same shape gets each input's own vectors.
        emu.set(Settings::default());
        let a2 = emb(call(cohere, texts(&["alpha", "beta"])).await.unwrap());
        let b2 = emb(call(cohere, texts(&["gamma", "delta"])).await.unwrap());
        assert_eq!(a, a2);
        assert_ne!(a2, b2);
        assert_eq!(
            q,
            emb(call(
                cohere,
                serde_json::json!({"texts": ["gamma", "delta"], "input_type": "search_query"})
            )
            .await
            .unwrap())
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("cohere.embed-v4%3A0"), "cohere.embed-v4:0");
        assert_eq!(percent_decode("abc%"), "abc%");
    }
}
